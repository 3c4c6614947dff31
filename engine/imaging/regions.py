"""Regions of an image (bbox, polygon, point, freehand, mask): validation and rasterisation.

Coordinates follow the design's contract: image pixel space of the displayed frame,
origin top-left, x to the right (column), y down (row). The pixel in column ``c`` and
row ``r`` has its centre at ``(x, y) = (c, r)``.

- ``bbox``: ``[x1, y1, x2, y2]``, with ``x2 > x1`` and ``y2 > y1``.
- ``polygon`` / ``freehand``: ``[[x, y], ...]``, at least 3 points, implicitly closed
  (a freehand outline is a polygon with many vertices).
- ``point``: ``[x, y]``, optionally with ``"radius_px"``.
- ``mask``: an RLE dict (:mod:`engine.imaging.masks`) of exactly the image's size, under
  ``"coordinates"`` or ``"rle"``; ``"png_base64"`` (a base64 PNG of the image's size,
  non-zero = inside) is accepted too, as the design allows PNG masks.

``"format": "relative"`` means fractions 0..1 of the width (x) and height (y), measured
from the image's outer edges: 0 is the left/top edge of the first pixel, 1 the
right/bottom edge of the last. Pixel coordinates put pixel centres on integers, so the
conversion is ``x * columns - 0.5`` (and ``y * rows - 0.5``): relative 0.5 is the exact
centre ``(columns - 1) / 2``, and a relative box covers exactly its fraction of the
pixels (``[0.1, 0.1, 0.3, 0.5]`` on a 200 x 100 image: columns 20..59, rows 10..49).

In pixel format a coordinate may lie anywhere from ``-0.5`` to ``columns + 0.5`` (x)
and ``-0.5`` to ``rows + 0.5`` (y): the pixels' own area (-0.5 .. columns - 0.5) plus
:data:`EDGE_TOLERANCE_PX` of slack, which also admits canvases that put the right edge
at ``x = columns``. Accepted values are clamped to ``0..columns`` x ``0..rows``, so a
stored region never leaves the image.

Rasterisation (:func:`region_mask`) is inclusive: a pixel belongs to a bbox or polygon
when its centre lies inside or on the boundary (bbox ``[20, 10, 60, 50]`` covers
columns 20..60 and rows 10..50, 41 x 41 pixels), and the polygon's outline pixels
(every edge sampled once per pixel step) are added so a thin shape never vanishes.
Self-intersecting polygons are accepted: :func:`rasterize_polygon` fills by the
even-odd rule, so both lobes of a bow-tie are inside but an area the outline
winds around twice is outside (its outline pixels still count). A point becomes a
disc of ``radius_px`` (default :func:`default_point_radius`: 1 % of the image
diagonal, at least :data:`MIN_POINT_RADIUS_PX`). Every failure is ``INVALID_REGION``
with a message naming the offending value.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from engine.errors import ErrorCode, MedVisionError
from engine.imaging.masks import decode_rle, encode_rle, mask_bbox

REGION_TYPES = ("bbox", "polygon", "point", "freehand", "mask")
# Formats a spec may name; "pixel" is the default and what every Region holds.
PIXEL_FORMATS = ("pixel", "pixels", "absolute")
RELATIVE_FORMAT = "relative"
# A coordinate may sit this far outside the image extent (half a pixel: a click on the
# outer half of a border pixel, or rounding of a canvas transform) and is then clamped.
EDGE_TOLERANCE_PX = 0.5
# Default point disc: this fraction of the image diagonal...
POINT_RADIUS_FRACTION = 0.01
# ...but never smaller than this, so a point on a small image still covers some pixels.
MIN_POINT_RADIUS_PX = 3.0
# Two polygon points closer than this to the line through the others count as collinear.
COLLINEAR_TOLERANCE_PX = 1e-6


def _invalid(message: str, **details: Any) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_REGION, message, **details)


def default_point_radius(rows: int, columns: int) -> float:
    """The disc radius of a point without ``radius_px``: 1 % of the diagonal, at least 3 px."""
    return max(MIN_POINT_RADIUS_PX, POINT_RADIUS_FRACTION * math.hypot(rows, columns))


@dataclass(frozen=True, eq=False)
class Region:
    """A validated region in pixel coordinates of a ``rows`` x ``columns`` image.

    Parameters
    ----------
    type:
        One of :data:`REGION_TYPES`.
    coordinates:
        Pixel coordinates: ``(x1, y1, x2, y2)`` for a bbox, ``(x, y)`` for a point,
        ``((x, y), ...)`` for a polygon or freehand outline, ``()`` for a mask.
    rows, columns:
        Size of the image the region belongs to.
    original_format:
        How the caller gave it: "pixel", "relative", "rle", "png" or "array".
    radius_px:
        Disc radius of a point (None for other types).
    mask:
        The boolean mask of a mask region (None for other types).

    Construction validates everything (bounds with the edge tolerance, order of bbox
    corners, collinear polygons, mask size, an empty raster) and raises
    ``INVALID_REGION``; coordinates within the tolerance outside the image are clamped.
    """

    type: str
    coordinates: tuple
    rows: int
    columns: int
    original_format: str = "pixel"
    radius_px: float | None = None
    mask: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.type not in REGION_TYPES:
            raise _invalid(
                f"unknown region type {self.type!r}; expected one of {', '.join(REGION_TYPES)}",
                type=repr(self.type),
            )
        for name in ("rows", "columns"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise _invalid(f"image {name} must be a positive integer, not {value!r}")
        check = {
            "bbox": self._check_bbox, "point": self._check_point, "polygon": self._check_polygon,
            "freehand": self._check_polygon, "mask": self._check_mask,
        }[self.type]
        check()
        local, _, _ = _raster_local(self)
        if not local.any():
            raise _invalid(
                f"the {self.type} covers no pixel centre of the {self.columns}x{self.rows} image",
                type=self.type,
            )

    # -- validation --------------------------------------------------------------------
    def _clamped(self, x: float, y: float, where: str) -> tuple[float, float]:
        return _checked_point(x, y, self.rows, self.columns, where)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_bbox(self) -> None:
        values = _float_list(self.coordinates, 4, "bbox coordinates")
        x1, y1 = self._clamped(values[0], values[1], "bbox corner (x1, y1)")
        x2, y2 = self._clamped(values[2], values[3], "bbox corner (x2, y2)")
        if values[2] <= values[0]:
            raise _invalid(f"bbox x2 ({values[2]:g}) must be greater than x1 ({values[0]:g})")
        if values[3] <= values[1]:
            raise _invalid(f"bbox y2 ({values[3]:g}) must be greater than y1 ({values[1]:g})")
        self._set("coordinates", (x1, y1, x2, y2))
        self._no_extras()

    def _check_point(self) -> None:
        values = _float_list(self.coordinates, 2, "point coordinates")
        self._set("coordinates", self._clamped(values[0], values[1], "point"))
        radius = self.radius_px
        if radius is None:
            radius = default_point_radius(self.rows, self.columns)
        radius = _number(radius, "radius_px")
        if not (math.isfinite(radius) and radius > 0):
            raise _invalid(f"radius_px must be a positive finite number, not {radius!r}")
        self._set("radius_px", radius)
        if self.mask is not None:
            raise _invalid("only a mask region carries a mask array")

    def _check_polygon(self) -> None:
        if not isinstance(self.coordinates, list | tuple | np.ndarray):
            raise _invalid(f"{self.type} coordinates must be a list of [x, y] points")
        if len(self.coordinates) < 3:
            raise _invalid(
                f"a {self.type} needs at least 3 points, got {len(self.coordinates)}",
                points=len(self.coordinates),
            )
        points = []
        for index, point in enumerate(self.coordinates):
            x, y = _float_list(point, 2, f"{self.type} point {index}")
            points.append(self._clamped(x, y, f"{self.type} point {index}"))
        if _collinear(np.asarray(points)):
            raise _invalid(f"the {self.type}'s points are collinear: it encloses no area")
        self._set("coordinates", tuple(points))
        self._no_extras()

    def _check_mask(self) -> None:
        mask = self.mask
        if not isinstance(mask, np.ndarray) or mask.ndim != 2:
            raise _invalid("a mask region needs a 2-D mask array")
        if mask.shape != (self.rows, self.columns):
            raise _invalid(
                f"mask size {mask.shape[1]}x{mask.shape[0]} (columns x rows) does not match "
                f"the image ({self.columns}x{self.rows})",
                mask_size=[int(mask.shape[0]), int(mask.shape[1])],
                image_size=[self.rows, self.columns],
            )
        self._set("mask", mask.astype(bool, copy=False))
        self._set("coordinates", ())
        if self.radius_px is not None:
            raise _invalid("radius_px applies to points only")

    def _no_extras(self) -> None:
        if self.radius_px is not None:
            raise _invalid("radius_px applies to points only")
        if self.mask is not None:
            raise _invalid("only a mask region carries a mask array")

    # -- views -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON form in pixels: ``{"type", "coordinates", "format": "pixel", ...}``.

        Masks give their RLE as ``coordinates``; points add ``radius_px``; every
        region keeps ``original_format``.
        """
        if self.type == "mask":
            coordinates: Any = encode_rle(self.mask)
        elif self.type in ("polygon", "freehand"):
            coordinates = [[x, y] for x, y in self.coordinates]
        else:
            coordinates = list(self.coordinates)
        out = {"type": self.type, "coordinates": coordinates, "format": "pixel",
               "original_format": self.original_format}
        if self.type == "point":
            out["radius_px"] = self.radius_px
        return out


