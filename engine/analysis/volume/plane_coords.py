"""Points on a named plane of a volume to voxels and patient mm, and back: one mapping for every front-end.

A plane is shown as :func:`engine.imaging.volume.planes.plane_pixels` lays it out (the
engine's ``reslice``, ``get_visualization`` and the desktop's plane views all draw that
array): axial slice ``z`` has columns along x and rows along y; coronal row ``y`` and
sagittal column ``x`` have z along their rows, highest z first, and x (coronal) or y
(sagittal) along their columns. A plane point is ``(x, y)`` = (column, row) in that
array's pixels (origin top-left, pixel centres at whole numbers, the 2D contract); a
voxel point is ``(x, y, z)`` (column, row, place in the sorted stack). ``shape`` is the
volume's ``(z, y, x)``. Points may be fractional; each must lie on the plane (within half a
pixel of its edge pixels), else ``INVALID_REGION``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import ErrorCode, MedVisionError
from engine.imaging.volume.planes import PLANE_AXES, PLANES


def _invalid(message: str, **details: Any) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_REGION, message, **details)


def _plane(plane: Any) -> tuple[int, int, int, bool]:
    if plane not in PLANE_AXES:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"plane must be one of {', '.join(PLANES)}, not {plane!r}")
    return PLANE_AXES[plane]


def _shape_xyz(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or not all(isinstance(n, int | np.integer) and n > 0 for n in shape):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"shape must be the volume's (z, y, x) sizes, not {shape!r}")
    z, y, x = (int(n) for n in shape)
    return x, y, z


def _points(points: Any, width: int, name: str) -> tuple[np.ndarray, bool]:
    """``points`` as an ``(n, width)`` float array, and whether a single point was given."""
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _invalid(f"{name} must be numbers") from exc
    single = array.ndim == 1
    array = array.reshape(1, -1) if single else array
    if array.ndim != 2 or array.shape[1] != width or array.shape[0] == 0:
        raise _invalid(f"{name} must be {'[x, y]' if width == 2 else '[x, y, z]'} point(s)")
    if not np.isfinite(array).all():
        raise _invalid(f"{name} must be finite numbers")
    return array, single


def _check_inside(values: np.ndarray, size: int, what: str) -> None:
    if values.size and (values.min() < -0.5 or values.max() > size - 0.5):
        raise _invalid(f"{what} {values.min():g}..{values.max():g} is outside 0..{size - 1}")


def plane_index_size(plane: str, shape: Sequence[int]) -> int:
    """How many planes of this kind the volume has (z slices, y rows or x columns)."""
    normal = _plane(plane)[0]
    return _shape_xyz(shape)[normal]


def plane_shape(plane: str, shape: Sequence[int]) -> tuple[int, int]:
    """``(rows, columns)`` of the plane's image."""
    _, column_axis, row_axis, _ = _plane(plane)
    sizes = _shape_xyz(shape)
    return sizes[row_axis], sizes[column_axis]


def plane_to_voxel(plane: str, index: Any, points_xy: Any, shape: Sequence[int]) -> np.ndarray:
    """Voxel ``(x, y, z)`` of plane points ``(x, y)`` (column, row) on plane ``index``.

    ``points_xy`` is one ``[x, y]`` (returns ``(3,)``) or many (returns ``(n, 3)``).
    """
    normal, column_axis, row_axis, reversed_rows = _plane(plane)
    sizes = _shape_xyz(shape)
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < sizes[normal]:
        raise _invalid(f"{plane} index must be a whole number in 0..{sizes[normal] - 1}, not {index!r}")
    points, single = _points(points_xy, 2, "points")
    _check_inside(points[:, 0], sizes[column_axis], f"{plane} column")
    _check_inside(points[:, 1], sizes[row_axis], f"{plane} row")
    out = np.empty((len(points), 3), dtype=np.float64)
    out[:, normal] = int(index)
    out[:, column_axis] = points[:, 0]
    out[:, row_axis] = (sizes[row_axis] - 1 - points[:, 1]) if reversed_rows else points[:, 1]
    return out[0] if single else out


