"""3D annotations: the stored form of a volume ROI, a grown region or a segmented structure.

An annotation row holds ``type`` and a JSON ``coordinates`` (``engine/store``'s
``annotations`` table); a 3D result becomes type :data:`VOLUME_ROI` with coordinates::

    {"space": "voxel_xyz", "series_uid": ..., "frame_of_reference_uid": ..., "stack_key": ...,
     "volume_shape": [z, y, x], "spacing_zyx": [dz, dy, dx], "z_range": [z0, z1],
     "shape": "box" | "sphere" | "slice_polygon" | "slice_ellipse" | "slice_rectangle" | "mask" | "line",
     "geometry": {...},            # the shape's own parameters, voxel coordinates (x, y, z)
     "method": "...",              # how it was made ("roi", "seeded_region_growing_hu_window", ...)
     "stats": {... "volume_ml": ...}}

Geometry per shape: box ``{"box": [x1, y1, z1, x2, y2, z2]}``; sphere ``{"center": [x, y, z],
"radius_mm": r}``; slice shapes ``{"z": z, "polygon": [[x, y], ...]}`` /
``{"z": z, "center": [x, y], "radii": [rx, ry]}`` / ``{"z": z, "rectangle": [x1, y1, x2, y2]}``;
a shape drawn on a plane (:func:`plane_roi_annotation`) adds ``"plane"`` (axial, coronal,
sagittal), ``"index"`` (its place along the plane's normal) and ``"points_xyz"`` (its vertices,
or an ellipse's centre, in voxel coordinates), its own keys then being the plane's pixel
coordinates (``plane_pixels``' layout); line ``{"points_xyz": [[x, y, z], [x, y, z]]}`` (a
distance, ``stats.length_mm``; with ``plane`` and ``index`` when drawn on one plane);
mask ``{"box": [x1, y1, z1, x2, y2, z2], "rle": ...}`` (the mask cropped to its box,
flattened z, y, x and run-length encoded by :mod:`engine.imaging.masks` as a
``(dz * dy, dx)`` plane). The row's image is the series' slice at ``z_range[0]`` (an
annotation row needs one); the volume fields say which stack the voxel coordinates index.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine.analysis.volume.grow import GrowResult
from engine.analysis.volume.plane_coords import PLANE_AXIS, plane_pixel_shape, plane_to_voxel
from engine.analysis.volume.roi import (
    RoiStats,
    inward_rectangle,
    roi_mask_stats,
    slice_shape_mask,
    sphere_mask,
)
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.masks import decode_rle, encode_rle

VOLUME_ROI = "volume_roi"
VOLUME_SHAPES = ("box", "sphere", "slice_polygon", "slice_ellipse", "slice_rectangle", "mask", "line")
#: The key of a plane shape's own coordinates in its geometry.
SHAPE_KEYS = {"polygon": "polygon", "rectangle": "rectangle"}
#: Most runs a stored 3D mask may have (bounds a hostile payload's decoded size and the row's JSON).
MAX_RLE_RUNS = 2_000_000


def _invalid(message: str) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_REGION, message)


def mask_geometry(mask: np.ndarray, offset_zyx: tuple[int, int, int]) -> dict[str, Any]:
    """The ``mask`` geometry of a cropped 3D mask whose first voxel sits at ``offset_zyx``."""
    dz, dy, dx = mask.shape
    z, y, x = offset_zyx
    return {"box": [x, y, z, x + dx - 1, y + dy - 1, z + dz - 1], "rle": encode_rle(mask.reshape(dz * dy, dx))}


def mask_from_geometry(geometry: dict[str, Any]) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(offset_zyx, cropped mask)`` of a ``mask`` geometry (``INVALID_REGION`` when inconsistent)."""
    x1, y1, z1, x2, y2, z2 = _box(geometry.get("box"))
    rle = geometry.get("rle")
    if not isinstance(rle, dict) or not isinstance(rle.get("counts"), list) or len(rle["counts"]) > MAX_RLE_RUNS:
        raise _invalid(f"a mask needs an RLE of at most {MAX_RLE_RUNS} runs")
    dz, dy, dx = z2 - z1 + 1, y2 - y1 + 1, x2 - x1 + 1
    if rle.get("size") != [dz * dy, dx]:
        raise _invalid("the mask's RLE size does not match its box")
    try:
        plane = decode_rle(rle)
    except MedVisionError as exc:
        raise _invalid(exc.message) from exc
    return (z1, y1, x1), plane.reshape(dz, dy, dx)