# ---------------------------------------------------------------------- parsing


def parse_region(spec: dict, rows: int, columns: int) -> Region:
    """Validate a region spec and convert it to pixel coordinates.

    Parameters
    ----------
    spec:
        ``{"type": "bbox|polygon|point|freehand|mask", "coordinates": ...,
        "format": "pixel|relative", "radius_px": ...}`` (see the module docs).
    rows, columns:
        Size of the displayed frame the region refers to.

    Returns
    -------
    Region

    Raises
    ------
    MedVisionError
        ``INVALID_REGION`` naming the problem: unknown type or format, non-numeric,
        NaN/inf or out-of-range values, bbox corners in the wrong order, fewer than
        3 or collinear polygon points, a mask of the wrong size, an empty result.
    """
    if not isinstance(spec, dict):
        raise _invalid(f"a region must be a JSON object, not {type(spec).__name__}")
    region_type = spec.get("type")
    if region_type not in REGION_TYPES:
        raise _invalid(
            f"unknown region type {region_type!r}; expected one of {', '.join(REGION_TYPES)}",
            type=repr(region_type),
        )
    fmt = spec.get("format") or "pixel"
    if fmt not in (*PIXEL_FORMATS, RELATIVE_FORMAT):
        raise _invalid(f"unknown coordinate format {fmt!r}; expected 'pixel' or 'relative'")
    radius = spec.get("radius_px")
    if radius is not None and region_type != "point":
        raise _invalid("radius_px applies to points only")

    if region_type == "mask":
        if fmt == RELATIVE_FORMAT:
            raise _invalid("a mask has no relative format: give an RLE of the image size")
        mask, original = _parse_mask(spec, rows, columns)
        return Region("mask", (), rows, columns, original_format=original, mask=mask)

    coordinates = spec.get("coordinates")
    if coordinates is None:
        raise _invalid(f"a {region_type} region needs 'coordinates'")
    if region_type == "bbox":
        values: Any = _float_list(coordinates, 4, "bbox coordinates")
        if fmt == RELATIVE_FORMAT:
            _check_relative(values, "bbox coordinates")
            values = [*_from_relative(values[0], values[1], rows, columns),
                      *_from_relative(values[2], values[3], rows, columns)]
    elif region_type == "point":
        values = _float_list(coordinates, 2, "point coordinates")
        if fmt == RELATIVE_FORMAT:
            _check_relative(values, "point coordinates")
            values = list(_from_relative(values[0], values[1], rows, columns))
    else:
        if not isinstance(coordinates, list | tuple):
            raise _invalid(f"{region_type} coordinates must be a list of [x, y] points")
        values = [_float_list(p, 2, f"{region_type} point {i}") for i, p in enumerate(coordinates)]
        if fmt == RELATIVE_FORMAT:
            for index, (x, y) in enumerate(values):
                _check_relative([x, y], f"{region_type} point {index}")
            values = [list(_from_relative(x, y, rows, columns)) for x, y in values]
    original = "relative" if fmt == RELATIVE_FORMAT else "pixel"
    return Region(region_type, tuple(values), rows, columns, original_format=original,
                  radius_px=None if radius is None else _number(radius, "radius_px"))


