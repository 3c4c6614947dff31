"""Plane points to voxels and patient mm, and back: the one layout the planes are drawn with."""

from __future__ import annotations

import numpy as np
import pytest

from engine.analysis.volume.annotation import volume_roi_mask
from engine.analysis.volume.plane_coords import (
    patient_to_voxel_mm,
    plane_section,
    plane_shape,
    plane_to_patient,
    plane_to_voxel,
    voxel_to_patient_mm,
    voxel_to_plane,
)
from engine.analysis.volume.roi import plane_shape_mask, roi_plane_stats, roi_slice_stats
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.volume.planes import PLANES, plane_pixels
from tests.volumes.ctseries import expected_lps, sub_volume

SHAPE = (7, 5, 6)  # z, y, x: every axis a different size, so a swapped axis cannot pass


@pytest.fixture(scope="module")
def ct() -> tuple[np.ndarray, np.ndarray]:
    """Slices 40..55 of the shared example CT as the assembler lays them out: (z, y, x) HU, LPS affine."""
    return expected_lps(sub_volume(40, 56))


@pytest.mark.parametrize("plane", PLANES)
def test_every_pixel_of_a_drawn_plane_maps_to_its_voxel(plane: str) -> None:
    voxels = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)  # each voxel its own value
    for index in range({"axial": SHAPE[0], "coronal": SHAPE[1], "sagittal": SHAPE[2]}[plane]):
        image = plane_pixels(voxels, plane, index)
        assert image.shape == plane_shape(plane, SHAPE)
        rows, columns = np.indices(image.shape)
        points = np.stack([columns.ravel(), rows.ravel()], axis=1).astype(float)
        x, y, z = np.rint(plane_to_voxel(plane, index, points, SHAPE)).astype(int).T
        assert np.array_equal(voxels[z, y, x], image.ravel())
        back_index, back = voxel_to_plane(plane, np.stack([x, y, z], axis=1), SHAPE)
        assert (back_index == index).all() and np.array_equal(back, points)


def test_known_voxel_round_trips_through_each_plane(ct) -> None:
    hu, affine = ct
    voxel = [60.0, 50.0, 8.0]
    expected_mm = affine @ np.array([*voxel, 1.0])
    layouts = {"axial": (8, [60, 50]), "coronal": (50, [60, hu.shape[0] - 1 - 8]),
               "sagittal": (60, [50, hu.shape[0] - 1 - 8])}
    for plane, (index, xy) in layouts.items():
        found_index, found_xy = voxel_to_plane(plane, voxel, hu.shape)
        assert found_index == index and found_xy.tolist() == xy
        assert plane_to_voxel(plane, index, xy, hu.shape).tolist() == voxel
        mm = plane_to_patient(plane, index, xy, hu.shape, affine)
        assert np.allclose(mm, expected_mm[:3])
        assert np.allclose(patient_to_voxel_mm(mm, affine), voxel)
        assert hu[8, 50, 60] == plane_pixels(hu, plane, index)[xy[1], xy[0]]
    # a fractional point keeps its fraction both ways
    assert np.allclose(voxel_to_patient_mm(plane_to_voxel("coronal", 3, [1.25, 2.5], hu.shape), affine),
                       affine[:3, :3] @ [1.25, 3, hu.shape[0] - 1 - 2.5] + affine[:3, 3])


@pytest.mark.parametrize(("plane", "index", "points", "code"), [
    ("oblique", 0, [0, 0], ErrorCode.INVALID_ARGUMENT),
    ("axial", 7, [0, 0], ErrorCode.INVALID_REGION),        # past the last slice
    ("axial", 1.5, [0, 0], ErrorCode.INVALID_REGION),
    ("coronal", 0, [6, 0], ErrorCode.INVALID_REGION),      # column past the edge (x has 6)
    ("sagittal", 0, [0, 7], ErrorCode.INVALID_REGION),     # row past the edge (z has 7)
    ("axial", 0, [[0, float("nan")]], ErrorCode.INVALID_REGION),
    ("axial", 0, [[0, 1, 2]], ErrorCode.INVALID_REGION),
])
def test_bad_plane_points_are_refused(plane, index, points, code) -> None:
    with pytest.raises(MedVisionError) as caught:
        plane_to_voxel(plane, index, points, SHAPE)
    assert caught.value.code == code


def test_axial_plane_roi_equals_the_slice_roi(ct) -> None:
    hu, _ = ct
    polygon = [[30, 20], [90, 25], [80, 80], [35, 70]]
    stats, offset, mask = roi_plane_stats(hu, (3.0, 3.0, 3.0), "axial", 5, "polygon", polygon)
    assert stats.to_dict() | {"kind": ""} == roi_slice_stats(hu, (3.0, 3.0, 3.0), 5, "polygon", polygon).to_dict() \
        | {"kind": ""}
    assert offset[0] == 5 and mask.shape[0] == 1


def test_coronal_rectangle_covers_the_voxels_it_shows(ct) -> None:
    hu, _ = ct
    depth = hu.shape[0]
    # rows 2..9 of the coronal plane at y=40 are z = depth-1-9 .. depth-1-2; columns 10..30 are x
    stats, offset, mask = roi_plane_stats(hu, (3.0, 3.0, 3.0), "coronal", 40, "rectangle", [[10, 2], [30, 9]])
    block = hu[depth - 10: depth - 2, 40, 10:31]
    assert offset == (depth - 10, 40, 10) and mask.shape == (8, 1, 21) and mask.all()
    assert stats.voxel_count == block.size and stats.mean_hu == pytest.approx(float(block.mean()))
    assert stats.volume_ml == pytest.approx(block.size * 27 / 1000)
    assert stats.z_range == (depth - 10, depth - 3)


def test_sagittal_ellipse_by_its_box_is_symmetric() -> None:
    offset, mask = plane_shape_mask((20, 30, 40), "sagittal", 7, "ellipse", [[5, 4], [15, 12]])
    assert offset[2] == 7 and mask.shape[2] == 1
    flat = mask[:, :, 0]
    assert np.array_equal(flat, flat[::-1]) and np.array_equal(flat, flat[:, ::-1])
    with pytest.raises(MedVisionError) as caught:
        plane_shape_mask((20, 30, 40), "sagittal", 7, "rectangle", [[5, 4]])
    assert caught.value.code == ErrorCode.INVALID_REGION


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
