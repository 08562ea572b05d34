#!/usr/bin/env python3
"""Compact a logkv store: ``python tools/compact.py PATH``.

Does exactly what ``logkv compact PATH`` does, from a checkout, without
installing the package.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from logkv.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["compact", *sys.argv[1:]]))