def region_from_mask(mask: np.ndarray) -> Region:
    """A mask region from a boolean array (the image size is the array's)."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise _invalid("a mask region needs a 2-D mask array")
    return Region("mask", (), int(mask.shape[0]), int(mask.shape[1]), original_format="array",
                  mask=mask)


def _parse_mask(spec: dict, rows: int, columns: int) -> tuple[np.ndarray, str]:
    """The boolean mask of a mask spec (RLE dict, base64 PNG or array) and its format name."""
    source = spec.get("coordinates")
    if source is None:
        source = spec.get("rle")
    if isinstance(source, np.ndarray):
        return source, "array"
    if isinstance(source, dict):
        if "size" in source and isinstance(source["size"], list | tuple) and len(source["size"]) == 2:
            size = list(source["size"])
            if size != [rows, columns]:
                raise _invalid(
                    f"mask RLE size {size} (rows, columns) does not match the image "
                    f"({rows}, {columns})", mask_size=size, image_size=[rows, columns],
                )
        try:
            return decode_rle(source), "rle"
        except MedVisionError as exc:
            raise _invalid(f"invalid mask RLE: {exc.message}") from exc
    png = spec.get("png_base64")
    if isinstance(png, str):
        try:
            data = base64.b64decode(png, validate=True)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                array = np.asarray(image.convert("L")) > 0
        except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as exc:
            raise _invalid(f"invalid base64 PNG mask ({type(exc).__name__})") from exc
        return array, "png"
    raise _invalid("a mask region needs an RLE dict in 'coordinates' (or 'rle', 'png_base64')")


def _checked_point(x: float, y: float, rows: int, columns: int, where: str) -> tuple[float, float]:
    """Check a point against the image extent (plus tolerance) and clamp it onto the image."""
    for axis, value, size in (("x", x, columns), ("y", y, rows)):
        if not math.isfinite(value):
            raise _invalid(f"{where} {axis} is not a finite number ({value!r})")
        if value < -EDGE_TOLERANCE_PX or value > size + EDGE_TOLERANCE_PX:
            extent = "width" if axis == "x" else "height"
            raise _invalid(
                f"{where} {axis} = {value:g} is outside the image ({extent} {size} px, "
                f"allowed -{EDGE_TOLERANCE_PX:g}..{size + EDGE_TOLERANCE_PX:g})",
                axis=axis, value=value, size=size,
            )
    return min(max(x, 0.0), float(columns)), min(max(y, 0.0), float(rows))


def _number(value: Any, where: str) -> float:
    """A real number as float; bools, strings and other types are INVALID_REGION."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _invalid(f"{where} must be a number, not {value!r}", value=repr(value)[:80])
    number = float(value)
    if not math.isfinite(number):
        raise _invalid(f"{where} is not a finite number ({value!r})")
    return number


