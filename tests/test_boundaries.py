"""Architecture rules: Qt only in desktop/, no torch in the runtime, code stays clean."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_import_linter_contracts_hold() -> None:
    run = subprocess.run([str(BIN / "lint-imports")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 3 kept, 0 broken" in run.stdout


RUNTIME_WITHOUT_TORCH = textwrap.dedent(
    """
    import sys
    for name in ("torch", "torchvision", "torchxrayvision", "PySide6"):
        sys.modules[name] = None  # any import of these now raises ImportError
    import pkgutil, importlib, engine, dicom_node
    for package in (engine, dicom_node):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
    from engine.api import Engine
    with Engine(home=sys.argv[1], model_pack=sys.argv[2]) as e:
        s = e.create_study_session()["session_id"]
        r = e.add_image_to_session(s, sys.argv[3])
        assert r["auto_analysis"]["classification"]["status"] == "ok"
    print("runtime ok")
    """
)


def test_the_runtime_runs_a_whole_analysis_without_torch_or_qt(home: Path, model_pack: Path, rg1_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", RUNTIME_WITHOUT_TORCH, str(home), str(model_pack), str(rg1_path)],
                         capture_output=True, text=True, timeout=300, env=os.environ | {"MEDVISION_KEYRING": "0"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "runtime ok"


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(BIN))
    run = subprocess.run([ruff, "check", "."], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout


def test_no_large_files_are_tracked() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    big = [f for f in files.split("\0") if f and (REPO / f).is_file() and (REPO / f).stat().st_size > 2_000_000]
    assert big == [], f"large files in git (models and data stay out): {big}"
