#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the main job: the desktop workstation
# opened on the real chest radiograph RG1_UNCR.dcm (pydicom-data).
#   ./run.sh              desktop app (when a display is available)
#   ./run.sh --headless   headless analysis of RG1, printed and written to out/analysis_RG1.json
# Without a display (no DISPLAY / WAYLAND_DISPLAY), or when the desktop cannot start on the
# one there is (Qt's platform plugin lacks a library, the display does not answer), the
# headless analysis runs instead, after the one DISPLAY_UNAVAILABLE line that says why.
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
elif ! reason="$("$VENV/bin/python" -m desktop --check-platform 2>&1 >/dev/null)"; then
    # The same check `medvision desktop` makes before it creates any window.
    printf '%s\n' "$reason" >&2
    log "the desktop cannot start here (the line above says why): running the headless analysis instead"
    headless=1
fi
if [ "$headless" = 1 ]; then
    mkdir -p out
    exec "$VENV/bin/medvision" analyze "$RG1" --json out/analysis_RG1.json "$@"
fi
exec "$VENV/bin/medvision" desktop "$RG1" "$@"