def _float_list(values: Any, length: int, where: str) -> list[float]:
    """Exactly ``length`` finite numbers as floats."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, list | tuple):
        raise _invalid(f"{where} must be a list of {length} numbers, not {type(values).__name__}")
    if len(values) != length:
        raise _invalid(f"{where} must have {length} numbers, got {len(values)}")
    return [_number(v, f"{where}[{i}]") for i, v in enumerate(values)]


def _from_relative(x: float, y: float, rows: int, columns: int) -> tuple[float, float]:
    """Fractions of the width/height (0 = outer left/top edge) to pixel-centre coordinates."""
    return x * columns - 0.5, y * rows - 0.5


def _check_relative(values: list[float], where: str) -> None:
    for index, value in enumerate(values):
        if value < 0.0 or value > 1.0:
            raise _invalid(
                f"{where}[{index}] = {value:g} is outside 0..1 (format 'relative')", value=value
            )


def _collinear(points: np.ndarray) -> bool:
    """True when all points lie on one line (or coincide): the outline encloses no area."""
    offsets = points - points[0]
    lengths = np.hypot(offsets[:, 0], offsets[:, 1])
    far = int(np.argmax(lengths))
    if lengths[far] <= COLLINEAR_TOLERANCE_PX:
        return True
    direction = offsets[far] / lengths[far]
    distances = np.abs(offsets[:, 0] * direction[1] - offsets[:, 1] * direction[0])
    return bool(distances.max() <= COLLINEAR_TOLERANCE_PX)


# ---------------------------------------------------------------------- rasterising


def region_mask(region: Region, rows: int | None = None, columns: int | None = None) -> np.ndarray:
    """The region as a boolean ``rows`` x ``columns`` mask (inclusive of its edges).

    ``rows`` and ``columns`` default to the region's image size; a different size is
    ``INVALID_REGION`` (the region was validated against another image).
    """
    rows = region.rows if rows is None else rows
    columns = region.columns if columns is None else columns
    if (rows, columns) != (region.rows, region.columns):
        raise _invalid(
            f"the region belongs to a {region.columns}x{region.rows} image, "
            f"not {columns}x{rows} (columns x rows)"
        )
    if region.type == "mask":
        return region.mask.copy()
    local, row0, column0 = _raster_local(region)
    out = np.zeros((rows, columns), dtype=bool)
    out[row0:row0 + local.shape[0], column0:column0 + local.shape[1]] = local
    return out


def _raster_local(region: Region) -> tuple[np.ndarray, int, int]:
    """Rasterise within the region's pixel window: (window mask, first row, first column)."""
    if region.type == "mask":
        return region.mask, 0, 0
    rows, columns = region.rows, region.columns
    if region.type == "bbox":
        x1, y1, x2, y2 = region.coordinates
        c0, c1 = max(math.ceil(x1), 0), min(math.floor(x2), columns - 1)
        r0, r1 = max(math.ceil(y1), 0), min(math.floor(y2), rows - 1)
        if c1 < c0 or r1 < r0:
            return np.zeros((0, 0), dtype=bool), 0, 0
        return np.ones((r1 - r0 + 1, c1 - c0 + 1), dtype=bool), r0, c0
    if region.type == "point":
        x, y = region.coordinates
        radius = float(region.radius_px)
        c0, c1 = max(math.ceil(x - radius), 0), min(math.floor(x + radius), columns - 1)
        r0, r1 = max(math.ceil(y - radius), 0), min(math.floor(y + radius), rows - 1)
        if c1 < c0 or r1 < r0:
            return np.zeros((0, 0), dtype=bool), 0, 0
        yy = np.arange(r0, r1 + 1, dtype=np.float64)[:, None] - y
        xx = np.arange(c0, c1 + 1, dtype=np.float64)[None, :] - x
        return (xx * xx + yy * yy) <= radius * radius, r0, c0
    points = np.asarray(region.coordinates, dtype=np.float64)
    c0 = max(math.floor(points[:, 0].min()) - 1, 0)
    c1 = min(math.ceil(points[:, 0].max()) + 1, columns - 1)
    r0 = max(math.floor(points[:, 1].min()) - 1, 0)
    r1 = min(math.ceil(points[:, 1].max()) + 1, rows - 1)
    shape = (r1 - r0 + 1, c1 - c0 + 1)
    return rasterize_polygon(points - [c0, r0], shape), r0, c0


