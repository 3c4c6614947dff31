"""Fixtures for the reference library: real pydicom-data images, a reports CSV, libraries."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from engine.imaging import decode_image
from engine.rag import ReferenceLibrary
from tests.rag.embedders import EMBEDDER_ID, thumbnail_embedder

# A sentence that must never appear in plaintext on disk.
REPORT_MARKER = "Dulcinea-7Zq marker: small left pleural effusion"
LABELS = ("Cardiomegaly", "Effusion", "Fracture")

# image file -> (findings, impression, full report, diagnoses, {label: cell}, Age)
MAIN_ROWS: list[tuple[str, str, str, str, str, dict[str, str], str]] = [
    ("RG1_UNCR.dcm", f"Enlarged cardiac silhouette. {REPORT_MARKER}.", "Cardiomegaly with small effusion.",
     "", "Cardiomegaly; Pleural effusion", {"Cardiomegaly": "1", "Effusion": "1", "Fracture": "0"}, "71"),
    ("RG1_J2KR.dcm", "Cardiomegaly. No effusion.", "Cardiomegaly.", "", "Cardiomegaly",
     {"Cardiomegaly": "1.0", "Effusion": "0", "Fracture": ""}, "71"),
    ("RG1_J2KI.dcm", "", "", "Possible cardiomegaly on a lordotic projection. No effusion.", "",
     {"Cardiomegaly": "-1", "Effusion": "0.0", "Fracture": "0"}, "71"),
    # Same SOP Instance UID as RG1_J2KI (lossy twin, uncompressed): a duplicate.
    ("RG1_UNCI.dcm", "", "", "Duplicate of the lossy twin.", "", {"Cardiomegaly": "0"}, "71"),
    ("RG3_UNCR.dcm", "Transverse fracture of the distal tibial shaft.", "Tibial fracture.", "",
     "Tibial fracture", {"Fracture": "1"}, "34"),
    ("RG3_J2KR.dcm", "Fracture of the distal tibia.", "", "", "Tibial fracture", {"Fracture": "1"}, "34"),
    ("RG3_J2KI.dcm", "Healed fracture, no acute fracture.", "", "", "", {"Fracture": "0"}, "34"),
    ("US1_UNCR.dcm", "Normal liver echotexture.", "", "", "", {}, ""),
    ("CT_small.dcm", "", "No acute abnormality.", "", "", {"Fracture": "0"}, ""),
    ("mr2.png", "", "", "MR head, normal.", "", {}, ""),
    ("mr2_copy.png", "", "", "Same bytes as mr2.png.", "", {}, ""),
    ("missing.dcm", "", "", "The file is not there.", "", {}, ""),
    ("notes.txt", "", "", "Not an image.", "", {}, ""),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "", "", "Truncated.", "", {}, ""),
    ("flat.png", "", "", "A blank image has no embedding.", "", {}, ""),
]
MAIN_ADDED = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG3_UNCR.dcm", "RG3_J2KR.dcm",
              "RG3_J2KI.dcm", "US1_UNCR.dcm", "CT_small.dcm", "mr2.png")
MAIN_DUPLICATES = ("RG1_UNCI.dcm", "mr2_copy.png")
MAIN_FAILED = {
    "images/missing.dcm": "FILE_NOT_FOUND",
    "images/notes.txt": "UNSUPPORTED_FORMAT",
    "images/emri_small_jpeg_2k_lossless_too_short.dcm": "IMAGE_DECODE_ERROR",
    "images/flat.png": "INFERENCE_ERROR",
}
# Small, fast images for the tests that build many times.
QUICK_FILES = ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "693_J2KR.dcm", "JPEG-LL.dcm",
               "SC_rgb.dcm", "emri_small.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm")


def sample_file(name: str) -> Path:
    """A file of pydicom's test data or of pydicom-data."""
    return Path(get_testdata_file(name))


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    """Write rows (union of their keys as columns, in first-seen order) as a UTF-8 CSV."""
    columns: list[str] = []
    for row in rows:
        columns += [name for name in row if name not in columns]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({name: row.get(name, "") for name in columns})
    return path


def embed_file(path: Path) -> np.ndarray:
    """The test embedder's vector for an image file (what a search query would be)."""
    return thumbnail_embedder(decode_image(path))


@dataclass(frozen=True)
class Dataset:
    """A folder with ``images/`` (real files plus a few bad ones) and ``cases.csv``."""

    root: Path
    csv: Path

    def image(self, name: str) -> Path:
        return self.root / "images" / name


def _write_dataset(root: Path) -> Dataset:
    images = root / "images"
    images.mkdir(parents=True)
    for name, *_ in MAIN_ROWS:
        if name.endswith(".dcm") and name != "missing.dcm":
            shutil.copy(sample_file(name), images / name)
    mr2 = decode_image(sample_file("MR2_UNCR.dcm")).display()
    Image.fromarray(mr2).resize((256, 256)).save(images / "mr2.png")
    shutil.copy(images / "mr2.png", images / "mr2_copy.png")
    Image.fromarray(np.full((64, 64), 128, dtype=np.uint8)).save(images / "flat.png")
    (images / "notes.txt").write_text("reference images for the library tests\n")
    rows = []
    for name, findings, impression, report, diagnoses, labels, age in MAIN_ROWS:
        row = {"image_path": f"images/{name}", "findings": findings, "impression": impression,
               "report": report, "diagnoses": diagnoses, "Age": age}
        row.update({label: labels.get(label, "") for label in LABELS})
        rows.append(row)
    return Dataset(root, write_csv(root / "cases.csv", rows))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The main reference dataset (built once per session, never modified)."""
    return _write_dataset(tmp_path_factory.mktemp("rag-dataset"))


@pytest.fixture(scope="session")
def quick_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV of small real images (absolute-free: copied next to it), one label column."""
    root = tmp_path_factory.mktemp("rag-quick")
    rows = []
    for position, name in enumerate(QUICK_FILES):
        shutil.copy(sample_file(name), root / name)
        rows.append({"image_path": name, "report": f"Reference case {position}.",
                     "Finding": "1" if position % 2 else "0"})
    return write_csv(root / "quick.csv", rows)


@pytest.fixture
def key() -> bytes:
    """A fresh store key."""
    return os.urandom(32)


LibraryFactory = Callable[..., ReferenceLibrary]


@pytest.fixture
def open_library(home: Path, key: bytes) -> Iterator[LibraryFactory]:
    """Open libraries (test embedder by default) that are all closed at teardown."""
    opened: list[ReferenceLibrary] = []

    def factory(**kwargs: object) -> ReferenceLibrary:
        kwargs.setdefault("embedder", thumbnail_embedder)
        kwargs.setdefault("embedder_id", EMBEDDER_ID)
        library = ReferenceLibrary(kwargs.pop("home", home), kwargs.pop("key", key), **kwargs)
        opened.append(library)
        return library

    yield factory
    for library in opened:
        library.close()


@dataclass(frozen=True)
class BuiltLibrary:
    """The main dataset built once into its own home (read-only for the tests)."""

    library: ReferenceLibrary
    result: dict
    home: Path
    key: bytes


@pytest.fixture(scope="module")
def built(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltLibrary]:
    """A library built from the main dataset, shared by a module's read-only tests."""
    home = tmp_path_factory.mktemp("rag-home")
    key = os.urandom(32)
    library = ReferenceLibrary(home, key, embedder=thumbnail_embedder, embedder_id=EMBEDDER_ID)
    result = library.build(data_path=dataset.csv)
    yield BuiltLibrary(library, result, home, key)
    library.close()
