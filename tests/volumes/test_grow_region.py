"""Seeded 3D region growing: it stops at the HU window and at the voxel bound, and results stack for undo."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.analysis.volume.annotation import (
    grown_region_annotation,
    mask_from_geometry,
    validate_volume_roi,
)
from engine.analysis.volume.grow import GrowStack, grow_region
from engine.errors import ErrorCode, MedVisionError

SPACING = (2.0, 1.0, 1.0)


def _two_blocks() -> np.ndarray:
    """A 100 HU cube (10^3) and a 5^3 one touching it only at a corner, in 0 HU."""
    hu = np.zeros((30, 30, 30), dtype=np.float32)
    hu[5:15, 5:15, 5:15] = 100.0
    hu[15:20, 15:20, 15:20] = 100.0
    hu[10, 10, 10] = 160.0      # inside the cube but outside the window [50, 150]
    return hu


def test_growing_stops_at_the_window_and_follows_the_connectivity() -> None:
    hu = _two_blocks()
    six = grow_region(hu, SPACING, [7, 7, 7], 50, 150, connectivity=6)
    assert six.stats.voxel_count == 1000 - 1 and not six.truncated
    assert six.stats.mean_hu == 100.0 and six.stats.max_hu == 100.0
    assert six.stats.volume_ml == pytest.approx(999 * 2.0 / 1000)
    assert six.to_dict()["box"] == [5, 5, 5, 14, 14, 14]
    # 26-connectivity crosses the shared corner into the second cube.
    corner = grow_region(hu, SPACING, [7, 7, 7], 50, 150, connectivity=26)
    assert corner.stats.voxel_count == 999 + 125
    full = corner.full_mask()
    assert full.shape == hu.shape and full[17, 17, 17] and not full[10, 10, 10]


def test_a_region_bigger_than_the_first_box_is_found_whole() -> None:
    hu = np.full((20, 200, 30), -1000.0, dtype=np.float32)
    hu[8:12, 2:198, 10:14] = 40.0          # a long bar: far past the 16-voxel first box
    result = grow_region(hu, SPACING, [12, 100, 10], 0, 80)
    assert result.stats.voxel_count == 4 * 196 * 4 and not result.truncated


def test_the_voxel_bound_cuts_the_region_to_a_box_around_the_seed() -> None:
    hu = np.zeros((41, 41, 41), dtype=np.float32)
    result = grow_region(hu, SPACING, [20, 20, 20], -10, 10, max_voxels=5000)
    # The largest cube around the seed with at most 5000 voxels: radius 8, 17^3 = 4913.
    assert result.truncated and result.stats.voxel_count == 17**3
    assert result.to_dict()["truncated"] is True


def test_results_are_immutable_and_undo_drops_the_last() -> None:
    hu = _two_blocks()
    first = grow_region(hu, SPACING, [7, 7, 7], 50, 150)
    second = grow_region(hu, SPACING, [16, 16, 16], 50, 150)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.truncated = True  # type: ignore[misc]
    with pytest.raises(ValueError):
        first.mask[0, 0, 0] = False
    stack = GrowStack().push(first).push(second)
    assert stack.union(hu.shape).sum() == 999 + 125
    undone = stack.undo()
    assert undone.results == (first,) and len(stack.results) == 2
    assert (undone.union(hu.shape) == first.full_mask()).all()


def test_bad_seeds_and_windows_are_coded_errors() -> None:
    hu = _two_blocks()
    cases = [(([40, 1, 1], 50, 150, 6), ErrorCode.INVALID_REGION),
             (([1, 1], 50, 150, 6), ErrorCode.INVALID_REGION),
             (([0, 0, 0], 50, 150, 6), ErrorCode.INVALID_ARGUMENT),      # seed at 0 HU: outside the window
             (([7, 7, 7], 150, 50, 6), ErrorCode.INVALID_ARGUMENT),
             (([7, 7, 7], 50, float("inf"), 6), ErrorCode.INVALID_ARGUMENT),
             (([7, 7, 7], 50, 150, 18), ErrorCode.INVALID_ARGUMENT)]
    for (seed, lo, hi, connectivity), code in cases:
        with pytest.raises(MedVisionError) as caught:
            grow_region(hu, SPACING, seed, lo, hi, connectivity=connectivity)
        assert caught.value.code is code, (seed, lo, hi, connectivity)
    with pytest.raises(MedVisionError):
        grow_region(hu, SPACING, [7, 7, 7], 50, 150, max_voxels=0)


def test_a_grown_region_becomes_a_volume_annotation_and_back() -> None:
    hu = _two_blocks()
    result = grow_region(hu, SPACING, [7, 7, 7], 50, 150, connectivity=26)
    payload = grown_region_annotation(result, series_uid="1.2.3", frame_of_reference_uid="1.2.4")
    assert payload["type"] == "volume_roi"
    coordinates = payload["coordinates"]
    assert coordinates["stats"]["volume_ml"] == pytest.approx(result.stats.volume_ml)
    assert coordinates["z_range"] == [5, 19] and coordinates["method"] == result.method
    offset, mask = mask_from_geometry(coordinates["geometry"])
    assert offset == result.offset_zyx and (mask == result.mask).all()
    tampered = {**coordinates, "stats": {**coordinates["stats"], "volume_ml": 99.0}}
    with pytest.raises(MedVisionError) as caught:
        validate_volume_roi(tampered)
    assert caught.value.code is ErrorCode.INVALID_REGION
    past = {**coordinates, "volume_shape": [10, 30, 30]}
    with pytest.raises(MedVisionError):
        validate_volume_roi(past)


def test_clicking_in_a_real_lung_grows_that_lung(shared_ct_dir) -> None:  # noqa: ANN001
    from tests.volumes.ct_reference import dice, load_ct, load_mask

    hu, affine = load_ct(shared_ct_dir / "example_ct.nii.gz")
    right = load_mask(shared_ct_dir / "example_ct_seg", ["lung_lower_lobe_right", "lung_middle_lobe_right"])
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)[::-1])
    candidates = np.argwhere(right & (hu < -700))
    z, y, x = (int(v) for v in candidates[len(candidates) // 2])
    result = grow_region(hu, spacing, [x, y, z], -1024, -400)
    # Air connected to a click in the right lung base is that lung: Dice 0.968, 73.1 mL measured.
    assert dice(result.full_mask(), right) > 0.94
    assert 65 < result.stats.volume_ml < 80
    assert result.stats.max_hu <= -400 and result.stats.z_range == (101, 111)
