"""installer.nsi compiles with makensis (warnings are errors) against a staged directory:
the real frozen app, the real WinSW wrapper from the bundle and an embedded pack tar."""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.inference.packtransfer import export_pack
from tests.fs import link_or_copy
from tests.packaging.conftest import REPO, record_timing

MAKENSIS = shutil.which("makensis")


@pytest.fixture(scope="module")
def makensis() -> str:
    if MAKENSIS is None:
        pytest.fail("makensis is missing: test.sh installs the Debian package nsis (APT_PACKAGES)")
    return MAKENSIS


def _stage(tmp: Path, frozen: Path, winsw: Path, pack_tar: Path) -> Path:
    stage = tmp / "stage"
    shutil.copytree(frozen, stage / "app", copy_function=link_or_copy, symlinks=True)
    os.rename(stage / "app" / "medvision", stage / "app" / "medvision.exe")
    (stage / "tools").mkdir()
    link_or_copy(winsw, stage / "tools" / "WinSW-x64.exe")
    shutil.copy2(winsw.with_name(winsw.name + ".config"), stage / "tools" / "WinSW-x64.exe.config")
    (stage / "modelpack").mkdir()
    link_or_copy(pack_tar, stage / "modelpack" / "pack.tar")
    shutil.copy2(REPO / "packaging" / "README.md", stage / "README.md")
    return stage


def test_installer_compiles_against_a_staged_directory(makensis: str, frozen: Path, winsw: Path,
                                                       small_pack_tar: Path, tmp_path: Path) -> None:
    stage = _stage(tmp_path, frozen, winsw, small_pack_tar)
    out = tmp_path / "MedVision-Setup.exe"
    import time

    started = time.monotonic()
    proc = subprocess.run([makensis, "-V2", "-WX", f"-DSTAGE={stage}", "-DVERSION=0.1.0", "-DFAST", "-DEMBED_PACK",
                           f"-DOUTFILE={out}", str(REPO / "installer.nsi")], capture_output=True, text=True,
                          timeout=900)
    record_timing("nsis_compile_s", time.monotonic() - started)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.read_bytes()[:2] == b"MZ"
    with open(out, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        # uncompressed (-DFAST): the script's commands are visible in the installer
        for text in ("advfirewall firewall add rule", "icacls", "MedVisionDicom", "packtransfer import"):
            assert data.find(text.encode("utf-16-le")) >= 0, text
        assert data.find(b"WinSW") >= 0 or data.find("WinSW".encode("utf-16-le")) >= 0


def test_installer_without_a_stage_is_a_compile_error(makensis: str, tmp_path: Path) -> None:
    proc = subprocess.run([makensis, "-V2", f"-DOUTFILE={tmp_path / 'x.exe'}", str(REPO / "installer.nsi")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "define the staged directory" in proc.stdout + proc.stderr
    assert not (tmp_path / "x.exe").exists()


@pytest.fixture(scope="module")
def small_pack_tar(model_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real pack tar small enough to embed (the full dev pack ships beside the installer)."""
    import json

    manifest = json.loads((model_pack / "manifest.json").read_text())
    entries = [m for m in manifest["models"] if m["task"] == "classify" and m["precision"] == "int8"]
    root = tmp_path_factory.mktemp("embed-pack")
    for entry in entries:
        (root / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(model_pack / entry["file"], root / entry["file"])
    manifest["models"] = entries
    (root / "manifest.json").write_text(json.dumps(manifest))
    return Path(export_pack(root, root.parent / "embed-pack.tar")["path"])
