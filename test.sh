#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the whole test-suite.
# Extra arguments go to pytest (e.g. ./test.sh tests/store -x).
set -euo pipefail
cd "$(dirname "$0")"
source packaging/dev_env.sh
medvision_setup

export QT_QPA_PLATFORM=offscreen MEDVISION_KEYRING=0 PYTHONDONTWRITEBYTECODE=1
# The suite needs ~10 GB of scratch beside the venv (packs, the offline bundle, the frozen app).
echo "test.sh: free disk: $(df -h --output=avail . | tail -1 | tr -d " ") here, $(df -h --output=avail "${TMPDIR:-/tmp}" | tail -1 | tr -d " ") in ${TMPDIR:-/tmp}" >&2
"$VENV/bin/python" -m pytest "$@"
