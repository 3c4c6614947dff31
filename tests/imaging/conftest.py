"""Shared test data for engine.imaging: pydicom's and pydicom-data's real sample files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import data_store
import pydicom
import pytest

from engine.imaging import DecodedImage, decode_image

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_DATA_FILES = Path(data_store.__file__).parent / "data"


def sample_path(name: str) -> Path:
    """Path of a sample file from either folder (never downloads)."""
    for folder in (PYDICOM_FILES, PYDICOM_DATA_FILES):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(name)


@pytest.fixture(scope="session")
def sample() -> Callable[[str], Path]:
    """Look up a sample file by name: ``sample("CT_small.dcm")``."""
    return sample_path


@pytest.fixture(scope="session")
def rg1_bytes() -> bytes:
    """RG1_UNCR.dcm: CR chest PA, MONOCHROME1, 15-bit, 1955x1841, PixelSpacing [0, 0]."""
    return sample_path("RG1_UNCR.dcm").read_bytes()


@pytest.fixture(scope="session")
def rg1(rg1_bytes: bytes) -> DecodedImage:
    """RG1_UNCR.dcm decoded once for the session."""
    return decode_image(rg1_bytes, filename="RG1_UNCR.dcm")


@pytest.fixture(scope="session")
def rg1_display_small(rg1: DecodedImage):
    """RG1's display image downsampled by 4 (489x461 uint8): a real, small chest film."""
    return rg1.display()[::4, ::4].copy()
