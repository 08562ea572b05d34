"""``python -m logkv``: the command line (see ``logkv.cli``)."""
import sys

from .cli import main

sys.exit(main())
