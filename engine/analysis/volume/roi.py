"""ROI statistics over a CT volume: a shape on one slice, a 3D box, a sphere or a mask.

Arrays follow the volume contract: ``hu`` is ``(z, y, x)`` (slice, row, column) in HU,
``spacing_zyx`` in mm. Shapes are given in voxel coordinates ``(x, y, z)`` (column, row,
slice), like the canvas's pixel coordinates: the voxel ``hu[z, y, x]`` has its centre at
``(x, y, z)``; a voxel belongs to a shape when its centre lies inside or on the boundary.

The statistics are computed in float64: mean, population SD (ddof 0), min and max HU,
the voxel count and the volume in mL (``count * prod(spacing_zyx) / 1000``). Every bad
input is ``INVALID_REGION`` (a shape off the volume or degenerate) or
``INVALID_ARGUMENT`` (arrays of the wrong rank, shape or type).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from engine.analysis.volume.plane_coords import check_plane
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.regions import parse_region, region_mask
from engine.imaging.volume.planes import plane_pixels, plane_spacing

#: Shapes a slice ROI may have.
SLICE_SHAPES = ("polygon", "ellipse", "rectangle")


@dataclass(frozen=True)
class RoiStats:
    """Statistics of the voxels inside one ROI (HU and mL); an empty ROI has None statistics."""

    kind: str                      # "slice_polygon", "slice_ellipse", "slice_rectangle", "box", "sphere", "mask"
    voxel_count: int
    volume_ml: float
    mean_hu: float | None
    sd_hu: float | None
    min_hu: float | None
    max_hu: float | None
    z_range: tuple[int, int] | None   # first and last slice holding a voxel of the ROI
    spacing_zyx: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (plain floats and ints, lists for tuples)."""
        return {"kind": self.kind, "voxel_count": self.voxel_count, "volume_ml": self.volume_ml,
                "mean_hu": self.mean_hu, "sd_hu": self.sd_hu, "min_hu": self.min_hu, "max_hu": self.max_hu,
                "z_range": list(self.z_range) if self.z_range is not None else None,
                "spacing_zyx": list(self.spacing_zyx)}


def _invalid_region(message: str, **details: Any) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_REGION, message, **details)


def _invalid_argument(message: str, **details: Any) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_ARGUMENT, message, **details)


