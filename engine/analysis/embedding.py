"""Image embeddings with RAD-DINO (a DINOv2 ViT-B/14 trained on chest X-rays) in ONNX.

The vector is the CLS token after the final layer norm (``pooler_output`` in
``transformers``), L2-normalised here so that a dot product is a cosine similarity (the
similar-case index relies on it).

Preprocessing reimplements rad-dino's image processor (``BitImageProcessor``) in
numpy + Pillow, starting from what the radiologist sees: the display rendering
(``DecodedImage.display()``: windowed uint8, MONOCHROME1 already inverted), grey
replicated to three channels, shortest edge resized with Pillow's bicubic filter, centre
crop, rescale by 1/255, per-channel mean/std. The sizes, filter and statistics come from
the manifest entry (``input``), never from constants here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine.errors import ErrorCode, MedVisionError
from engine.inference.openvino_runtime import runtime_info

if TYPE_CHECKING:
    from engine.imaging import DecodedImage
    from engine.inference.registry import ModelRegistry

#: Longest/shortest side a region may have: the shortest edge is scaled to 518 px, so a
#: sliver would become a huge intermediate image (and carries nothing to embed).
MAX_REGION_ASPECT = 10.0

#: Pillow filters by the names the manifest uses (``input.resample``).
RESAMPLE_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def display_region(decoded: DecodedImage, region: tuple[slice, slice] | None = None) -> np.ndarray:
    """The display rendering of ``decoded`` (uint8, dense tissue bright), cropped to ``region``.

    ``region`` is ``(rows, columns)`` slices in image pixel coordinates with unit step;
    an empty or out-of-image region is ``INVALID_REGION``.
    """
    display = decoded.display()
    if region is None:
        return display
    if (not isinstance(region, tuple) or len(region) != 2
            or not all(isinstance(s, slice) and s.step in (None, 1) for s in region)):
        raise MedVisionError(ErrorCode.INVALID_REGION,
                             "region must be a (rows, columns) pair of slices with unit step")
    crop = display[region]
    bounds = {"rows": [region[0].start, region[0].stop], "columns": [region[1].start, region[1].stop]}
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise MedVisionError(ErrorCode.INVALID_REGION, "region is empty or outside the image", **bounds)
    if max(crop.shape[:2]) > MAX_REGION_ASPECT * min(crop.shape[:2]):
        raise MedVisionError(ErrorCode.INVALID_REGION,
                             f"region is too elongated to embed (sides over {MAX_REGION_ASPECT:g}:1)", **bounds)
    return crop


def resized_shape(rows: int, columns: int, shortest_edge: int) -> tuple[int, int]:
    """(rows, columns) after scaling the shortest edge to ``shortest_edge``.

    The long edge is truncated, not rounded, as ``transformers``'
    ``get_resize_output_image_size(default_to_square=False)`` does.
    """
    short, long = (columns, rows) if columns <= rows else (rows, columns)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if columns <= rows else (shortest_edge, new_long)


def pixel_values(image: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """rad-dino's processor on one uint8 image (grey 2-D or RGB): a ``(1, 3, crop, crop)`` tensor.

    Grey images are resized once and broadcast to the three channels (Pillow resamples
    each channel of an RGB image independently with the same integer filter, so the
    result equals resizing an RGB copy).
    """
    shortest_edge = int(preprocessing["shortest_edge"])
    crop = int(preprocessing["crop_size"])
    resample = RESAMPLE_FILTERS[preprocessing.get("resample", "bicubic")]
    rescale = np.float32(preprocessing.get("rescale_factor", 1 / 255))
    mean = np.asarray(preprocessing["image_mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(preprocessing["image_std"], dtype=np.float32).reshape(3, 1, 1)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "embedding input must be a uint8 grey or RGB image")
    rows, columns = image.shape[:2]
    new_rows, new_columns = resized_shape(rows, columns, shortest_edge)
    if new_rows < crop or new_columns < crop:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "crop_size exceeds the resized image")
    # uint8 2-D opens as "L", (rows, columns, 3) as "RGB".
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image))
                         .resize((new_columns, new_rows), resample=resample))
    top, left = (new_rows - crop) // 2, (new_columns - crop) // 2
    square = resized[top:top + crop, left:left + crop].astype(np.float32) * rescale
    channels = square[None] if square.ndim == 2 else square.transpose(2, 0, 1)
    return ((channels - mean) / std)[None].astype(np.float32)


def embed_image(
    decoded: DecodedImage,
    registry: ModelRegistry,
    *,
    region: tuple[slice, slice] | None = None,
) -> dict[str, Any]:
    """Embed one image (or a region of it) as a unit-length RAD-DINO vector.

    Parameters
    ----------
    decoded:
        Any decoded image; the embedding is computed from its display rendering, so the
        window the file carries matters (as it does for a reader).
    registry:
        Serves the pack's ``embed`` model.
    region:
        ``(rows, columns)`` slices cropping the display image first, for region
        similarity search.

    Returns
    -------
    dict
        ``vector`` (float32, shape ``(dimension,)``, L2 norm 1), ``dimension``, ``model``,
        ``model_trained``, ``region`` (``[x1, y1, x2, y2]`` inclusive, or None) and
        ``timings_ms``. ``vector`` is a numpy array: convert it before writing JSON.
    """
    entry = registry.require("embed")
    model = registry.onnx(entry)
    spec = entry.spec.get("input", {})

    started = time.perf_counter()
    image = display_region(decoded, region)
    tensor = pixel_values(image, spec)
    prepared = time.perf_counter()
    raw = model.run({spec.get("name", model.input_names[0]): tensor})[0][0].astype(np.float32)
    inferred = time.perf_counter()

    norm = float(np.linalg.norm(raw))
    if not np.isfinite(norm) or norm == 0.0:
        raise MedVisionError(ErrorCode.INFERENCE_ERROR, f"{entry.id} returned a zero or non-finite embedding")
    bounds = None
    if region is not None:
        rows, columns = (range(*s.indices(n)) for s, n in zip(region, (decoded.rows, decoded.columns), strict=True))
        bounds = [columns.start, rows.start, columns.stop - 1, rows.stop - 1]
    return {
        "status": "ok",
        "vector": raw / np.float32(norm),
        "dimension": int(raw.size),
        "model": entry.describe() | runtime_info(model),
        "model_trained": entry.trained,
        "region": bounds,
        "timings_ms": {
            "preprocess": round((prepared - started) * 1000, 2),
            "inference": round((inferred - prepared) * 1000, 2),
        },
    }