def _box(value: Any) -> tuple[int, int, int, int, int, int]:
    if not isinstance(value, list) or len(value) != 6 \
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise _invalid(f"box must be [x1, y1, z1, x2, y2, z2] whole voxel indices, not {value!r}")
    x1, y1, z1, x2, y2, z2 = value
    if x2 < x1 or y2 < y1 or z2 < z1:
        raise _invalid(f"box corners out of order: {value!r}")
    return x1, y1, z1, x2, y2, z2


def volume_annotation(stats: RoiStats, *, shape: str, geometry: dict[str, Any], method: str,
                      volume_shape: tuple[int, int, int], series_uid: str | None,
                      frame_of_reference_uid: str | None = None, stack_key: str | None = None,
                      measurements: dict[str, float] | None = None) -> dict[str, Any]:
    """The ``{"type", "coordinates"}`` of a 3D annotation (checked by :func:`validate_volume_roi`);
    ``measurements`` (an area, a length) join the statistics."""
    z_range = list(stats.z_range) if stats.z_range is not None else None
    coordinates = {"space": "voxel_xyz", "series_uid": series_uid, "frame_of_reference_uid": frame_of_reference_uid,
                   "stack_key": stack_key, "volume_shape": [int(v) for v in volume_shape],
                   "spacing_zyx": list(stats.spacing_zyx), "z_range": z_range, "shape": shape,
                   "geometry": geometry, "method": method, "stats": stats.to_dict() | (measurements or {})}
    return {"type": VOLUME_ROI, "coordinates": validate_volume_roi(coordinates)}


def validate_volume_roi(coordinates: Any) -> dict[str, Any]:
    """A ``volume_roi`` annotation's coordinates, checked for consistency (``INVALID_REGION``).

    Checks the fields' types, that the z range and the shape lie in ``volume_shape`` and
    that the stored volume equals ``voxel_count * prod(spacing) / 1000``; whether the
    series exists and has that shape is for the caller that holds it.
    """
    if not isinstance(coordinates, dict):
        raise _invalid("volume_roi coordinates must be a JSON object")
    shape = coordinates.get("shape")
    if shape not in VOLUME_SHAPES:
        raise _invalid(f"volume_roi shape must be one of {', '.join(VOLUME_SHAPES)}, not {shape!r}")
    if coordinates.get("space") != "voxel_xyz":
        raise _invalid('volume_roi coordinates must be in "voxel_xyz" space')
    for name in ("series_uid", "frame_of_reference_uid", "stack_key"):
        if coordinates.get(name) is not None and not isinstance(coordinates[name], str):
            raise _invalid(f"{name} must be a string or null")
    volume_shape = coordinates.get("volume_shape")
    if not isinstance(volume_shape, list) or len(volume_shape) != 3 \
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in volume_shape):
        raise _invalid("volume_shape must be [z, y, x] positive whole numbers")
    spacing = coordinates.get("spacing_zyx")
    if not isinstance(spacing, list) or len(spacing) != 3 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in spacing):
        raise _invalid("spacing_zyx must be three positive numbers (mm)")
    z_range = coordinates.get("z_range")
    if z_range is not None and (not isinstance(z_range, list) or len(z_range) != 2
                                or not all(isinstance(v, int) and not isinstance(v, bool) for v in z_range)
                                or not 0 <= z_range[0] <= z_range[1] < volume_shape[0]):
        raise _invalid(f"z_range must be [z0, z1] within 0..{volume_shape[0] - 1}, not {z_range!r}")
    geometry = coordinates.get("geometry")
    if not isinstance(geometry, dict):
        raise _invalid("geometry must be a JSON object")
    if shape in ("box", "mask"):
        x1, y1, z1, x2, y2, z2 = _box(geometry.get("box"))
        if x2 >= volume_shape[2] or y2 >= volume_shape[1] or z2 >= volume_shape[0]:
            raise _invalid("the box reaches past the volume")
        if shape == "mask":
            mask_from_geometry(geometry)
    _check_plane_fields(geometry, volume_shape)
    if shape == "line":
        _check_line(geometry, coordinates.get("stats"), volume_shape)
    stats = coordinates.get("stats")
    if not isinstance(stats, dict) or not isinstance(stats.get("voxel_count"), int) \
            or not isinstance(stats.get("volume_ml"), int | float):
        raise _invalid("stats must hold voxel_count and volume_ml")
    expected_ml = stats["voxel_count"] * float(np.prod(spacing)) / 1000.0
    if not math.isclose(float(stats["volume_ml"]), expected_ml, rel_tol=1e-6, abs_tol=1e-9):
        raise _invalid(f"volume_ml {stats['volume_ml']} is not voxel_count x voxel volume ({expected_ml:.6g})")
    if not isinstance(coordinates.get("method"), str) or not coordinates["method"]:
        raise _invalid("method must name how the region was made")
    return coordinates


