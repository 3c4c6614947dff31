"""Prompts for interactive segmentation: validation, and the prompt a drawn polygon stands for."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from engine.errors import ErrorCode, MedVisionError

#: Side of SAM's low-resolution mask logits (a prompt's ``mask_input``).
SAM_LOW_RES = 256
#: Interior points returned by polygon_to_prompt.
POLYGON_POINTS = 3


@dataclass(frozen=True)
class Prompt:
    """A validated prompt in image pixel coordinates.

    ``points`` is ``(N, 2)`` float64 ``[x, y]``, ``labels`` ``(N,)`` int64 (1 foreground,
    0 background), ``box`` ``[x1, y1, x2, y2]`` or None, ``mask_input`` ``(1, 1, 256,
    256)`` float32 logits of a previous SAM prediction or None.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None
    mask_input: np.ndarray | None

    @property
    def foreground(self) -> np.ndarray:  # noqa: D102
        return self.points[self.labels == 1]

    @property
    def background(self) -> np.ndarray:  # noqa: D102
        return self.points[self.labels == 0]



def invalid_region(message: str, **details: Any) -> MedVisionError:
    """An ``INVALID_REGION`` error: the prompt does not designate a region."""
    return MedVisionError(ErrorCode.INVALID_REGION, message, **details)


def validate_prompt(
    rows: int,
    columns: int,
    *,
    points: Sequence[Sequence[float]] | None = None,
    labels: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
    mask_input: np.ndarray | None = None,
) -> Prompt:
    """Check a prompt against an image of ``rows`` x ``columns`` pixels.

    Points must lie inside the image (``0 <= x < columns``, ``0 <= y < rows``); a box
    ``[x1, y1, x2, y2]`` may reach the image edge (``x2 <= columns``) and needs
    ``x2 > x1`` and ``y2 > y1``. ``labels`` default to all foreground; when given they
    must match the points one to one and be 0 or 1. A prompt needs a foreground point
    or a box. Violations are ``INVALID_REGION`` naming the offending argument;
    a malformed ``mask_input`` is ``INVALID_ARGUMENT``.
    """
    point_list = [] if points is None else list(points)
    try:
        coords = np.asarray(point_list, dtype=np.float64).reshape(-1, 2) if point_list else np.zeros((0, 2))
    except (TypeError, ValueError) as exc:
        raise invalid_region("points must be a list of [x, y] pairs", argument="points") from exc
    if not np.isfinite(coords).all():
        raise invalid_region("points must be finite numbers (no NaN or infinity)", argument="points")
    outside = (coords[:, 0] < 0) | (coords[:, 0] >= columns) | (coords[:, 1] < 0) | (coords[:, 1] >= rows)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise invalid_region(f"point {index} {coords[index].tolist()} lies outside the image "
                             f"({columns} x {rows} pixels)", argument="points", index=index)
    if labels is None:
        label_array = np.ones(len(coords), dtype=np.int64)
    else:
        try:
            label_array = np.asarray(list(labels), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise invalid_region("labels must be a list of 0/1 integers", argument="labels") from exc
        if len(label_array) != len(coords):
            raise invalid_region(f"{len(label_array)} labels for {len(coords)} points: give one label per point",
                                 argument="labels")
        if not np.isin(label_array, (0, 1)).all():
            raise invalid_region("labels must be 1 (foreground) or 0 (background)", argument="labels")
        label_array = label_array.astype(np.int64)

    box_array = None
    if box is not None:
        try:
            box_array = np.asarray(list(box), dtype=np.float64).reshape(4)
        except (TypeError, ValueError) as exc:
            raise invalid_region("box must be [x1, y1, x2, y2]", argument="box") from exc
        if not np.isfinite(box_array).all():
            raise invalid_region("box must be finite numbers (no NaN or infinity)", argument="box")
        x1, y1, x2, y2 = box_array
        if x2 <= x1 or y2 <= y1:
            raise invalid_region("box needs x2 > x1 and y2 > y1", argument="box", box=box_array.tolist())
        if x1 < 0 or y1 < 0 or x2 > columns or y2 > rows:
            raise invalid_region(f"box {box_array.tolist()} reaches outside the image ({columns} x {rows} pixels)",
                                 argument="box")
        inside = ((coords[:, 0] >= x1) & (coords[:, 0] <= x2) & (coords[:, 1] >= y1) & (coords[:, 1] <= y2))
        if ((label_array == 1) & ~inside).any():
            raise invalid_region("a foreground point lies outside the box", argument="points")
    if box_array is None and not (label_array == 1).any():
        raise invalid_region("the prompt needs at least one foreground point or a box", argument="points")

    mask = None
    if mask_input is not None:
        mask = np.asarray(mask_input, dtype=np.float32)
        if mask.size != SAM_LOW_RES * SAM_LOW_RES or mask.shape[-2:] != (SAM_LOW_RES, SAM_LOW_RES):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"mask_input must be the {SAM_LOW_RES} x {SAM_LOW_RES} low_res_logits "
                                 "of a previous result", argument="mask_input")
        if not np.isfinite(mask).all():
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "mask_input must be finite",
                                 argument="mask_input")
        mask = mask.reshape(1, 1, SAM_LOW_RES, SAM_LOW_RES)
    return Prompt(coords, label_array, box_array, mask)



