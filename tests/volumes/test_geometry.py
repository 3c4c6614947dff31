"""The spacing rules on positions alone: 0.01 mm is the line between even and uneven."""

from __future__ import annotations

import numpy as np
import pytest

from engine.imaging.volume.geometry import stack_geometry
from engine.imaging.volume.model import WarningCode, orientation_code

AXIAL = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def positions(along: list[float]) -> np.ndarray:
    return np.array([[10.0, 20.0, z] for z in along])


@pytest.mark.parametrize(("offset", "expected"), [(0.005, []), (0.02, [WarningCode.UNEVEN_SPACING]),
                                                  (1.0, [WarningCode.UNEVEN_SPACING])])
def test_a_gap_more_than_a_hundredth_of_a_mm_off_is_uneven(offset: float, expected: list[str]) -> None:
    along = [0.0, 2.5, 5.0, 7.5 + offset, 10.0 + offset, 12.5 + offset]
    geometry = stack_geometry(AXIAL, positions(along), (0.7, 0.7))
    assert [w.code for w in geometry.warnings] == expected
    assert geometry.spacing_zyx[0] == pytest.approx(2.5)
    if expected:
        assert geometry.warnings[0].slices == (2, 3)


def test_missing_slices_are_counted() -> None:
    geometry = stack_geometry(AXIAL, positions([0, 2, 4, 10, 12, 14]), (1.0, 1.0))
    (missing,) = geometry.warnings
    assert missing.code == WarningCode.MISSING_SLICE and missing.message.startswith("2 slices missing")


def test_the_affine_maps_voxels_to_positions() -> None:
    geometry = stack_geometry(AXIAL, positions([-5.0, -2.0, 1.0]), (0.5, 0.8))
    np.testing.assert_allclose(geometry.affine @ [3, 4, 2, 1], [10 + 3 * 0.8, 20 + 4 * 0.5, 1.0, 1.0])
    assert orientation_code(geometry.affine) == "LPS"
    assert geometry.spacing_zyx == pytest.approx((3.0, 0.5, 0.8))