def rasterize_polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of a closed polygon ``[[x, y], ...]``: inside (even-odd) plus outline.

    A scanline fill: each edge is intersected with the rows of pixel centres it spans
    (half-open in y, so a vertex is counted once), intersections are sorted per row
    and paired, and the pixel centres between each pair are set. That is the even-odd
    rule, in time proportional to the outline and the filled area (a point-in-polygon
    test per pixel would multiply pixels by vertices). The outline pixels are added.
    """
    points = np.asarray(points, dtype=np.float64)
    rows, columns = shape
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    low, high = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.ceil(low).astype(np.int64)
    counts = np.maximum(np.ceil(high).astype(np.int64) - first, 0)
    counts[y0 == y1] = 0  # horizontal edges cross no row
    edge = np.repeat(np.arange(len(points)), counts)
    offsets = np.arange(edge.size) - np.repeat(np.cumsum(counts) - counts, counts)
    row = first[edge] + offsets
    x = x0[edge] + (row - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    order = np.lexsort((x, row))
    row, x = row[order], x[order]
    start_row, start_x, end_x = row[0::2], x[0::2], x[1::2]
    start = np.maximum(np.ceil(start_x).astype(np.int64), 0)
    stop = np.minimum(np.floor(end_x).astype(np.int64), columns - 1) + 1
    keep = (start_row >= 0) & (start_row < rows) & (start < stop)
    steps = np.zeros((rows, columns + 1), dtype=np.int32)
    np.add.at(steps, (start_row[keep], start[keep]), 1)
    np.add.at(steps, (start_row[keep], stop[keep]), -1)
    filled = np.cumsum(steps[:, :columns], axis=1) > 0
    rr, cc = _outline_pixels(y0, x0, shape)
    filled[rr, cc] = True
    return filled


def _outline_pixels(r: np.ndarray, c: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels on the closed outline through the vertices, within ``shape``.

    Each edge is sampled at one point per pixel step along its longer axis and rounded
    (the same pixels as a Bresenham line); ``skimage.draw.polygon_perimeter`` would do
    this too but needs matplotlib.
    """
    r0, c0 = r, c
    r1, c1 = np.roll(r, -1), np.roll(c, -1)
    steps = np.maximum(np.ceil(np.maximum(np.abs(r1 - r0), np.abs(c1 - c0))).astype(np.int64), 1)
    edge = np.repeat(np.arange(len(r)), steps + 1)
    starts = np.concatenate(([0], np.cumsum(steps + 1)[:-1]))
    t = (np.arange(edge.size) - np.repeat(starts, steps + 1)) / np.repeat(steps, steps + 1)
    rows = np.rint(r0[edge] + t * (r1[edge] - r0[edge])).astype(np.int64)
    cols = np.rint(c0[edge] + t * (c1[edge] - c0[edge])).astype(np.int64)
    keep = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    return rows[keep], cols[keep]


