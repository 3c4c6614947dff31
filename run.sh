#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the main job: a headless analysis of
# the real chest radiograph RG1_UNCR.dcm (pydicom-data), printed and written as JSON.
set -euo pipefail
cd "$(dirname "$0")"
source packaging/dev_env.sh
medvision_setup

RG1="$("$VENV/bin/python" -c 'from pydicom.data import get_testdata_file; print(get_testdata_file("RG1_UNCR.dcm"))')"
mkdir -p out
"$VENV/bin/medvision" analyze "$RG1" --json out/analysis_RG1.json "$@"
