"""Binary masks in a compact JSON form: run-length encoding over the row-major pixels.

``{"size": [rows, columns], "counts": [n0, n1, n2, ...]}``: alternating run lengths
starting with a run of zeros (possibly 0), over the mask flattened row by row. Masks
always have the size of the image they belong to (the design's contract).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import ErrorCode, MedVisionError


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Run-length encode a 2-D boolean mask."""
    if mask.ndim != 2:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "a mask must be 2-D")
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """The boolean mask of an RLE dict; malformed input is ``INVALID_ARGUMENT``."""
    try:
        rows, columns = (int(v) for v in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "malformed RLE mask") from exc
    if rows <= 0 or columns <= 0 or (counts < 0).any() or int(counts.sum()) != rows * columns:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "RLE counts do not cover the mask size")
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(rows, columns)


def mask_bbox(mask: np.ndarray) -> list[int] | None:
    """``[x1, y1, x2, y2]`` (inclusive pixel bounds) of a mask, None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    return [int(columns[0]), int(rows[0]), int(columns[-1]), int(rows[-1])]
