#!/usr/bin/env bash
# Install what a requirements file lists and this Python lacks; nothing when all of it is there.
#
#   bash setup.sh requirements.txt         the scripts' needs (speedrun.sh runs this first)
#   bash setup.sh requirements-test.txt    those and the tests' (test.sh runs this first)
#
# torch is the one package handled apart: pip's default build of it on Linux is the CUDA one,
# several GB of wheels. So:
# - an installed torch is never touched: the rest is installed under a constraint that pins it;
# - a missing torch on a Linux machine without an NVIDIA GPU is installed as the CPU build: first
#   torch==$TORCH_CPU+cpu if pip can find it where it already looks (a local wheelhouse or mirror),
#   else the newest CPU build from PyTorch's CPU index;
# - a missing torch elsewhere (an NVIDIA GPU, or macOS) comes from PyPI as usual.
# It uses the `python` on PATH (your virtual environment's, once activated); PYTHON=... overrides.
set -euo pipefail
cd "$(dirname "$0")"
REQUIREMENTS=${1:-requirements.txt}
PYTHON=${PYTHON:-python}
TORCH_CPU=2.13.0                                    # the CPU build CI tests with
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

pip_install() {  # pip's lines, one per package it collects and what it installed; no download chatter
    "$PYTHON" -m pip install --progress-bar off "$@" |
        { grep -Ev "^( |Requirement already satisfied|Processing |Downloading |Using cached )" || true; }
}

# The requirements (those of -r files included) not met by what is installed, one per line.
missing=$("$PYTHON" - "$REQUIREMENTS" <<'EOF'
import importlib.metadata, os, sys
try:
    from packaging.requirements import Requirement
except ImportError:  # pip carries its own copy of packaging
    from pip._vendor.packaging.requirements import Requirement

def lines(path):
    for line in open(path, encoding="utf-8"):
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            yield from lines(os.path.join(os.path.dirname(path), line[2:].strip()))
        elif line:
            yield line

for line in lines(sys.argv[1]):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate():
        continue  # not for this platform (triton off Linux)
    try:
        ok = req.specifier.contains(importlib.metadata.version(req.name), prereleases=True)
    except importlib.metadata.PackageNotFoundError:
        ok = False
    if not ok:
        print(line)
EOF
)
if [ -z "$missing" ]; then
    echo "setup: everything $REQUIREMENTS lists is installed"
    exit 0
fi
echo "setup: $REQUIREMENTS: missing or too old here, to install:"
echo "$missing" | sed 's/^/    /'

if ! "$PYTHON" -c "import importlib.metadata as m; m.version('torch')" 2>/dev/null; then
    if [ "$(uname -s)" = Linux ] && ! nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: torch is missing and there is no NVIDIA GPU: installing PyTorch's CPU build"
        if ! pip_install "torch==$TORCH_CPU+cpu" 2>/dev/null; then
            echo "setup: torch==$TORCH_CPU+cpu is not where pip looks; asking $TORCH_CPU_INDEX"
            pip_install torch --index-url "$TORCH_CPU_INDEX"
        fi
    else
        echo "setup: torch is missing: installing it from PyPI"
        pip_install torch
    fi
elif echo "$missing" | grep -q "^torch"; then
    echo "setup: the installed torch $("$PYTHON" -c "import torch; print(torch.__version__)") is older than" \
         "$REQUIREMENTS wants ($(echo "$missing" | grep "^torch")); this script never replaces an installed" \
         "torch: upgrade it yourself (the CPU build: pip install -U torch --index-url $TORCH_CPU_INDEX)" >&2
    exit 1
fi

# The rest, with the installed torch pinned: nothing below may replace it with another build.
constraint=$(mktemp)
trap 'rm -f "$constraint"' EXIT
"$PYTHON" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > "$constraint"
echo "setup: keeping $(cat "$constraint")"
pip_install -c "$constraint" -r "$REQUIREMENTS"
