"""3D annotations: the stored form of a volume ROI, a grown region or a segmented structure.

An annotation row holds ``type`` and a JSON ``coordinates`` (``engine/store``'s
``annotations`` table); a 3D result becomes type :data:`VOLUME_ROI` with coordinates::

    {"space": "voxel_xyz", "series_uid": ..., "frame_of_reference_uid": ..., "stack_key": ...,
     "volume_shape": [z, y, x], "spacing_zyx": [dz, dy, dx], "z_range": [z0, z1],
     "shape": "box" | "sphere" | "slice_polygon" | "slice_ellipse" | "slice_rectangle" | "mask",
     "geometry": {...},            # the shape's own parameters, voxel coordinates (x, y, z)
     "method": "...",              # how it was made ("roi", "seeded_region_growing_hu_window", ...)
     "stats": {... "volume_ml": ...}}

Geometry per shape: box ``{"box": [x1, y1, z1, x2, y2, z2]}``; sphere ``{"center": [x, y, z],
"radius_mm": r}``; slice shapes ``{"z": z, "polygon": [[x, y], ...]}`` /
``{"z": z, "center": [x, y], "radii": [rx, ry]}`` / ``{"z": z, "rectangle": [x1, y1, x2, y2]}``;
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
from engine.analysis.volume.roi import RoiStats, roi_mask_stats
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.masks import decode_rle, encode_rle

VOLUME_ROI = "volume_roi"
VOLUME_SHAPES = ("box", "sphere", "slice_polygon", "slice_ellipse", "slice_rectangle", "mask")
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
                      frame_of_reference_uid: str | None = None, stack_key: str | None = None) -> dict[str, Any]:
    """The ``{"type", "coordinates"}`` of a 3D annotation (checked by :func:`validate_volume_roi`)."""
    z_range = list(stats.z_range) if stats.z_range is not None else None
    coordinates = {"space": "voxel_xyz", "series_uid": series_uid, "frame_of_reference_uid": frame_of_reference_uid,
                   "stack_key": stack_key, "volume_shape": [int(v) for v in volume_shape],
                   "spacing_zyx": list(stats.spacing_zyx), "z_range": z_range, "shape": shape,
                   "geometry": geometry, "method": method, "stats": stats.to_dict()}
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
