#!/usr/bin/env bash
# nanoGCG (GraySwanAI, PyPI 0.3.0) in its own virtual environment (.nanogcg-venv/ at the
# repository root): tests/test_gcg_reference.py checks deepalign's GCG against it. nanoGCG 0.3.0
# pins transformers<=4.47.1, which the project's own environment does not share.
#
#   bash scripts/setup_nanogcg.sh            # creates .nanogcg-venv/ (about a minute, once)
#   DEEPALIGN_NANOGCG_VENV=/elsewhere bash scripts/setup_nanogcg.sh   # another place (the tests read it too)
#
# Idempotent: a complete environment (marked by .deepalign-ready) is left as it is.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."  # the repository root, also through a symlink
VENV="${DEEPALIGN_NANOGCG_VENV:-.nanogcg-venv}"
PINS="nanogcg==0.3.0 transformers==4.47.1"
MARK="$VENV/.deepalign-ready"
source scripts/venv_lib.sh
if venv_ready "$VENV" "$PINS"; then
    exit 0
fi
venv_fresh "$VENV" setup_nanogcg.sh
# torch==2.13.0 resolves to the CPU build here; nanoGCG's own pin takes transformers 4.47.1
"$VENV/bin/pip" install -q "torch==2.13.0" $PINS
"$VENV/bin/python" -c "import nanogcg, transformers; assert transformers.__version__ == '4.47.1'"
echo "$PINS" > "$MARK"