def polygon_to_prompt(polygon: Sequence[Sequence[float]], max_points: int = POLYGON_POINTS
                      ) -> tuple[list[float], list[list[float]], list[int]]:
    """A box and interior foreground points that describe a drawn polygon.

    ``box`` is the polygon's bounds ``[x1, y1, x2, y2]``; the points are maxima of the
    distance transform of the rasterised polygon (the deepest interior point first, each
    next one the deepest point at least one inscribed radius away from those taken), so
    they lie well inside even for concave outlines. All labels are 1.
    """
    try:
        vertices = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError) as exc:
        raise invalid_region("polygon must be a list of [x, y] vertices", argument="polygon") from exc
    if len(vertices) < 3 or not np.isfinite(vertices).all():
        raise invalid_region("polygon needs at least three finite [x, y] vertices", argument="polygon")
    x1, y1 = vertices.min(axis=0)
    x2, y2 = vertices.max(axis=0)
    if x2 <= x1 or y2 <= y1:
        raise invalid_region("polygon has no area", argument="polygon")
    # Rasterise at most ~256 px on the long side: enough for interior points.
    scale = min(1.0, 256.0 / max(x2 - x1, y2 - y1))
    width, height = int(math.ceil((x2 - x1) * scale)) + 3, int(math.ceil((y2 - y1) * scale)) + 3
    canvas = Image.new("1", (width, height))
    local = [((x - x1) * scale + 1, (y - y1) * scale + 1) for x, y in vertices]
    ImageDraw.Draw(canvas).polygon(local, fill=1)
    inside = np.asarray(canvas)
    if not inside.any():
        raise invalid_region("polygon has no area", argument="polygon")
    distance = ndimage.distance_transform_edt(inside)
    points: list[list[float]] = []
    remaining = distance.copy()
    for _ in range(max(1, max_points)):
        row, column = np.unravel_index(int(remaining.argmax()), remaining.shape)
        depth = remaining[row, column]
        if depth <= 0 or (points and depth < 0.5 * distance.max()):
            break
        points.append([float((column - 1) / scale + x1), float((row - 1) / scale + y1)])
        rr, cc = np.ogrid[:remaining.shape[0], :remaining.shape[1]]
        radius = max(distance[row, column], 1.0)
        remaining[(rr - row) ** 2 + (cc - column) ** 2 <= (2 * radius) ** 2] = 0
    return [float(x1), float(y1), float(x2), float(y2)], points, [1] * len(points)
