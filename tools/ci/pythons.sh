#!/usr/bin/env bash
# Runs the test suite on every other CPython >= 3.10 that pyenv has on this
# machine (the default interpreter ran it already), each in its own virtual
# environment under .cache/, installed from pyproject.toml's `test` extra.
#   tools/ci/pythons.sh [pytest args...]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
current=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
ran=0
for exe in "$root"/versions/*/bin/python3; do
    [ -x "$exe" ] || continue
    ver=$("$exe" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    case "$ver" in 3.1[0-9]) ;; *) continue ;; esac
    [ "$ver" = "$current" ] && continue
    venv="$repo/.cache/venv-$ver"
    [ -x "$venv/bin/python" ] || "$exe" -m venv "$venv"
    echo "== CPython $ver ($exe)"
    "$venv/bin/python" -m pip install -q -e ".[test]"
    "$venv/bin/python" -m pytest -p no:cacheprovider --no-cov "$@"
    ran=$((ran + 1))
done
echo "== the suite ran on $ran other CPython version(s)"
