#!/usr/bin/env bash
# Freeze MedVision (PyInstaller, one folder) into .cache/frozen/dist/medvision.
#
#   packaging/freeze.sh [--python PY] [--out DIR] [--pack DIR]
#
#   --python PY   interpreter of the environment to freeze (default: .venv/bin/python);
#                 PyInstaller is installed into it when missing
#   --out DIR     output root (default: .cache/frozen): DIR/dist/medvision is the app
#   --pack DIR    also copy a model pack into the app folder (DIR/dist/medvision/modelpack)
#
# The result runs headless: `medvision analyze FILE`, `medvision mcp`,
# `medvision dicom-node ...`, `medvision desktop`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
OUT="$ROOT/.cache/frozen"
PACK=""
while [ $# -gt 0 ]; do
    case "$1" in
        --python) PY="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --pack) PACK="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
PYINSTALLER_SPEC="pyinstaller>=6.10"
if ! "$PY" -c 'import PyInstaller' >/dev/null 2>&1; then
    echo "[freeze] installing $PYINSTALLER_SPEC" >&2
    "$PY" -m pip install -q "$PYINSTALLER_SPEC" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
    "$PY" -c 'import PyInstaller'
fi
mkdir -p "$OUT"
export PYINSTALLER_CONFIG_DIR="$OUT/pyinstaller-config"
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$OUT/dist" --workpath "$OUT/build" "$ROOT/packaging/medvision.spec"
APP="$OUT/dist/medvision"
if [ -n "$PACK" ]; then
    rm -rf "$APP/modelpack.new"
    cp -a "$PACK" "$APP/modelpack.new"
    rm -rf "$APP/modelpack"
    mv "$APP/modelpack.new" "$APP/modelpack"
fi
"$APP/medvision" --frozen-info >/dev/null
echo "$APP"