def voxel_to_plane(plane: str, points_xyz: Any, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`plane_to_voxel`: ``(index, (x, y))`` of voxel points on ``plane``.

    ``index`` is the plane (through the nearest voxel centre) each point lies on; for one
    point ``(float index, (2,) array)``, for many ``((n,) array, (n, 2) array)``.
    """
    normal, column_axis, row_axis, reversed_rows = _plane(plane)
    sizes = _shape_xyz(shape)
    points, single = _points(points_xyz, 3, "points_xyz")
    for axis, name in enumerate("xyz"):
        _check_inside(points[:, axis], sizes[axis], f"voxel {name}")
    rows = (sizes[row_axis] - 1 - points[:, row_axis]) if reversed_rows else points[:, row_axis]
    planar = np.stack([points[:, column_axis], rows], axis=1)
    index = np.floor(points[:, normal] + 0.5).astype(np.int64)
    return (index[0], planar[0]) if single else (index, planar)


def plane_to_patient(plane: str, index: Any, points_xy: Any, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """Patient LPS mm of plane points, through the volume's 4x4 ``affine`` (voxel x, y, z -> mm)."""
    voxels = plane_to_voxel(plane, index, points_xy, shape)
    return voxel_to_patient_mm(voxels, affine)


def voxel_to_patient_mm(points_xyz: Any, affine: np.ndarray) -> np.ndarray:
    """Patient LPS mm of voxel points ``(x, y, z)`` (one or many) through ``affine``."""
    matrix = _affine(affine)
    points, single = _points(points_xyz, 3, "points_xyz")
    out = points @ matrix[:3, :3].T + matrix[:3, 3]
    return out[0] if single else out


def patient_to_voxel_mm(points_mm: Any, affine: np.ndarray) -> np.ndarray:
    """Voxel ``(x, y, z)`` (fractional) of patient LPS mm points (one or many) through ``affine``."""
    matrix = _affine(affine)
    points, single = _points(points_mm, 3, "points_mm")
    out = np.linalg.solve(matrix[:3, :3], (points - matrix[:3, 3]).T).T
    return out[0] if single else out


def _affine(affine: Any) -> np.ndarray:
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or math.isclose(np.linalg.det(matrix[:3, :3]), 0.0):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "affine must be a finite, invertible 4x4 matrix")
    return matrix


def plane_section(offset_zyx: Sequence[int], crop: np.ndarray, plane: str, index: int,
                  shape: Sequence[int]) -> np.ndarray | None:
    """Where a cropped 3D mask (first voxel at ``offset_zyx``) meets plane ``index``: a bool image of the
    plane's ``(rows, columns)``, or None when it does not reach that plane. Memory: one slab of the crop."""
    normal = _plane(plane)[0]
    offset_xyz = (int(offset_zyx[2]), int(offset_zyx[1]), int(offset_zyx[0]))
    local = int(index) - offset_xyz[normal]
    size_xyz = crop.shape[::-1]
    if not 0 <= local < size_xyz[normal]:
        return None
    slab = np.take(crop, local, axis=2 - normal)  # the crop's (z, y, x) axis of the plane's normal
    found = np.argwhere(slab)
    if not found.size:
        return None
    voxels = np.empty((len(found), 3), dtype=np.float64)
    kept = [axis for axis in (2, 1, 0) if axis != normal]  # slab axes in (z, y, x) order, as xyz indices
    for column, axis in enumerate(kept):
        voxels[:, axis] = found[:, column] + offset_xyz[axis]
    voxels[:, normal] = int(index)
    _, planar = voxel_to_plane(plane, voxels, shape)
    out = np.zeros(plane_shape(plane, shape), dtype=bool)
    out[planar[:, 1].astype(np.intp), planar[:, 0].astype(np.intp)] = True
    return out
