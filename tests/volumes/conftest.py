"""Series written once per session from the shared example CT (a full one, and slices 30..69 for bad input)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.volumes.ctseries import sub_volume, write_ct_series

#: The slices of example_ct the bad-input series are written from (40 slices: quick to write and read).
BAD_INPUT_SLICES = (30, 70)


@pytest.fixture(scope="session")
def ct_series(tmp_path_factory: pytest.TempPathFactory, shared_ct_dir: Path) -> Path:
    """example_ct.nii.gz written as a 112-slice CT series (names and InstanceNumbers shuffled)."""
    folder = tmp_path_factory.mktemp("ct-series")
    write_ct_series(folder)
    return folder


@pytest.fixture(scope="session")
def small_ct():  # noqa: ANN201 - (data [i, j, k], RAS affine)
    """Slices 30..69 of the example CT, for the bad-input series."""
    return sub_volume(*BAD_INPUT_SLICES)
