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


@pytest.fixture(scope="session")
def shared_ct_dir() -> Path:
    """../shared/data/ct (the repository's sibling): the real example CT and its reference masks.
    Missing data fails, it never skips."""
    path = REPO.parent / "shared" / "data" / "ct"
    if not (path / "example_ct.nii.gz").is_file():
        pytest.fail(f"no shared CT data at {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def engine(home: Path, model_pack: Path):
    """An Engine over a fresh data directory and the dev pack."""
    from engine.api import Engine

    with Engine(home=home, model_pack=model_pack) as instance:
        yield instance


def _family_pack(factory: pytest.TempPathFactory, name: str, builder) -> Path:  # noqa: ANN001
    """A dev pack of one model family, built once per session into the session's temp dir."""
    from models.pack import build_pack, is_fresh

    out = factory.getbasetemp() / f"pack-{name}"
    if not is_fresh(out, dev=True, components=[builder]):
        build_pack(out, dev=True, components=[builder])
    return out


@pytest.fixture(scope="session")
def sam_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev pack holding only the MobileSAM encoder and decoder (needs torch)."""
    from models import sam

    return _family_pack(tmp_path_factory, "sam", sam.build)


@pytest.fixture(scope="session")
def llm_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev pack holding only the language model (the real Gemma 3 270M GGUF)."""
    from models import llm

    return _family_pack(tmp_path_factory, "llm", llm.build)


@pytest.fixture(scope="session")
def embed_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev pack holding only the RAD-DINO embedding models (needs torch)."""
    from models import embedding

    return _family_pack(tmp_path_factory, "embed", embedding.build)


@pytest.fixture(scope="session")
def organ_seg_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev pack holding only the PSPNet organ-segmentation models (needs torch)."""
    from models import segmentation

    return _family_pack(tmp_path_factory, "organ-seg", segmentation.build)


