"""Square boxes and crops of a decoded image, for analyses of a region (the region tool and the agent's zone scan)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from engine.imaging.decode import DecodedImage


def square_box(box: list[int], rows: int, columns: int) -> list[int]:
    """The smallest square around ``box`` (inclusive bounds), moved and clipped into the image."""
    x1, y1, x2, y2 = box
    side = min(max(x2 - x1, y2 - y1) + 1, rows, columns)
    cx, cy = (x1 + x2 + 1) / 2, (y1 + y2 + 1) / 2
    left = int(min(max(round(cx - side / 2), 0), columns - side))
    top = int(min(max(round(cy - side / 2), 0), rows - side))
    return [left, top, left + side - 1, top + side - 1]


def crop(decoded: DecodedImage, box: list[int], max_side: int | None = None) -> DecodedImage:
    """A decoded image restricted to ``box`` (inclusive bounds).

    With ``max_side``, a crop larger than that is block-averaged by the smallest integer
    factor that brings its longer side to at most ``max_side`` (values stay in the
    stored range, so the classifier's normalisation is unchanged).
    """
    x1, y1, x2, y2 = box
    window = (slice(y1, y2 + 1), slice(x1, x2 + 1))
    raw, pixels = decoded.raw[window], decoded.pixels[window]
    factor = 1 if not max_side else -(-max(raw.shape[:2]) // max_side)
    if factor > 1:
        raw, pixels = block_mean(raw, factor), block_mean(pixels, factor)
    return replace(decoded, raw=raw, pixels=pixels, rows=raw.shape[0], columns=raw.shape[1])


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks (edge rows/columns that do not fill a block dropped)."""
    rows, columns = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    trimmed = image[:rows, :columns].astype(np.float32, copy=False)
    shape = (rows // factor, factor, columns // factor, factor) + image.shape[2:]
    return trimmed.reshape(shape).mean(axis=(1, 3), dtype=np.float32)
