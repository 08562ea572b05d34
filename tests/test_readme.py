"""The README's examples run as written.

Every ```python block of README.md runs in a fresh temporary folder, in its
own Python process (this checkout first on the path), and must exit 0. A
block whose first line is ``# needs a Redis server at URL`` gets one: the
test starts ``logkv.testing.RedisServer`` and puts its address in place of
URL. Every ```bash block whose commands are all ``logkv ...`` runs too (in a
fresh folder, ``logkv`` being this checkout's ``python -m logkv``, under
``set -euo pipefail``); the other bash blocks may only hold ``pip install``
commands, which this test does not run.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NEEDS_REDIS = re.compile(r"^#\s*needs a Redis server at (\S+)\s*$")


@dataclass
class Block:
    lang: str
    line: int  # of the opening fence, 1-based
    code: str

    @property
    def id(self) -> str:
        return f"{self.lang}@line{self.line}"


def blocks(text: str) -> list[Block]:
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if m and m.group(1):
            start = i
            i += 1
            body: list[str] = []
            while i < len(lines) and lines[i].rstrip() != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"README.md line {start + 1}: unclosed code block"
            out.append(Block(m.group(1), start + 1, "\n".join(body) + "\n"))
        i += 1
    return out


ALL = blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in ALL if b.lang == "python"]
SHELL = [b for b in ALL if b.lang in ("bash", "sh", "shell")]


def _commands(block: Block) -> list[str]:
    return [ln.strip() for ln in block.code.splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


def _runnable_shell(block: Block) -> bool:
    return all(cmd.startswith("logkv ") for cmd in _commands(block))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    return env


def _redis_url(block: Block, request: pytest.FixtureRequest) -> tuple[str, str] | None:
    """(the URL the block names, a real server's URL) for a block marked as
    needing a server, else None."""
    first = block.code.splitlines()[0] if block.code.strip() else ""
    m = NEEDS_REDIS.match(first.strip())
    if m is None:
        return None
    server_url = request.getfixturevalue("redis_url")  # a real server, emptied
    return m.group(1), str(server_url)


def test_the_readme_has_its_examples():
    """The extraction finds the blocks (a broken fence would silently skip
    them): the Python ones, and which shell blocks run."""
    assert len(PYTHON) >= 8, [b.id for b in PYTHON]
    assert any(_runnable_shell(b) for b in SHELL)
    for b in ALL:
        assert b.lang in ("python", "bash", "sh", "shell", "console", "text"), b.id
    for b in SHELL:
        if not _runnable_shell(b):
            # only installation commands are not run here
            for cmd in _commands(b):
                assert re.match(r"^pip install\b", cmd), (b.id, cmd)


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs_as_written(block: Block, tmp_path, request):
    code = block.code
    redis = _redis_url(block, request)
    if redis is not None:
        placeholder, url = redis
        code = code.replace(placeholder, url)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (
        f"README.md line {block.line}: the example failed\n--- code\n{code}\n"
        f"--- stderr\n{done.stderr}")


@pytest.mark.parametrize("block", [b for b in SHELL if _runnable_shell(b)],
                         ids=[b.id for b in SHELL if _runnable_shell(b)])
def test_shell_block_runs_as_written(block: Block, tmp_path, request):
    code = block.code
    redis = _redis_url(block, request)
    if redis is not None:
        placeholder, url = redis
        code = code.replace(placeholder, url)
    script = (f'set -euo pipefail\nlogkv() {{ "{sys.executable}" -m logkv "$@"; }}\n' + code)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (
        f"README.md line {block.line}: the commands failed\n--- script\n{code}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    assert "Traceback" not in done.stderr
