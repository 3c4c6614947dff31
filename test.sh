#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the whole test-suite.
# Extra arguments go to pytest (e.g. ./test.sh tests/store -x).
set -euo pipefail
cd "$(dirname "$0")"
source packaging/dev_env.sh
medvision_setup

export QT_QPA_PLATFORM=offscreen MEDVISION_KEYRING=0 PYTHONDONTWRITEBYTECODE=1
"$VENV/bin/python" -m pytest "$@"
