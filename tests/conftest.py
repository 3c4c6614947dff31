"""Shared fixtures: a fresh data directory per test, the dev model pack, real images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parents[1]
# Before pytest-qt's session-scoped QApplication exists (the autouse fixture below runs later).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test touches the user's data dir, keyring or a key from the environment."""
    monkeypatch.setenv("MEDVISION_KEYRING", "0")
    monkeypatch.delenv("MEDVISION_DB_KEY", raising=False)
    monkeypatch.setenv("MEDVISION_HOME", str(tmp_path / "default-home"))
    monkeypatch.setenv("MEDVISION_EXPORT_DIR", str(tmp_path / "exports"))
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty data directory."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def model_pack() -> Path:
    """The dev model pack that test.sh builds; a missing pack fails, it never skips."""
    path = Path(os.environ.get("MEDVISION_MODEL_PACK", REPO / ".cache" / "modelpack-dev"))
    if not (path / "manifest.json").is_file():
        pytest.fail(f"no model pack at {path}: run ./test.sh (it builds one) or `medvision models build --dev`")
    return path


@pytest.fixture(scope="session")
def rg1_path() -> Path:
    """pydicom-data's CR chest PA: 1955x1841, 15-bit, MONOCHROME1."""
    return Path(get_testdata_file("RG1_UNCR.dcm"))


@pytest.fixture
def engine(home: Path, model_pack: Path):
    """An Engine over a fresh data directory and the dev pack."""
    from engine.api import Engine

    with Engine(home=home, model_pack=model_pack) as instance:
        yield instance


@pytest.fixture(scope="session")
def sam_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev pack holding only the MobileSAM encoder and decoder (built once per session, needs torch)."""
    import json

    from engine.inference.modelpack import ModelPack
    from models import sam
    from models.pack import BUILDER_VERSION, build_pack

    out = tmp_path_factory.getbasetemp() / "pack-sam"
    manifest = out / "manifest.json"
    fresh = (manifest.is_file() and json.loads(manifest.read_text()).get("components") == ["sam"]
             and json.loads(manifest.read_text()).get("builder_version") == BUILDER_VERSION
             and all(row["ok"] for row in ModelPack.load(out).verify()))
    if not fresh:
        build_pack(out, dev=True, components=[sam.build])
    return out
