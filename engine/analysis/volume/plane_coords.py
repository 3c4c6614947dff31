"""Points on an axial, coronal or sagittal plane <-> voxel coordinates of the volume.

A plane's pixels are laid out as :func:`engine.imaging.volume.planes.plane_pixels` renders
them: axial is slice ``z`` (row ``y``, column ``x``); coronal (row ``y`` = ``index``) and
sagittal (column ``x`` = ``index``) have ``z`` along their rows, highest ``z`` first, and
``x`` (coronal) or ``y`` (sagittal) along their columns. Plane points are ``(px, py)``
(column, row) with pixel centres at whole numbers, like voxel coordinates ``(x, y, z)``:
the mapping is affine, so fractional points (a drawn outline) map exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import ErrorCode, MedVisionError
from engine.imaging.volume.planes import PLANES

#: The voxel axis (z, y, x) a plane's index runs along.
PLANE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


def check_plane(plane: Any, index: Any, shape: Sequence[int]) -> tuple[str, int, int]:
    """``(plane, index, depth)`` checked against the volume's ``shape`` (z, y, x)."""
    if plane not in PLANES:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"plane must be one of {', '.join(PLANES)}, not {plane!r}")
    if len(shape) != 3 or not all(int(n) > 0 for n in shape):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"shape must be the volume's (z, y, x) size, not {shape!r}")
    size = int(shape[PLANE_AXIS[plane]])
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < size:
        raise MedVisionError(ErrorCode.INVALID_REGION, f"{plane} index {index!r} is outside 0..{size - 1}",
                             plane=plane, index=index)
    return plane, int(index), int(shape[0])


def _array(points: Any, width: int, name: str) -> np.ndarray:
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MedVisionError(ErrorCode.INVALID_REGION, f"{name} must be a list of {width}-number points") from exc
    if array.ndim != 2 or array.shape[1] != width or not np.isfinite(array).all():
        raise MedVisionError(ErrorCode.INVALID_REGION, f"{name} must be a list of {width}-number points")
    return array


def plane_to_voxel(plane: str, index: int, points_xy: Any, shape: Sequence[int]) -> np.ndarray:
    """Voxel coordinates ``(x, y, z)`` (N x 3 float) of plane points ``(px, py)`` on ``plane`` at ``index``."""
    plane, index, depth = check_plane(plane, index, shape)
    points = _array(points_xy, 2, "points_xy")
    px, py = points[:, 0], points[:, 1]
    constant = np.full(len(points), float(index))
    if plane == "axial":
        return np.stack([px, py, constant], axis=1)
    z = (depth - 1) - py
    if plane == "coronal":
        return np.stack([px, constant, z], axis=1)
    return np.stack([constant, px, z], axis=1)


def voxel_to_plane(plane: str, points_xyz: Any, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Plane points ``(px, py)`` (N x 2) of voxel coordinates ``(x, y, z)``, and each point's place
    along the plane's normal (its plane index, fractional where the point lies between planes)."""
    if plane not in PLANES:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"plane must be one of {', '.join(PLANES)}, not {plane!r}")
    depth = int(shape[0])
    points = _array(points_xyz, 3, "points_xyz")
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    if plane == "axial":
        return np.stack([x, y], axis=1), z
    row = (depth - 1) - z
    if plane == "coronal":
        return np.stack([x, row], axis=1), y
    return np.stack([y, row], axis=1), x


def plane_pixel_shape(plane: str, shape: Sequence[int]) -> tuple[int, int]:
    """``(rows, columns)`` of a plane's image of a volume of ``shape`` (z, y, x)."""
    depth, rows, columns = (int(n) for n in shape)
    return {"axial": (rows, columns), "coronal": (depth, columns), "sagittal": (depth, rows)}[plane]


def plane_section(offset_zyx: Sequence[int], crop: np.ndarray, plane: str, index: int,
                  shape: Sequence[int]) -> np.ndarray | None:
    """Where a cropped 3D mask (first voxel at ``offset_zyx``) meets plane ``index``: a bool image of the
    plane's ``(rows, columns)``, or None when it does not reach that plane. Memory: one slab of the crop."""
    plane, index, _ = check_plane(plane, index, shape)
    axis = PLANE_AXIS[plane]
    local = index - int(offset_zyx[axis])
    if not 0 <= local < crop.shape[axis]:
        return None
    found = np.argwhere(np.take(crop, local, axis=axis))
    if not found.size:
        return None
    zyx = np.insert(found, axis, local, axis=1) + np.asarray(offset_zyx, dtype=np.intp)
    points, _ = voxel_to_plane(plane, zyx[:, ::-1].astype(np.float64), shape)
    out = np.zeros(plane_pixel_shape(plane, shape), dtype=bool)
    out[np.rint(points[:, 1]).astype(np.intp), np.rint(points[:, 0]).astype(np.intp)] = True
    return out


__all__ = ["PLANE_AXIS", "check_plane", "plane_pixel_shape", "plane_section", "plane_to_voxel", "voxel_to_plane"]
