"""Entry point of the frozen MedVision app (PyInstaller, one folder, one executable).

    medvision analyze FILE ...        every ``engine.cli`` subcommand (analyze, models, ...)
    medvision mcp [--root DIR] ...    the stdio MCP server (``python -m engine.mcp``)
    medvision dicom-node serve|status the DICOM node (``python -m dicom_node``)
    medvision desktop [FILES]         the desktop app (``python -m desktop``); also the
                                      default with no arguments or when started as
                                      ``medvision-desktop``
    medvision packtransfer keygen|export|import ...   model pack transfer (installers)
    medvision --frozen-info           JSON: version, bundled model pack, Python, paths
    medvision desktop --exit-after-paint   cold start benchmark (prints first_paint_ms=..)
    medvision desktop --check-platform     can Qt open a window here? (exit 0, or 2 and why)

``desktop`` runs ``desktop/__main__.py``, which checks the Qt platform plugin and the display
before anything imports Qt (``desktop.platform_check``): a plugin that cannot load ends with
exit 2 and one ``DISPLAY_UNAVAILABLE`` line naming the missing libraries, not Qt's abort.

When the folder ships a model pack (``<app>/modelpack/manifest.json``, placed there by
the Windows installer or ``freeze.sh --pack``) and ``MEDVISION_MODEL_PACK`` is not set,
that pack is used.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

APP_DIR = Path(sys.executable).resolve().parent if getattr(sys, "frozen", False) else Path(__file__).resolve().parent
SUBCOMMANDS = ("mcp", "dicom-node", "desktop")


def _default_pack() -> None:
    if "MEDVISION_MODEL_PACK" in os.environ:
        return
    for candidate in (APP_DIR / "modelpack", APP_DIR.parent / "modelpack"):
        if (candidate / "manifest.json").is_file():
            os.environ["MEDVISION_MODEL_PACK"] = str(candidate)
            return


def _run_module(module: str, argv: list[str], prog: str) -> int:
    sys.argv = [prog, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _frozen_info() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        medvision_version = version("medvision")
    except PackageNotFoundError:
        medvision_version = None
    info = {
        "frozen": bool(getattr(sys, "frozen", False)),
        "app_dir": str(APP_DIR),
        "python": sys.version.split()[0],
        "medvision": medvision_version,
        "model_pack": os.environ.get("MEDVISION_MODEL_PACK"),
    }
    sys.stdout.write(json.dumps(info, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _default_pack()
    program = Path(sys.argv[0]).stem.lower()
    if program.endswith("-desktop") or not argv:
        argv = ["desktop", *argv] if not argv or argv[0] != "desktop" else argv
    command = argv[0]
    if command == "--frozen-info":
        return _frozen_info()
    if command == "packtransfer":
        from engine.inference.packtransfer import _cli as packtransfer_cli

        return packtransfer_cli(argv[1:])
    if command == "mcp":
        from engine.mcp.server import main as mcp_main

        return mcp_main(argv[1:])
    if command == "dicom-node":
        return _run_module("dicom_node", argv[1:], "medvision dicom-node")
    if command == "desktop":
        return _run_module("desktop", argv[1:], "medvision desktop")
    from engine.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    # PyInstaller: worker processes (multiprocessing) must not re-run the CLI.
    import multiprocessing

    multiprocessing.freeze_support()
    sys.exit(main())
