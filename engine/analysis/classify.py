"""Chest X-ray classification with a torchxrayvision DenseNet exported to ONNX."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.analysis.preprocess import classifier_tensor
from engine.errors import ErrorCode, MedVisionError
from engine.inference.openvino_runtime import runtime_info

if TYPE_CHECKING:
    from engine.imaging import DecodedImage
    from engine.inference.modelpack import ModelEntry
    from engine.inference.registry import ModelRegistry

#: Image types the chest classifier accepts without ``force``.
CXR_TYPES = frozenset({"CXR"})
#: The shortest image side a model is given unless its manifest entry says otherwise
#: (``input.min_side``): below 32 px the centre crop resized to 224 (or 512) is a few grey
#: blocks blown up, not a radiograph, and the model's output means nothing.
MIN_IMAGE_SIDE = 32


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def op_norm(probabilities: np.ndarray, op_threshs: list[float | None]) -> np.ndarray:
    """torchxrayvision's ``op_norm``: rescale so each label's operating point maps to 0.5."""
    out = np.full_like(probabilities, 0.5)
    for index, thresh in enumerate(op_threshs):
        if thresh is None or np.isnan(thresh):
            continue
        p = probabilities[index]
        out[index] = p / (thresh * 2) if p < thresh else 1.0 - (1.0 - p) / ((1.0 - thresh) * 2)
    return out


def check_image_type(decoded: DecodedImage, accepted: frozenset[str], model: str, force: bool) -> None:
    """Refuse an image of the wrong type for a model unless the caller forces it."""
    if decoded.image_type in accepted or force:
        return
    raise MedVisionError(
        ErrorCode.INVALID_IMAGE_TYPE,
        f"{model} expects {'/'.join(sorted(accepted))} images, but this image is {decoded.image_type} "
        f"({decoded.type_reason.rstrip('.')}); set the image type to override, or force",
        detected_type=decoded.image_type,
        expected=sorted(accepted),
    )


def check_model_input(decoded: DecodedImage, entry: ModelEntry) -> None:
    """Refuse (``INVALID_IMAGE``) an image smaller than the model's minimum side, or holding values that
    are not finite numbers, whatever its type (``force`` does not apply)."""
    min_side = int(entry.spec.get("input", {}).get("min_side", MIN_IMAGE_SIDE))
    if min(decoded.rows, decoded.columns) < min_side:
        raise MedVisionError(
            ErrorCode.INVALID_IMAGE,
            f"{entry.id} needs images of at least {min_side}x{min_side} px; this one is "
            f"{decoded.columns}x{decoded.rows}", reason="too_small", min_side=min_side,
            rows=decoded.rows, columns=decoded.columns)
    values = decoded.pixels if decoded.is_color else decoded.raw
    if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
        raise MedVisionError(ErrorCode.INVALID_IMAGE, f"{entry.id} cannot read this image: its pixel values are "
                             "not finite numbers (NaN or infinity)", reason="non_finite_pixels")


def classify(
    decoded: DecodedImage,
    registry: ModelRegistry,
    *,
    threshold: float = 0.5,
    force: bool = False,
) -> dict[str, Any]:
    """Classify one chest radiograph; returns findings sorted by probability.

    With trained weights that carry torchxrayvision operating points, ``probability``
    is the op-normalised output (0.5 = the label's operating point) and
    ``raw_probability`` the sigmoid; untrained packs have no operating points.
    """
    if not 0.0 < threshold < 1.0:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "classification_threshold must be in (0, 1)")
    entry: ModelEntry = registry.require("classify")
    check_image_type(decoded, CXR_TYPES, entry.id, force)
    check_model_input(decoded, entry)
    model = registry.onnx(entry)
    resolution = int(entry.spec.get("input", {}).get("resolution", 224))

    started = time.perf_counter()
    tensor = classifier_tensor(decoded, resolution)
    prepared = time.perf_counter()
    logits = model.run({model.input_names[0]: tensor})[0][0]
    inferred = time.perf_counter()

    raw = _sigmoid(logits)
    op_threshs = entry.spec.get("thresholds")
    calibrated = op_norm(raw, op_threshs) if op_threshs else raw
    findings = []
    for label, probability, raw_probability in zip(entry.labels, calibrated, raw, strict=True):
        if not label:
            continue
        findings.append(
            {
                "label": label,
                "probability": round(float(probability), 6),
                "raw_probability": round(float(raw_probability), 6),
                "threshold": threshold,
                "positive": bool(probability >= threshold),
            }
        )
    findings.sort(key=lambda f: f["probability"], reverse=True)
    return {
        "status": "ok",
        "model": entry.describe() | runtime_info(model),
        "model_trained": entry.trained,
        "threshold": threshold,
        "calibration": "op_norm" if op_threshs else "sigmoid",
        "findings": findings,
        "positive": [f["label"] for f in findings if f["positive"]],
        "forced": bool(force and decoded.image_type not in CXR_TYPES),
        "timings_ms": {
            "preprocess": round((prepared - started) * 1000, 2),
            "inference": round((inferred - prepared) * 1000, 2),
        },
    }
