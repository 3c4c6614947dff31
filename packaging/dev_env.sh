# Shared set-up for ./run.sh and ./test.sh (sourced, not executed).
#
# Idempotent: creates .venv, installs the project with its build + dev extras when
# pyproject.toml changed since the last install, installs the Debian tools the tests
# use when running as root, and builds the dev model pack when it is missing or was
# made by an older builder version.

set -euo pipefail

MEDVISION_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$MEDVISION_ROOT/.venv"
export MEDVISION_MODEL_PACK="${MEDVISION_MODEL_PACK:-$MEDVISION_ROOT/.cache/modelpack-dev}"

# Debian packages the test-suite drives for real (added as the issues need them).
APT_PACKAGES=(dicom3tools poppler-utils dcmtk nsis)
# The real PACS the tests query and retrieve from (tests/pacs/orthanc.py starts its own
# instance; the Debian service is not used).
APT_PACKAGES+=(orthanc orthanc-dicomweb orthanc-gdcm)
# The system libraries PySide6's Qt needs to open a window (the xcb platform plugin,
# libQt6XcbQpa, libQt6Gui): a fresh Debian 12 lacks libxcb-cursor0, libxcb-icccm4 and
# libxcb-keysyms1 at least. Kept equal to desktop/qt_runtime.json "install" (a test checks).
QT_RUNTIME_PACKAGES=(
    libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
    libxcb-randr0 libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-util1 libxcb-xfixes0
    libxcb-xkb1 libxcb-render0 libxcb-glx0 libxcb1 libx11-xcb1 libx11-6 libxkbcommon0
    libxkbcommon-x11-0 libgl1 libegl1 libfontconfig1 libfreetype6 libglib2.0-0 libdbus-1-3
)
# xvfb: an X server for the test that starts the desktop on the real xcb plugin.
APT_PACKAGES+=("${QT_RUNTIME_PACKAGES[@]}" xvfb)

log() { printf '[medvision] %s\n' "$*" >&2; }

ensure_apt_packages() {
    [ ${#APT_PACKAGES[@]} -eq 0 ] && return 0
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages (not root, cannot install): ${missing[*]}"
        return 0
    fi
    log "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The orthanc package starts its system service where it can: the tests run their own.
    if [[ " ${missing[*]} " == *" orthanc "* ]]; then
        service orthanc stop >/dev/null 2>&1 || true
    fi
}

find_python() {
    for candidate in python3.11 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "$candidate"
            return 0
        fi
    done
    log "Python 3.11 or newer is required"
    return 1
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$(find_python)" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    local stamp="$VENV/.medvision-installed"
    local want
    want="$(sha256sum "$MEDVISION_ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        log "installing medvision with the build and dev extras (torch comes from local disk)"
        "$VENV/bin/python" -m pip install -q -e "$MEDVISION_ROOT[build,dev]" 2>&1 |
            grep -v "is ignored: it is neither a file nor a directory" >&2 || true
        "$VENV/bin/python" -c 'import engine, models, torch, torchxrayvision, sqlcipher3, onnxruntime'
        echo "$want" >"$stamp"
    fi
}

ensure_model_pack() {
    "$VENV/bin/medvision" models build --dev --out "$MEDVISION_MODEL_PACK" --if-stale
}

medvision_setup() {
    ensure_apt_packages
    ensure_venv
    ensure_model_pack
}
