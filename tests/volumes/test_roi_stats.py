"""ROI statistics on small arrays whose answers are worked out by hand, and distances across slices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.analysis.volume.roi import (
    distance_mm,
    roi_box_stats,
    roi_mask_stats,
    roi_slice_stats,
    roi_sphere_stats,
)
from engine.errors import ErrorCode, MedVisionError

# hu[z, y, x] = 30 z + 6 y + x on a (4, 5, 6) grid: every statistic has a closed form.
HU = (30 * np.arange(4)[:, None, None] + 6 * np.arange(5)[None, :, None] + np.arange(6)[None, None, :]).astype(
    np.float32)
SPACING = (2.0, 0.5, 0.5)   # one voxel = 0.5 mm^3


def test_box_statistics_match_the_hand_computed_values() -> None:
    # x 1..3, y 1..2, z 1..2: 3 * 2 * 2 = 12 voxels.
    stats = roi_box_stats(HU, SPACING, [1, 1, 1, 3, 2, 2])
    assert stats.voxel_count == 12
    assert stats.volume_ml == pytest.approx(12 * 0.5 / 1000)
    assert stats.mean_hu == pytest.approx(30 * 1.5 + 6 * 1.5 + 2)          # 56
    assert stats.min_hu == 30 + 6 + 1 and stats.max_hu == 60 + 12 + 3
    # Population SD of a sum over independent grid axes: var_z + var_y + var_x = 225 + 9 + 2/3.
    assert stats.sd_hu == pytest.approx(math.sqrt(225 + 9 + 2 / 3))
    assert stats.z_range == (1, 2)
    assert stats.to_dict()["volume_ml"] == pytest.approx(0.006)
    # Corners in either order are the same box.
    assert roi_box_stats(HU, SPACING, [3, 2, 2, 1, 1, 1]) == stats


@pytest.mark.parametrize("box", [[0, 0, 0, 6, 1, 1], [-1, 0, 0, 1, 1, 1], [0, 0, 0, 1.5, 1, 1], [0, 0, 0],
                                 "012345", [0, 0, 0, 1, 1, float("nan")]])
def test_a_box_off_the_volume_or_malformed_is_invalid_region(box) -> None:  # noqa: ANN001
    with pytest.raises(MedVisionError) as caught:
        roi_box_stats(HU, SPACING, box)
    assert caught.value.code is ErrorCode.INVALID_REGION


def test_slice_shapes_on_one_slice() -> None:
    rect = roi_slice_stats(HU, SPACING, 2, "rectangle", [1, 1, 3, 2])
    assert rect.voxel_count == 6 and rect.mean_hu == pytest.approx(60 + 6 * 1.5 + 2)
    assert rect.z_range == (2, 2) and rect.kind == "slice_rectangle"
    # The same square as a polygon covers the same 16 pixel centres (boundary included).
    big = np.zeros((1, 8, 8), dtype=np.float32)
    big[0, 1:5, 1:5] = 10.0
    square = roi_slice_stats(big, SPACING, 0, "polygon", [[1, 1], [4, 1], [4, 4], [1, 4]])
    assert square.voxel_count == 16 and square.mean_hu == 10.0 and square.sd_hu == 0.0
    # A circle of radius 2 pixels holds the 13 lattice points with x^2 + y^2 <= 4.
    circle = roi_slice_stats(np.zeros((1, 11, 11), np.float32), SPACING, 0, "ellipse",
                             {"center": [5, 5], "radii": [2, 2]})
    assert circle.voxel_count == 13
    assert circle.volume_ml == pytest.approx(13 * 0.5 / 1000)


def test_sphere_volume_is_four_thirds_pi_r_cubed() -> None:
    spacing = (1.5, 0.7, 0.6)          # anisotropic, like a real CT
    radius = 12.0
    hu = np.zeros((40, 60, 70), dtype=np.float32)
    stats = roi_sphere_stats(hu, spacing, [35, 30, 20], radius)
    expected_ml = 4 / 3 * math.pi * radius**3 / 1000
    assert stats.volume_ml == pytest.approx(expected_ml, rel=0.02)
    # Centred on the first slice: the upper half, plus the equator slice's outer half-thickness
    # (that slice counts 1.5 mm, the half sphere only 0.75 mm of it).
    half = roi_sphere_stats(hu, spacing, [35, 30, 0], radius)
    assert half.volume_ml == pytest.approx(expected_ml / 2 + math.pi * radius**2 * 0.75 / 1000, rel=0.02)
    assert half.z_range == (0, 8)
    with pytest.raises(MedVisionError) as caught:
        roi_sphere_stats(hu, spacing, [35, 30, 40], radius)
    assert caught.value.code is ErrorCode.INVALID_REGION


def test_mask_statistics_and_an_empty_mask() -> None:
    mask = HU >= 100     # z 3 with 6y + x >= 10, and all of nothing else below: 30*3 = 90
    stats = roi_mask_stats(HU, SPACING, mask)
    values = HU[mask].astype(np.float64)
    assert stats.voxel_count == int(mask.sum()) and stats.mean_hu == pytest.approx(values.mean())
    assert stats.z_range == (3, 3)
    empty = roi_mask_stats(HU, SPACING, np.zeros(HU.shape, bool))
    assert empty.voxel_count == 0 and empty.mean_hu is None and empty.to_dict()["z_range"] is None
    with pytest.raises(MedVisionError) as caught:
        roi_mask_stats(HU, SPACING, np.zeros((4, 5, 5), bool))
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("hu, spacing", [(np.zeros((4, 4), np.float32), (1, 1, 1)),
                                         (HU, (1, 0, 1)), (HU, (1, 1)), (HU, ("a", 1, 1))])
def test_bad_volumes_are_invalid_argument(hu, spacing) -> None:  # noqa: ANN001
    with pytest.raises(MedVisionError) as caught:
        roi_box_stats(hu, spacing, [0, 0, 0, 1, 1, 1])
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


def test_distance_across_slices_uses_the_affine() -> None:
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = [-100.0, 20.0, 7.0]
    assert distance_mm([0, 0, 0], [6, 8, 0], affine) == pytest.approx(5.0)
    assert distance_mm([0, 0, 0], [0, 0, 3], affine) == pytest.approx(6.0)
    assert distance_mm([0, 0, 0], [6, 8, 3], affine) == pytest.approx(math.hypot(5.0, 6.0))
    # A rotated (oblique) stack measures the same.
    angle = math.radians(30)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    oblique = affine.copy()
    oblique[:3, :3] = rotation @ affine[:3, :3]
    assert distance_mm([0, 0, 0], [6, 8, 3], oblique) == pytest.approx(math.hypot(5.0, 6.0))
    with pytest.raises(MedVisionError):
        distance_mm([0, 0], [1, 1, 1], affine)


def test_non_finite_values_in_the_roi_are_invalid_argument() -> None:
    hu = HU.copy()
    hu[1, 1, 1] = np.nan
    assert roi_box_stats(hu, SPACING, [2, 2, 2, 3, 3, 3]).voxel_count == 8     # the NaN is elsewhere
    with pytest.raises(MedVisionError) as caught:
        roi_box_stats(hu, SPACING, [0, 0, 0, 2, 2, 2])
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


def test_a_box_roi_becomes_a_volume_annotation_anchored_on_its_series() -> None:
    from engine.analysis.volume.annotation import check_anchor, volume_annotation

    stats = roi_box_stats(HU, SPACING, [1, 1, 1, 3, 2, 2])
    payload = volume_annotation(stats, shape="box", geometry={"box": [1, 1, 1, 3, 2, 2]}, method="roi",
                                volume_shape=HU.shape, series_uid="1.2.3")
    coordinates = payload["coordinates"]
    assert payload["type"] == "volume_roi" and coordinates["z_range"] == [1, 2]
    assert coordinates["stats"]["volume_ml"] == pytest.approx(0.006)
    check_anchor({"series_instance_uid": "1.2.3", "rows": 5, "columns": 6}, coordinates)
    for row in ({"series_instance_uid": "9.9", "rows": 5, "columns": 6},
                {"series_instance_uid": "1.2.3", "rows": 6, "columns": 5}):
        with pytest.raises(MedVisionError) as caught:
            check_anchor(row, coordinates)
        assert caught.value.code is ErrorCode.INVALID_REGION
    with pytest.raises(MedVisionError) as caught:
        volume_annotation(stats, shape="box", geometry={"box": [1, 1, 1, 6, 2, 2]}, method="roi",
                          volume_shape=HU.shape, series_uid="1.2.3")
    assert caught.value.code is ErrorCode.INVALID_REGION


@pytest.mark.parametrize("shape, geometry, code", [
    ("polygon", [[0, 0], [1, 1], [2, 2]], ErrorCode.INVALID_REGION),           # collinear
    ("polygon", [[0, 0], [50, 1], [2, 3]], ErrorCode.INVALID_REGION),          # off the slice
    ("ellipse", {"center": [2, 2], "radii": [0, 1]}, ErrorCode.INVALID_REGION),
    ("rectangle", [0, 0, 9, 1], ErrorCode.INVALID_REGION),
    ("hexagon", [], ErrorCode.INVALID_ARGUMENT),
])
def test_bad_slice_shapes_are_coded_errors(shape, geometry, code) -> None:  # noqa: ANN001
    with pytest.raises(MedVisionError) as caught:
        roi_slice_stats(HU, SPACING, 1, shape, geometry)
    assert caught.value.code is code