def _check_plane_fields(geometry: dict[str, Any], volume_shape: list[int]) -> None:
    """A plane shape's ``plane`` and ``index`` (both or neither), and its ``points_xyz`` within the volume."""
    if ("plane" in geometry) != ("index" in geometry):
        raise _invalid("a plane shape needs both plane and index")
    if "plane" in geometry:
        plane, index = geometry["plane"], geometry["index"]
        if plane not in PLANE_AXIS:
            raise _invalid(f"plane must be one of {', '.join(PLANE_AXIS)}, not {plane!r}")
        size = volume_shape[PLANE_AXIS[plane]]
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
            raise _invalid(f"{plane} index must be a whole number in 0..{size - 1}, not {index!r}")
    if "points_xyz" in geometry:
        points = geometry["points_xyz"]
        if not isinstance(points, list) or not points or not all(
                isinstance(p, list) and len(p) == 3 and all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in p)
                for p in points):
            raise _invalid("points_xyz must be [[x, y, z], ...] voxel coordinates")
        z_size, y_size, x_size = volume_shape
        for x, y, z in points:
            if not (-0.5 <= x <= x_size - 0.5 and -0.5 <= y <= y_size - 0.5 and -0.5 <= z <= z_size - 0.5):
                raise _invalid(f"the point {[x, y, z]} lies outside the volume")


def _check_line(geometry: dict[str, Any], stats: Any, volume_shape: list[int]) -> None:
    if len(geometry.get("points_xyz") or []) != 2:
        raise _invalid("a line needs points_xyz: two [x, y, z] points")
    length = stats.get("length_mm") if isinstance(stats, dict) else None
    if not isinstance(length, int | float) or isinstance(length, bool) or not math.isfinite(length) or length < 0:
        raise _invalid("a line's stats must hold length_mm, a finite number >= 0")


def plane_roi_annotation(stats: RoiStats, *, plane: str, index: int, shape: str, geometry: Any,
                         points_xyz: list[list[float]], area_mm2: float, volume_shape: tuple[int, int, int],
                         series_uid: str | None, frame_of_reference_uid: str | None = None,
                         stack_key: str | None = None) -> dict[str, Any]:
    """The 3D annotation of a shape drawn on a plane: its plane, index, plane coordinates (``geometry``
    as :func:`engine.analysis.volume.roi.roi_plane_stats` took it), vertices in voxel coordinates, the
    HU statistics, the area in mm2 and the slab's mL."""
    own = dict(geometry) if shape == "ellipse" else {SHAPE_KEYS[shape]: geometry}
    placed = {"plane": plane, "index": int(index), **own,
              "points_xyz": [[round(float(v), 3) for v in p] for p in points_xyz]}
    if plane == "axial":
        placed["z"] = int(index)  # the axial slice shapes' own form
    return volume_annotation(stats, shape=f"slice_{shape}", geometry=placed, method="roi", volume_shape=volume_shape,
                             series_uid=series_uid, frame_of_reference_uid=frame_of_reference_uid,
                             stack_key=stack_key, measurements={"area_mm2": float(area_mm2)})


def line_annotation(points_xyz: list[list[float]], length_mm: float, *, volume_shape: tuple[int, int, int],
                    spacing_zyx: tuple[float, float, float], series_uid: str | None,
                    frame_of_reference_uid: str | None = None, stack_key: str | None = None,
                    plane: str | None = None, index: int | None = None) -> dict[str, Any]:
    """The 3D annotation of a distance between two voxel positions (on one plane, or across slices)."""
    zs = [min(max(round(float(p[2])), 0), volume_shape[0] - 1) for p in points_xyz]
    stats = RoiStats("line", 0, 0.0, None, None, None, None, (min(zs), max(zs)), spacing_zyx)
    geometry: dict[str, Any] = {"points_xyz": [[round(float(v), 3) for v in p] for p in points_xyz]}
    if plane is not None:
        geometry |= {"plane": plane, "index": index}
    return volume_annotation(stats, shape="line", geometry=geometry, method="distance_mm", volume_shape=volume_shape,
                             series_uid=series_uid, frame_of_reference_uid=frame_of_reference_uid,
                             stack_key=stack_key, measurements={"length_mm": float(length_mm)})


