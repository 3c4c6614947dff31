"""Shapes drawn on axial, coronal and sagittal planes: the plane <-> voxel mapping, statistics, annotations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.analysis.volume.annotation import (
    line_annotation,
    plane_roi_annotation,
    validate_volume_roi,
)
from engine.analysis.volume.plane_coords import plane_to_voxel, voxel_to_plane
from engine.analysis.volume.roi import plane_area_mm2, roi_plane_stats
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.volume.planes import PLANES, plane_pixels

RNG = np.random.default_rng(3)
HU = RNG.integers(-1000, 1500, size=(7, 9, 11)).astype(np.float32)
SPACING = (5.0, 0.8, 0.6)


@pytest.mark.parametrize("plane", PLANES)
def test_the_mapping_is_the_rendered_layout(plane: str) -> None:
    index = 3
    pixels = plane_pixels(HU, plane, index)
    rows, columns = pixels.shape
    yy, xx = np.mgrid[:rows, :columns]
    xyz = plane_to_voxel(plane, index, np.stack([xx.ravel(), yy.ravel()], axis=1), HU.shape)
    x, y, z = (xyz[:, i].astype(int) for i in range(3))
    assert np.array_equal(HU[z, y, x].reshape(rows, columns), pixels)  # every pixel is the voxel it maps to
    back, along = voxel_to_plane(plane, xyz, HU.shape)
    assert np.array_equal(back, np.stack([xx.ravel(), yy.ravel()], axis=1)) and np.all(along == index)
    # Fractional points map affinely both ways.
    point = [[2.25, 1.5]]
    assert np.allclose(voxel_to_plane(plane, plane_to_voxel(plane, index, point, HU.shape), HU.shape)[0], point)


def test_bad_planes_and_indices_are_coded() -> None:
    with pytest.raises(MedVisionError) as caught:
        plane_to_voxel("oblique", 0, [[0, 0]], HU.shape)
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(MedVisionError) as caught:
        roi_plane_stats(HU, SPACING, "coronal", 9, "ellipse", {"center": [1, 1], "radii": [1, 1]})
    assert caught.value.code == ErrorCode.INVALID_REGION
    with pytest.raises(MedVisionError) as caught:
        roi_plane_stats(HU, SPACING, "sagittal", 2, "rectangle", [1.2, 1.2, 1.8, 1.8])  # no pixel centre inside
    assert caught.value.code == ErrorCode.INVALID_REGION


def test_a_sagittal_ellipse_is_numpy_over_the_same_voxels() -> None:
    index, center, radii = 4, (4.3, 2.6), (3.1, 2.2)
    stats = roi_plane_stats(HU, SPACING, "sagittal", index, "ellipse", {"center": list(center), "radii": list(radii)})
    picked = [(z, y) for z in range(7) for y in range(9)
              if ((y - center[0]) / radii[0]) ** 2 + ((6 - z - center[1]) / radii[1]) ** 2 <= 1]
    values = np.array([HU[z, y, index] for z, y in picked], dtype=np.float64)
    assert stats.voxel_count == len(picked) > 10
    assert stats.mean_hu == pytest.approx(values.mean()) and stats.sd_hu == pytest.approx(values.std())
    assert (stats.min_hu, stats.max_hu) == (values.min(), values.max())
    assert stats.z_range == (min(z for z, _ in picked), max(z for z, _ in picked))
    assert stats.volume_ml == pytest.approx(len(picked) * 5.0 * 0.8 * 0.6 / 1000)
    assert plane_area_mm2(stats.voxel_count, SPACING, "sagittal") == pytest.approx(len(picked) * 5.0 * 0.8)


def test_a_coronal_rectangle_takes_the_pixel_centres_inside_it() -> None:
    stats = roi_plane_stats(HU, SPACING, "coronal", 2, "rectangle", [4.6, 0.5, 2.1, 2.2])  # x 3..4, rows 1..2
    block = HU[[5, 4], 2][:, 3:5].astype(np.float64)  # rows 1..2 are z 5 and 4
    assert stats.voxel_count == 4 and stats.mean_hu == pytest.approx(block.mean())
    assert stats.z_range == (4, 5)


def test_plane_annotations_validate_and_refuse_inconsistent_fields() -> None:
    geometry = {"center": [4.3, 2.6], "radii": [3.1, 2.2]}
    stats = roi_plane_stats(HU, SPACING, "sagittal", 4, "ellipse", geometry)
    points = plane_to_voxel("sagittal", 4, [geometry["center"]], HU.shape).tolist()
    payload = plane_roi_annotation(stats, plane="sagittal", index=4, shape="ellipse", geometry=geometry,
                                   points_xyz=points, area_mm2=1.0, volume_shape=HU.shape, series_uid="1.2.3")
    coordinates = payload["coordinates"]
    assert coordinates["shape"] == "slice_ellipse" and coordinates["geometry"]["plane"] == "sagittal"
    assert coordinates["geometry"]["points_xyz"] == [[4.0, 4.3, pytest.approx(3.4)]]
    assert coordinates["stats"]["area_mm2"] == 1.0
    for bad in ({"index": 11}, {"plane": "oblique"}, {"points_xyz": [[0, 0, 9]]}):
        broken = {**coordinates, "geometry": {**coordinates["geometry"], **bad}}
        with pytest.raises(MedVisionError) as caught:
            validate_volume_roi(broken)
        assert caught.value.code == ErrorCode.INVALID_REGION
    line = line_annotation([[0, 0, 0], [3, 4, 6]], 31.2, volume_shape=HU.shape, spacing_zyx=SPACING,
                           series_uid=None)["coordinates"]
    assert line["z_range"] == [0, 6] and line["stats"]["length_mm"] == 31.2 and "plane" not in line["geometry"]
    with pytest.raises(MedVisionError):
        validate_volume_roi({**line, "stats": {**line["stats"], "length_mm": math.nan}})