# ---------------------------------------------------------------------- geometry


def region_bounds(region: Region) -> list[float]:
    """``[x1, y1, x2, y2]`` bounds of a region in pixels.

    A bbox gives its corners, a polygon its vertices' extremes, a point its disc
    clipped to the image, a mask the inclusive bounds of its pixels.
    """
    if region.type == "bbox":
        return [float(v) for v in region.coordinates]
    if region.type == "point":
        x, y = region.coordinates
        radius = float(region.radius_px)
        return [max(x - radius, 0.0), max(y - radius, 0.0),
                min(x + radius, float(region.columns - 1)), min(y + radius, float(region.rows - 1))]
    if region.type == "mask":
        return [float(v) for v in mask_bbox(region.mask)]
    points = np.asarray(region.coordinates, dtype=np.float64)
    return [float(points[:, 0].min()), float(points[:, 1].min()),
            float(points[:, 0].max()), float(points[:, 1].max())]


def mirror_region(region: Region, axis_x: float) -> Region:
    """Mirror a region across the vertical line ``x = axis_x``, clipped to the image.

    Used for the contralateral comparison (``axis_x`` from
    :func:`engine.analysis.anatomy.midline_x`). A shape whose mirror stays on the image
    keeps its type; a bbox is clipped to the image; a polygon, freehand or point
    whose mirror leaves the image becomes a mask of its mirrored raster, clipped.
    A mirror entirely off the image is ``INVALID_REGION``.
    """
    if isinstance(axis_x, bool) or not isinstance(axis_x, numbers.Real) or not math.isfinite(axis_x):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"axis_x must be a finite number, not {axis_x!r}")
    axis_x = float(axis_x)
    columns = float(region.columns)
    off_image = "the mirrored region falls outside the image"
    if region.type == "bbox":
        x1, y1, x2, y2 = region.coordinates
        new_x1, new_x2 = max(2 * axis_x - x2, 0.0), min(2 * axis_x - x1, columns)
        if new_x2 <= new_x1:
            raise _invalid(off_image, axis_x=axis_x)
        return Region("bbox", (new_x1, y1, new_x2, y2), region.rows, region.columns,
                      original_format=region.original_format)
    if region.type == "point":
        x, y = region.coordinates
        mirrored_x = 2 * axis_x - x
        if 0.0 <= mirrored_x <= columns:
            return Region("point", (mirrored_x, y), region.rows, region.columns,
                          original_format=region.original_format, radius_px=region.radius_px)
    elif region.type in ("polygon", "freehand"):
        points = [(2 * axis_x - x, y) for x, y in region.coordinates]
        if all(0.0 <= x <= columns for x, _ in points):
            return Region(region.type, tuple(points), region.rows, region.columns,
                          original_format=region.original_format)
    mirrored = mirror_mask(region_mask(region), axis_x)
    if not mirrored.any():
        raise _invalid(off_image, axis_x=axis_x)
    return Region("mask", (), region.rows, region.columns, original_format="mirrored", mask=mirrored)


