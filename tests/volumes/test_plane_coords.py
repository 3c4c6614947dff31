"""Plane points to voxels and back, the same layout the planes are drawn with, and where a stored 3D
region crosses a plane (what get_visualization draws)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.analysis.volume.annotation import volume_roi_mask
from engine.analysis.volume.plane_coords import (
    plane_pixel_shape,
    plane_section,
    plane_to_voxel,
    voxel_to_plane,
)
from engine.imaging.volume.planes import PLANES, plane_pixels
from tests.volumes.ctseries import expected_lps, sub_volume

SHAPE = (7, 5, 6)  # z, y, x: every axis a different size, so a swapped axis cannot pass


@pytest.mark.parametrize("plane", PLANES)
def test_every_pixel_of_a_drawn_plane_maps_to_its_voxel(plane: str) -> None:
    voxels = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)  # each voxel its own value
    for index in range({"axial": SHAPE[0], "coronal": SHAPE[1], "sagittal": SHAPE[2]}[plane]):
        image = plane_pixels(voxels, plane, index)
        assert image.shape == plane_pixel_shape(plane, SHAPE)
        rows, columns = np.indices(image.shape)
        points = np.stack([columns.ravel(), rows.ravel()], axis=1).astype(float)
        x, y, z = np.rint(plane_to_voxel(plane, index, points, SHAPE)).astype(int).T
        assert np.array_equal(voxels[z, y, x], image.ravel())
        back, along = voxel_to_plane(plane, np.stack([x, y, z], axis=1), SHAPE)
        assert (along == index).all() and np.array_equal(back, points)


def test_a_known_voxel_round_trips_through_each_plane() -> None:
    hu, affine = expected_lps(sub_volume(40, 56))
    depth = hu.shape[0]
    voxel = [60.0, 50.0, 8.0]
    layouts = {"axial": (8, [60, 50]), "coronal": (50, [60, depth - 1 - 8]), "sagittal": (60, [50, depth - 1 - 8])}
    for plane, (index, xy) in layouts.items():
        (found,), (along,) = voxel_to_plane(plane, [voxel], hu.shape)
        assert along == index and found.tolist() == xy
        assert plane_to_voxel(plane, index, [xy], hu.shape)[0].tolist() == voxel
        assert hu[8, 50, 60] == plane_pixels(hu, plane, index)[xy[1], xy[0]]
        mm = affine @ np.array([*plane_to_voxel(plane, index, [xy], hu.shape)[0], 1.0])
        assert np.allclose(mm, affine @ np.array([*voxel, 1.0]))


def test_a_3d_box_crosses_each_plane_where_it_lies() -> None:
    shape = (20, 30, 40)
    coordinates = {"shape": "box", "geometry": {"box": [5, 6, 7, 9, 12, 10]}, "volume_shape": list(shape),
                   "spacing_zyx": [1.0, 1.0, 1.0]}
    offset, crop = volume_roi_mask(coordinates)
    assert offset == (7, 6, 5) and crop.shape == (4, 7, 5)
    sagittal = plane_section(offset, crop, "sagittal", 8, shape)
    expected = np.zeros((20, 30), dtype=bool)
    expected[20 - 1 - 10: 20 - 1 - 7 + 1, 6:13] = True  # rows: z 10..7 top down; columns: y 6..12
    assert np.array_equal(sagittal, expected)
    assert plane_section(offset, crop, "sagittal", 10, shape) is None
    axial = plane_section(offset, crop, "axial", 7, shape)
    assert axial.sum() == 7 * 5 and axial[6:13, 5:10].all()
    assert plane_section(offset, crop, "coronal", 12, shape).sum() == 4 * 5


def test_a_shape_drawn_on_a_coronal_plane_is_drawn_back_on_it_and_crosses_a_sagittal_one() -> None:
    shape = (20, 30, 40)
    coordinates = {"shape": "slice_rectangle", "volume_shape": list(shape), "spacing_zyx": [1.0, 1.0, 1.0],
                   "geometry": {"plane": "coronal", "index": 11, "rectangle": [3.2, 2, 9, 5.5]}}
    found = volume_roi_mask(coordinates)
    coronal = plane_section(*found, "coronal", 11, shape)
    expected = np.zeros((20, 40), dtype=bool)
    expected[2:6, 4:10] = True  # the pixel centres inside [3.2..9] x [2..5.5]
    assert np.array_equal(coronal, expected)
    sagittal = plane_section(*found, "sagittal", 6, shape)
    assert np.flatnonzero(sagittal.any(axis=0)).tolist() == [11]  # the plane's row y=11, rows z 17..14
    assert np.flatnonzero(sagittal.any(axis=1)).tolist() == [2, 3, 4, 5]
    line = {"shape": "line", "volume_shape": list(shape), "geometry": {"points_xyz": [[0, 0, 0], [1, 1, 1]]}}
    assert volume_roi_mask(line) is None