def check_volume(hu: Any, spacing_zyx: Any) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``hu`` as a 3D numeric array and ``spacing_zyx`` as three positive finite floats."""
    if not isinstance(hu, np.ndarray) or hu.ndim != 3 or hu.size == 0 \
            or not (np.issubdtype(hu.dtype, np.number) and not np.issubdtype(hu.dtype, np.complexfloating)):
        raise _invalid_argument("hu must be a non-empty 3D numeric array (z, y, x)")
    try:
        spacing = tuple(float(s) for s in spacing_zyx)
    except (TypeError, ValueError) as exc:
        raise _invalid_argument("spacing_zyx must be three numbers (mm)") from exc
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise _invalid_argument(f"spacing_zyx must be three positive finite numbers (mm), not {spacing_zyx!r}")
    return hu, spacing  # type: ignore[return-value]


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise _invalid_region(f"{name} must be a finite number, not {value!r}")
    return float(value)


def _index(value: Any, name: str, size: int) -> int:
    number = _number(value, name)
    if number != int(number) or not 0 <= number < size:
        raise _invalid_region(f"{name} must be a whole voxel index in 0..{size - 1}, not {value!r}")
    return int(number)


def masked_stats(block: np.ndarray, mask: np.ndarray | None, kind: str, spacing_zyx: tuple[float, float, float],
                 z_offset: int = 0) -> RoiStats:
    """:class:`RoiStats` of ``block`` (a ``(z, y, x)`` view of the volume) where ``mask`` is set (None: all).

    Two passes slice by slice (sums, then squared deviations from the mean, in float64), so
    the temporaries are one slice whatever the ROI's size; ``z_offset`` is the block's first
    slice in the volume.
    """
    def planes() -> Iterator[tuple[int, np.ndarray]]:
        for z in range(block.shape[0]):
            values = block[z] if mask is None else block[z][mask[z]]
            if values.size:
                yield z, values.astype(np.float64, copy=False).ravel()

    count, total, low, high, slices = 0, 0.0, math.inf, -math.inf, []
    for z, values in planes():
        if not np.isfinite(values).all():
            raise _invalid_argument("the ROI holds non-finite HU values")
        count += values.size
        total += float(values.sum())
        low, high = min(low, float(values.min())), max(high, float(values.max()))
        slices.append(z)
    volume_ml = count * float(np.prod(spacing_zyx)) / 1000.0
    if count == 0:
        return RoiStats(kind, 0, 0.0, None, None, None, None, None, spacing_zyx)
    mean = total / count
    squares = sum(float(np.square(values - mean).sum()) for _, values in planes())
    return RoiStats(kind, count, volume_ml, mean, math.sqrt(squares / count), low, high,
                    (z_offset + slices[0], z_offset + slices[-1]), spacing_zyx)


def roi_mask_stats(hu: np.ndarray, spacing_zyx: Sequence[float], mask: np.ndarray,
                   kind: str = "mask") -> RoiStats:
    """Statistics of the voxels where ``mask`` (a bool array of ``hu``'s shape) is true."""
    hu, spacing = check_volume(hu, spacing_zyx)
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != hu.shape:
        raise _invalid_argument(f"mask must be a bool array of the volume's shape {hu.shape}")
    return masked_stats(hu, mask, kind, spacing)


def _box_bounds(hu: np.ndarray, box: Sequence[Any]) -> tuple[slice, slice, slice]:
    if not isinstance(box, Sequence) or isinstance(box, str) or len(box) != 6:
        raise _invalid_region(f"box must be [x1, y1, z1, x2, y2, z2] (voxel indices), not {box!r}")
    depth, rows, columns = hu.shape
    x1, y1, z1, x2, y2, z2 = (_index(v, n, s) for v, n, s in zip(
        box, ("x1", "y1", "z1", "x2", "y2", "z2"), (columns, rows, depth, columns, rows, depth), strict=True))
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    z1, z2 = sorted((z1, z2))
    return slice(z1, z2 + 1), slice(y1, y2 + 1), slice(x1, x2 + 1)


def roi_box_stats(hu: np.ndarray, spacing_zyx: Sequence[float], box: Sequence[Any]) -> RoiStats:
    """Statistics of a 3D box ``[x1, y1, z1, x2, y2, z2]``: voxel indices, both corners included."""
    hu, spacing = check_volume(hu, spacing_zyx)
    zs, ys, xs = _box_bounds(hu, box)
    return masked_stats(hu[zs, ys, xs], None, "box", spacing, zs.start)


def sphere_mask(shape: tuple[int, int, int], spacing_zyx: Sequence[float], centre_xyz: Sequence[Any],
                radius_mm: Any) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """The voxels of a sphere, as ``(bounding box slices, bool mask of that box)``.

    ``centre_xyz`` in voxel coordinates (may be fractional, must lie in the volume),
    ``radius_mm`` in mm; the sphere is clipped to the volume. Memory is that of the
    sphere's bounding box, never the volume's.
    """
    if not isinstance(centre_xyz, Sequence) or isinstance(centre_xyz, str) or len(centre_xyz) != 3:
        raise _invalid_region(f"centre must be [x, y, z] (voxel coordinates), not {centre_xyz!r}")
    centre_zyx = [_number(v, n) for v, n in zip(reversed(centre_xyz), ("z", "y", "x"), strict=True)]
    radius = _number(radius_mm, "radius_mm")
    if radius <= 0:
        raise _invalid_region(f"radius_mm must be positive, not {radius_mm!r}")
    for c, size, name in zip(centre_zyx, shape, ("z", "y", "x"), strict=True):
        if not -0.5 <= c <= size - 0.5:
            raise _invalid_region(f"the sphere's centre {name}={c} is outside the volume (0..{size - 1})")
    bounds = []
    for c, size, step in zip(centre_zyx, shape, spacing_zyx, strict=True):
        reach = radius / float(step)
        bounds.append(slice(max(0, math.ceil(c - reach)), min(size, math.floor(c + reach) + 1)))
    # Slice by slice: the temporaries stay one plane of the box, whatever the radius.
    (cz, cy, cx), (sz, sy, sx) = centre_zyx, (float(v) for v in spacing_zyx)
    in_plane = (((np.arange(bounds[1].start, bounds[1].stop) - cy) * sy) ** 2)[:, None] \
        + (((np.arange(bounds[2].start, bounds[2].stop) - cx) * sx) ** 2)[None, :]
    inside = np.empty(tuple(b.stop - b.start for b in bounds), dtype=bool)
    for index, z in enumerate(range(bounds[0].start, bounds[0].stop)):
        np.less_equal(in_plane, radius * radius - ((z - cz) * sz) ** 2, out=inside[index])
    return tuple(bounds), inside  # type: ignore[return-value]


def roi_sphere_stats(hu: np.ndarray, spacing_zyx: Sequence[float], centre_xyz: Sequence[Any],
                     radius_mm: Any) -> RoiStats:
    """Statistics of the voxels whose centres lie within ``radius_mm`` of ``centre_xyz`` (voxel coordinates)."""
    hu, spacing = check_volume(hu, spacing_zyx)
    bounds, inside = sphere_mask(hu.shape, spacing, centre_xyz, radius_mm)
    return masked_stats(hu[bounds], inside, "sphere", spacing, bounds[0].start)


def _points(points: Any, name: str, minimum: int) -> np.ndarray:
    if not isinstance(points, Sequence) or isinstance(points, str) or len(points) < minimum:
        raise _invalid_region(f"{name} needs at least {minimum} [x, y] points")
    out = []
    for p in points:
        if not isinstance(p, Sequence) or isinstance(p, str) or len(p) != 2:
            raise _invalid_region(f"{name} points must be [x, y] pairs, not {p!r}")
        out.append((_number(p[0], "x"), _number(p[1], "y")))
    return np.asarray(out, dtype=np.float64)


def slice_shape_mask(rows: int, columns: int, shape: str, geometry: Any) -> np.ndarray:
    """The 2D bool mask (rows x columns) of a slice shape, in pixel coordinates (x column, y row).

    - ``polygon``: ``[[x, y], ...]`` (3 or more vertices, implicitly closed; rasterised by
      :func:`engine.imaging.regions.region_mask`: even-odd fill plus the outline);
    - ``ellipse``: ``{"center": [x, y], "radii": [rx, ry]}`` (axis-aligned, radii in pixels);
    - ``rectangle``: ``[x1, y1, x2, y2]`` pixel indices, both corners included.
    """
    if shape == "polygon":
        # The canvas's own rasterisation (even-odd fill plus outline), so a shape drawn on a
        # slice covers the same pixels as the same shape as a 2D annotation.
        return region_mask(parse_region({"type": "polygon", "coordinates": geometry}, rows, columns))
    if shape == "ellipse":
        if not isinstance(geometry, dict) or "center" not in geometry or "radii" not in geometry:
            raise _invalid_region('ellipse needs {"center": [x, y], "radii": [rx, ry]}')
        (cx, cy), = _points([geometry["center"]], "ellipse center", 1)
        (rx, ry), = _points([geometry["radii"]], "ellipse radii", 1)
        if rx <= 0 or ry <= 0:
            raise _invalid_region("ellipse radii must be positive")
        yy, xx = np.ogrid[:rows, :columns]
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    if shape == "rectangle":
        if not isinstance(geometry, Sequence) or isinstance(geometry, str) or len(geometry) != 4:
            raise _invalid_region(f"rectangle must be [x1, y1, x2, y2], not {geometry!r}")
        x1, y1, x2, y2 = (_index(v, n, s) for v, n, s in zip(
            geometry, ("x1", "y1", "x2", "y2"), (columns, rows, columns, rows), strict=True))
        out = np.zeros((rows, columns), dtype=bool)
        out[min(y1, y2):max(y1, y2) + 1, min(x1, x2):max(x1, x2) + 1] = True
        return out
    raise _invalid_argument(f"unknown slice shape {shape!r}; expected one of {', '.join(SLICE_SHAPES)}")


def roi_slice_stats(hu: np.ndarray, spacing_zyx: Sequence[float], z: Any, shape: str, geometry: Any) -> RoiStats:
    """Statistics of a shape drawn on slice ``z`` (see :func:`slice_shape_mask`); volume uses the slice spacing."""
    hu, spacing = check_volume(hu, spacing_zyx)
    zi = _index(z, "z", hu.shape[0])
    mask = slice_shape_mask(hu.shape[1], hu.shape[2], shape, geometry)
    return masked_stats(hu[zi: zi + 1], mask[None], f"slice_{shape}", spacing, zi)


def inward_rectangle(geometry: Any, rows: int, columns: int) -> list[int]:
    """A rectangle ``[x1, y1, x2, y2]`` of any (fractional) corners as the whole pixel indices whose centres
    it holds, clipped to the plane; ``INVALID_REGION`` when it holds none."""
    if not isinstance(geometry, Sequence) or isinstance(geometry, str) or len(geometry) != 4:
        raise _invalid_region(f"rectangle must be [x1, y1, x2, y2], not {geometry!r}")
    x1, y1, x2, y2 = (_number(v, n) for v, n in zip(geometry, ("x1", "y1", "x2", "y2"), strict=True))
    c0, c1 = max(math.ceil(min(x1, x2)), 0), min(math.floor(max(x1, x2)), columns - 1)
    r0, r1 = max(math.ceil(min(y1, y2)), 0), min(math.floor(max(y1, y2)), rows - 1)
    if c1 < c0 or r1 < r0:
        raise _invalid_region(f"the rectangle {geometry!r} holds no pixel centre of the plane")
    return [c0, r0, c1, r1]


def roi_plane_stats(hu: np.ndarray, spacing_zyx: Sequence[float], plane: Any, index: Any, shape: str,
                    geometry: Any) -> RoiStats:
    """Statistics of a shape drawn on an axial, coronal or sagittal plane at ``index``.

    ``geometry`` is in the plane's pixel coordinates (``(px, py)``, centres at whole numbers,
    laid out as :func:`engine.imaging.volume.planes.plane_pixels`), as for
    :func:`slice_shape_mask`; a rectangle may have fractional corners (the pixels whose
    centres it holds). The volume is that of the voxels (a slab one voxel thick along
    the plane's normal); ``z_range`` spans the slices the shape crosses.
    """
    hu, spacing = check_volume(hu, spacing_zyx)
    plane, index, depth = check_plane(plane, index, hu.shape)
    pixels = plane_pixels(hu, plane, index)
    rows, columns = pixels.shape
    if shape == "rectangle":
        geometry = inward_rectangle(geometry, rows, columns)
    mask = slice_shape_mask(rows, columns, shape, geometry)
    stats = masked_stats(pixels[None], mask[None], f"slice_{shape}", spacing)
    if stats.voxel_count == 0:
        return stats
    if plane == "axial":
        return replace(stats, z_range=(index, index))
    hit = np.flatnonzero(mask.any(axis=1))  # plane rows hold z = depth - 1 - row
    return replace(stats, z_range=(depth - 1 - int(hit[-1]), depth - 1 - int(hit[0])))


def plane_area_mm2(voxel_count: int, spacing_zyx: Sequence[float], plane: str) -> float:
    """The area in mm2 of ``voxel_count`` pixels of a plane (its row and column spacing)."""
    rows_mm, columns_mm = plane_spacing(tuple(float(s) for s in spacing_zyx), plane)  # type: ignore[arg-type]
    return voxel_count * rows_mm * columns_mm


def label_stats(hu: np.ndarray, label_map: np.ndarray, count: int) -> list[tuple[float | None, float | None]]:
    """Mean and population SD of HU per label ``0..count-1`` of a label map (None for an absent label).

    Sums are gathered slice by slice in float64 (``np.bincount`` with weights), so the
    temporaries are one slice whatever the volume's size.
    """
    if label_map.shape != hu.shape:
        raise _invalid_argument(f"the label map {label_map.shape} is not the volume's shape {hu.shape}")
    n, total, squares = np.zeros(count), np.zeros(count), np.zeros(count)
    for z in range(hu.shape[0]):
        labels = label_map[z].ravel()
        values = hu[z].astype(np.float64, copy=False).ravel()
        n += np.bincount(labels, minlength=count)[:count]
        total += np.bincount(labels, weights=values, minlength=count)[:count]
    mean = np.divide(total, n, out=np.zeros(count), where=n > 0)
    for z in range(hu.shape[0]):
        labels = label_map[z].ravel()
        deviations = hu[z].astype(np.float64, copy=False).ravel() - mean[labels]
        squares += np.bincount(labels, weights=deviations * deviations, minlength=count)[:count]
    return [(round(float(mean[i]), 2), round(float(np.sqrt(squares[i] / n[i])), 2)) if n[i] else (None, None)
            for i in range(count)]


def voxel_to_patient(point_xyz: Sequence[Any], affine: np.ndarray) -> np.ndarray:
    """Patient (LPS mm) coordinates of a voxel position ``(x, y, z)`` through the 4x4 ``affine``."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise _invalid_argument("affine must be a finite 4x4 matrix")
    if not isinstance(point_xyz, Sequence) or isinstance(point_xyz, str) or len(point_xyz) != 3:
        raise _invalid_region(f"a point must be [x, y, z] (voxel coordinates), not {point_xyz!r}")
    p = np.array([_number(v, n) for v, n in zip(point_xyz, ("x", "y", "z"), strict=True)] + [1.0])
    return (affine @ p)[:3]


def distance_mm(p1: Sequence[Any], p2: Sequence[Any], affine: np.ndarray) -> float:
    """Distance in mm between two voxel positions ``(x, y, z)``, on any slices, through the affine."""
    return float(np.linalg.norm(voxel_to_patient(p1, affine) - voxel_to_patient(p2, affine)))