def mirror_mask(mask: np.ndarray, axis_x: float) -> np.ndarray:
    """Mirror a boolean mask across ``x = axis_x``; what lands off the image is dropped.

    Column ``c`` of the result takes column ``round(2 * axis_x - c)`` of ``mask`` (exact
    when ``axis_x`` is a whole or half pixel). The result may be empty; unlike
    :func:`mirror_region` this never raises for that.
    """
    if isinstance(axis_x, bool) or not isinstance(axis_x, numbers.Real) or not math.isfinite(axis_x):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"axis_x must be a finite number, not {axis_x!r}")
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "mirror_mask needs a 2-D mask array")
    columns = mask.shape[1]
    source = np.rint(2 * float(axis_x) - np.arange(columns)).astype(np.int64)
    valid = (source >= 0) & (source < columns)
    mirrored = np.zeros(mask.shape, dtype=bool)
    mirrored[:, valid] = mask[:, source[valid]]
    return mirrored


# ---------------------------------------------------------------------- annotations

ANNOTATION_TYPES = (*REGION_TYPES, "measurement", "text")
#: Measurement annotation kinds: (fewest points, most points or None for no limit).
MEASUREMENT_KINDS: dict[str, tuple[int, int | None]] = {
    "distance": (2, 2),   # [p1, p2]
    "polyline": (2, None),  # an open path; its length
    "angle": (3, 3),      # [a, vertex, b]: the angle at the middle point
    "area": (3, None),    # a closed outline; its area
}
#: Longest text annotation accepted (characters): a caption, not a report.
TEXT_MAX_CHARS = 2000


