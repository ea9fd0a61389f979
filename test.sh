#!/usr/bin/env bash
# The tests, as CI runs them (.ci/run calls this): install what requirements-test.txt lists and
# is missing (setup.sh; never a CUDA torch by accident), then the whole suite with Triton's
# interpreter on, so the kernels' tests run on a CPU. Arguments go to pytest:
#   bash test.sh                                 everything (about 4 minutes on 2 cores, installs included)
#   bash test.sh tests/test_eval_scorers.py -x   one file
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh requirements-test.txt
TRITON_INTERPRET=1 "${PYTHON:-python}" -m pytest -q "${@:-tests}"