def grown_region_annotation(result: GrowResult, *, series_uid: str | None, frame_of_reference_uid: str | None = None,
                            stack_key: str | None = None) -> dict[str, Any]:
    """The 3D annotation of a click-to-segment result (its mask, window and statistics)."""
    geometry = mask_geometry(result.mask, result.offset_zyx)
    geometry.update({"seed": list(result.seed_xyz), "window_hu": list(result.window_hu),
                     "connectivity": result.connectivity, "truncated": result.truncated})
    return volume_annotation(result.stats, shape="mask", geometry=geometry, method=result.method,
                             volume_shape=result.volume_shape, series_uid=series_uid,
                             frame_of_reference_uid=frame_of_reference_uid, stack_key=stack_key)


def structure_annotation(hu: np.ndarray, spacing_zyx: tuple[float, float, float], mask: np.ndarray, *, method: str,
                         series_uid: str | None, frame_of_reference_uid: str | None = None,
                         stack_key: str | None = None) -> dict[str, Any] | None:
    """The 3D annotation of a segmented structure (its mask cropped to its box, HU statistics), None if empty."""
    found = np.argwhere(mask)
    if not found.size:
        return None
    low, high = found.min(axis=0), found.max(axis=0) + 1
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    stats = roi_mask_stats(hu, spacing_zyx, mask)
    return volume_annotation(stats, shape="mask", geometry=mask_geometry(mask[crop], tuple(int(v) for v in low)),
                             method=method, volume_shape=mask.shape, series_uid=series_uid,
                             frame_of_reference_uid=frame_of_reference_uid, stack_key=stack_key)


def volume_roi_mask(coordinates: dict[str, Any]) -> tuple[tuple[int, int, int], np.ndarray] | None:
    """``(offset_zyx, bool mask cropped to its box)`` of a checked ``volume_roi`` annotation (None for a
    line, which holds no voxels). A shape drawn on a plane covers the voxels that plane shows under it.

    Memory is the shape's box (a plane shape: one plane), never the whole volume.
    """
    shape, geometry = coordinates["shape"], coordinates["geometry"]
    volume_shape = tuple(coordinates["volume_shape"])
    if shape == "line":
        return None
    if shape == "mask":
        return mask_from_geometry(geometry)
    if shape == "box":
        x1, y1, z1, x2, y2, z2 = _box(geometry.get("box"))
        return (z1, y1, x1), np.ones((z2 - z1 + 1, y2 - y1 + 1, x2 - x1 + 1), dtype=bool)
    if shape == "sphere":
        bounds, inside = sphere_mask(volume_shape, coordinates["spacing_zyx"], geometry.get("center"),
                                     geometry.get("radius_mm"))
        return (bounds[0].start, bounds[1].start, bounds[2].start), inside
    kind = shape.removeprefix("slice_")
    plane = geometry.get("plane", "axial")
    index = geometry.get("index", geometry.get("z"))
    rows, columns = plane_pixel_shape(plane, volume_shape)
    own = geometry.get(SHAPE_KEYS[kind]) if kind in SHAPE_KEYS else geometry
    if kind == "rectangle":
        own = inward_rectangle(own, rows, columns)
    pixels = np.argwhere(slice_shape_mask(rows, columns, kind, own))  # (row, column)
    if not pixels.size:
        return None
    voxels = np.rint(plane_to_voxel(plane, index, pixels[:, ::-1].astype(np.float64), volume_shape)).astype(np.intp)
    zyx = voxels[:, ::-1]
    low = zyx.min(axis=0)
    crop = np.zeros(tuple(zyx.max(axis=0) - low + 1), dtype=bool)
    crop[tuple((zyx - low).T)] = True
    return (int(low[0]), int(low[1]), int(low[2])), crop


def check_anchor(image_row: dict[str, Any], coordinates: dict[str, Any]) -> None:
    """That the annotation row's image can anchor these volume coordinates (``INVALID_REGION`` if not).

    The image must belong to the named series and have the volume's in-plane size
    (rows = ``volume_shape[1]``, columns = ``volume_shape[2]``).
    """
    series = image_row.get("series_instance_uid")
    if coordinates.get("series_uid") is not None and series != coordinates["series_uid"]:
        raise _invalid("the image is not a slice of the annotation's series")
    _, rows, columns = coordinates["volume_shape"]
    if (image_row.get("rows"), image_row.get("columns")) != (rows, columns):
        raise _invalid(f"the image is {image_row.get('rows')} x {image_row.get('columns')}, "
                       f"the volume's slices {rows} x {columns}")