def annotation_coordinates(annotation_type: str, coordinates: Any, rows: int, columns: int) -> Any:
    """Validate an annotation's coordinates and return their stored (pixel) JSON form.

    Parameters
    ----------
    annotation_type:
        One of :data:`ANNOTATION_TYPES`.
    coordinates:
        - bbox / polygon / freehand / point: the region coordinates in pixels, or a
          region dict ``{"coordinates": ..., "format": "relative"}``;
        - mask: an RLE dict of the image size;
        - measurement: ``{"kind": "distance"|"polyline"|"angle"|"area",
          "points": [[x, y], ...], "format"?: "relative"}`` (see
          :data:`MEASUREMENT_KINDS`; an angle's middle point is the vertex);
        - text: ``{"position": [x, y], "text": "...", "format"?: "relative"}``.
    rows, columns:
        The image size the coordinates refer to.

    Returns
    -------
    Any
        bbox ``[x1, y1, x2, y2]``, point ``[x, y]``, polygon/freehand ``[[x, y], ...]``,
        mask RLE dict, measurement ``{"kind", "points"}``, text ``{"position", "text"}``;
        all in pixels, clamped onto the image. A measurement's value is not included
        (it depends on the pixel spacing: see :func:`engine.analysis.measurements.measure_annotation`).

    Raises
    ------
    MedVisionError
        ``INVALID_ARGUMENT`` for an unknown annotation type, ``INVALID_REGION`` for
        bad coordinates.
    """
    if annotation_type not in ANNOTATION_TYPES:
        raise MedVisionError(
            ErrorCode.INVALID_ARGUMENT,
            f"unknown annotation type {annotation_type!r}; expected one of {', '.join(ANNOTATION_TYPES)}",
        )
    if not (isinstance(rows, numbers.Integral) and isinstance(columns, numbers.Integral)
            and rows > 0 and columns > 0):
        raise _invalid("the image has no recorded size: annotations cannot be validated against it")
    rows, columns = int(rows), int(columns)
    if annotation_type == "mask":
        spec = coordinates if isinstance(coordinates, dict) and "counts" not in coordinates else {
            "coordinates": coordinates}
        return parse_region({**spec, "type": "mask"}, rows, columns).to_dict()["coordinates"]
    if annotation_type in REGION_TYPES:
        if isinstance(coordinates, dict):
            _only_keys(coordinates, {"coordinates", "format", "type"}, annotation_type)
            spec = {**coordinates, "type": annotation_type}
        else:
            spec = {"type": annotation_type, "coordinates": coordinates}
        return parse_region(spec, rows, columns).to_dict()["coordinates"]
    if not isinstance(coordinates, dict):
        raise _invalid(f"{annotation_type} coordinates must be a JSON object, not "
                       f"{type(coordinates).__name__}")
    fmt = coordinates.get("format") or "pixel"
    if annotation_type == "text":
        _only_keys(coordinates, {"position", "text", "format"}, "text")
        text = coordinates.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _invalid("a text annotation needs a non-empty 'text' string")
        if len(text) > TEXT_MAX_CHARS:
            raise _invalid(f"text annotations hold at most {TEXT_MAX_CHARS} characters, got {len(text)}")
        position = _annotation_point(coordinates.get("position"), fmt, rows, columns, "text position")
        return {"position": position, "text": text}
    _only_keys(coordinates, {"kind", "points", "format", "result"}, "measurement")
    kind = coordinates.get("kind")
    if kind not in MEASUREMENT_KINDS:
        raise _invalid(f"unknown measurement kind {kind!r}; expected one of {', '.join(MEASUREMENT_KINDS)}")
    fewest, most = MEASUREMENT_KINDS[kind]
    points = coordinates.get("points")
    if not isinstance(points, list | tuple):
        raise _invalid(f"a {kind} measurement needs 'points': a list of [x, y]")
    if len(points) < fewest or (most is not None and len(points) > most):
        wanted = str(fewest) if most == fewest else f"at least {fewest}"
        raise _invalid(f"a {kind} measurement needs {wanted} points, got {len(points)}")
    pixels = [_annotation_point(p, fmt, rows, columns, f"measurement point {i}") for i, p in enumerate(points)]
    array = np.asarray(pixels)
    if kind == "distance" and np.allclose(array[0], array[1]):
        raise _invalid("the two points of a distance coincide")
    if kind == "angle" and (np.allclose(array[0], array[1]) or np.allclose(array[2], array[1])):
        raise _invalid("an angle's end points must differ from its vertex (the middle point)")
    if kind == "area" and _collinear(array):
        raise _invalid("the area outline's points are collinear: it encloses no area")
    if kind == "polyline" and np.allclose(array, array[0]):
        raise _invalid("all points of the polyline coincide")
    return {"kind": kind, "points": pixels}


def _only_keys(value: dict, allowed: set[str], what: str) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _invalid(f"unknown key(s) in {what} coordinates: {', '.join(map(str, unknown))}; "
                       f"allowed: {', '.join(sorted(allowed))}")


def _annotation_point(point: Any, fmt: str, rows: int, columns: int, where: str) -> list[float]:
    """One [x, y] in pixel or relative format, checked and clamped like a region point."""
    if fmt not in (*PIXEL_FORMATS, RELATIVE_FORMAT):
        raise _invalid(f"unknown coordinate format {fmt!r}; expected 'pixel' or 'relative'")
    x, y = _float_list(point, 2, where)
    if fmt == RELATIVE_FORMAT:
        _check_relative([x, y], where)
        x, y = _from_relative(x, y, rows, columns)
    return list(_checked_point(x, y, rows, columns, where))
