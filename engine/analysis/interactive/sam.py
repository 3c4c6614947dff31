"""The SAM backend: MobileSAM's pre/post transforms (SamPredictor, reimplemented) and its ONNX graphs.

MobileSAM is exported to two ONNX graphs (``models/sam.py``). The image encoder runs
once per image (about a second on a CPU); each click only runs the prompt decoder.
Preprocessing and the prompt coordinate transform reimplement ``SamPredictor``
(``ResizeLongestSide``, ``Sam.preprocess``) in numpy + Pillow, with the sizes and
statistics read from the manifest entries.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine.analysis.interactive.prompt import SAM_LOW_RES, Prompt, invalid_region
from engine.errors import ErrorCode, MedVisionError

if TYPE_CHECKING:
    from engine.imaging import DecodedImage
    from engine.inference.modelpack import ModelEntry
    from engine.inference.registry import ModelRegistry

#: SAM defaults, used only when a manifest entry omits them (MobileSAM's values).
SAM_LONG_SIDE = 1024
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def preprocess_shape(rows: int, columns: int, long_side: int) -> tuple[int, int]:
    """``ResizeLongestSide.get_preprocess_shape``: (rows, columns) with the long side scaled."""
    scale = long_side * 1.0 / max(rows, columns)
    return int(rows * scale + 0.5), int(columns * scale + 0.5)


def apply_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """``ResizeLongestSide.apply_coords``: ``[..., (x, y)]`` image pixels -> encoder input pixels."""
    old_rows, old_columns = original_size
    new_rows, new_columns = preprocess_shape(old_rows, old_columns, long_side)
    scaled = np.array(coords, dtype=np.float64, copy=True)
    scaled[..., 0] = scaled[..., 0] * (new_columns / old_columns)
    scaled[..., 1] = scaled[..., 1] * (new_rows / old_rows)
    return scaled


def apply_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """``ResizeLongestSide.apply_boxes``: ``(B, 4)`` boxes as two corners each."""
    return apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size, long_side).reshape(-1, 4)


def rgb_display(decoded: DecodedImage) -> np.ndarray:
    """The display rendering as ``(rows, columns, 3)`` uint8 (grey replicated)."""
    display = decoded.display()
    if display.ndim == 2:
        return np.repeat(display[:, :, None], 3, axis=2)
    return np.ascontiguousarray(display[:, :, :3])


def sam_image_tensor(image: np.ndarray, spec: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int]]:
    """SAM's image preprocessing on a uint8 grey or RGB image.

    ``SamPredictor.set_image`` + ``Sam.preprocess``: resize so the long side is
    ``spec["long_side"]`` (Pillow bilinear, as torchvision's ``resize`` of a PIL image
    does), subtract ``pixel_mean``, divide by ``pixel_std`` (0-255 scale), zero-pad
    bottom/right to a square. A grey image is resized once and broadcast to the three
    channels (Pillow filters each channel alike, so this equals resizing an RGB copy).

    Returns
    -------
    tuple
        The ``(1, 3, long_side, long_side)`` float32 tensor and the resized
        ``(rows, columns)`` before padding.
    """
    long_side = int(spec.get("long_side", SAM_LONG_SIDE))
    mean = np.asarray(spec.get("pixel_mean", SAM_PIXEL_MEAN), dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.get("pixel_std", SAM_PIXEL_STD), dtype=np.float32).reshape(3, 1, 1)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "SAM input must be a uint8 grey or RGB image")
    rows, columns = image.shape[:2]
    new_rows, new_columns = preprocess_shape(rows, columns, long_side)
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image))
                         .resize((new_columns, new_rows), resample=Image.Resampling.BILINEAR))
    channels = resized[None].astype(np.float32) if resized.ndim == 2 else resized.transpose(2, 0, 1)
    tensor = np.zeros((1, 3, long_side, long_side), dtype=np.float32)
    tensor[0, :, :new_rows, :new_columns] = (channels - mean) / std
    return tensor, (new_rows, new_columns)


def decoder_prompt(prompt: Prompt, original_size: tuple[int, int], long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """``point_coords`` ``(1, N, 2)`` and ``point_labels`` ``(1, N)`` as SAM's ONNX example builds them.

    Points are transformed with :func:`apply_coords`; a box becomes two corner points
    labelled 2 and 3; without a box a padding point ``(0, 0)`` labelled -1 is appended.
    """
    coords = [apply_coords(prompt.points, original_size, long_side)] if len(prompt.points) else []
    labels = [prompt.labels.astype(np.float32)] if len(prompt.points) else []
    if prompt.box is not None:
        coords.append(apply_boxes(prompt.box[None], original_size, long_side).reshape(2, 2))
        labels.append(np.array([2, 3], dtype=np.float32))
    else:
        coords.append(np.zeros((1, 2)))
        labels.append(np.array([-1], dtype=np.float32))
    return (np.concatenate(coords)[None].astype(np.float32), np.concatenate(labels)[None].astype(np.float32))



def encode_image(registry: ModelRegistry, encoder: ModelEntry, decoded: DecodedImage,
                 timings: dict[str, float]) -> np.ndarray:
    """Run the image encoder on the display rendering (the embedding's shape is the caller's to check)."""
    model = registry.onnx(encoder)
    spec = encoder.spec.get("input", {})
    started = time.perf_counter()
    tensor, _ = sam_image_tensor(rgb_display(decoded), spec)
    prepared = time.perf_counter()
    embedding = model.run({spec.get("name", model.input_names[0]): tensor})[0].astype(np.float32)
    finished = time.perf_counter()
    timings["encoder_preprocess"] = round((prepared - started) * 1000, 2)
    timings["encoder"] = round((finished - prepared) * 1000, 2)
    return embedding


def decode_masks(registry: ModelRegistry, encoder: ModelEntry, decoder: ModelEntry, embedding: np.ndarray,
                 original_size: tuple[int, int], prompt: Prompt, multimask: bool,
                 timings: dict[str, float]) -> dict[str, Any]:
    """Run the prompt decoder on an embedding: the segmenter's result, less ``embedding_source``."""
    model = registry.onnx(decoder)
    long_side = int(encoder.spec.get("input", {}).get("long_side", SAM_LONG_SIDE))
    coords, point_labels = decoder_prompt(prompt, original_size, long_side)
    has_mask = prompt.mask_input is not None
    feeds = {
        "image_embeddings": embedding,
        "point_coords": coords,
        "point_labels": point_labels,
        "mask_input": prompt.mask_input if has_mask else np.zeros((1, 1, SAM_LOW_RES, SAM_LOW_RES), np.float32),
        "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
        "orig_im_size": np.array(original_size, dtype=np.float32),
    }
    started = time.perf_counter()
    masks, scores, low_res = model.run(feeds)
    decoded_at = time.perf_counter()
    output = decoder.spec.get("output", {})
    threshold = float(output.get("mask_threshold", 0.0))
    indices = output.get("multimask_indices", [1, 2, 3]) if multimask else [output.get("single_mask_index", 0)]
    candidates = []
    for index in indices:
        mask = masks[0, index] > threshold
        area = int(mask.sum())
        if area:
            candidates.append({"index": index, "mask": mask, "score": float(scores[0, index]), "area_px": area})
    timings["decoder"] = round((decoded_at - started) * 1000, 2)
    timings["postprocess"] = round((time.perf_counter() - decoded_at) * 1000, 2)
    if not candidates:
        raise invalid_region("the prompt selects nothing (empty mask); click inside the structure",
                             backend="sam")
    best = int(np.argmax([c["score"] for c in candidates]))
    return {
        "status": "ok",
        "backend": "sam",
        "model": encoder.describe() | {"device": registry.onnx(encoder).device, "decoder": decoder.describe()},
        "model_trained": bool(encoder.trained and decoder.trained),
        "masks": [{"mask": c["mask"], "score": round(c["score"], 4), "area_px": c["area_px"]}
                  for c in candidates],
        "best": best,
        "low_res_logits": low_res[0, candidates[best]["index"]].astype(np.float32),
    }
