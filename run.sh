#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the main job: the desktop workstation
# opened on the real chest radiograph RG1_UNCR.dcm (pydicom-data).
#   ./run.sh              desktop app (when a display is available)
#   ./run.sh --headless   headless analysis of RG1, printed and written to out/analysis_RG1.json
# Without a display (no DISPLAY / WAYLAND_DISPLAY) the headless analysis runs instead.
set -euo pipefail
cd "$(dirname "$0")"
source packaging/dev_env.sh
medvision_setup

RG1="$("$VENV/bin/python" -c 'from pydicom.data import get_testdata_file; print(get_testdata_file("RG1_UNCR.dcm"))')"
headless=0
if [ "${1:-}" = "--headless" ]; then
    headless=1
    shift
elif [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] && [ -z "${QT_QPA_PLATFORM:-}" ]; then
    log "no display: running the headless analysis (./run.sh on a desktop session opens the app)"
    headless=1
fi
if [ "$headless" = 1 ]; then
    mkdir -p out
    exec "$VENV/bin/medvision" analyze "$RG1" --json out/analysis_RG1.json "$@"
fi
exec "$VENV/bin/medvision" desktop "$RG1" "$@"
