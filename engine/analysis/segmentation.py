"""Chest organ segmentation (ChestX-Det PSPNet in ONNX), organ areas and the cardiothoracic ratio.

The model sees torchxrayvision's tensor: the centred square crop of the image resized to
the manifest's resolution (512). Each label's sigmoid map is resized back to the crop
(bilinear, pixel centres aligned) and thresholded there, and the crop is placed in an
image-sized mask (False outside the crop), so every mask has the image's size, as the
design's mask contract requires.

:func:`segment_organs` returns JSON-ready results plus the boolean masks under the
private key ``"_masks"`` (``{label: ndarray}``) for other engine code (region analysis,
DICOM SEG export, overlays). Callers strip it before persisting or sending the result
(:func:`without_masks`); the persisted form of a mask is ``mask_rle``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from scipy import ndimage

from engine.analysis.classify import CXR_TYPES, check_image_type, check_model_input
from engine.analysis.preprocess import crop_box, xrv_tensor
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.masks import encode_rle, mask_bbox
from engine.inference.openvino_runtime import runtime_info

if TYPE_CHECKING:
    from engine.imaging import DecodedImage
    from engine.inference.registry import ModelRegistry

#: Key of the in-memory masks in a :func:`segment_organs` result (never persisted).
MASKS_KEY = "_masks"
#: Labels the cardiothoracic ratio is measured from (ChestX-Det names).
HEART, RIGHT_LUNG, LEFT_LUNG = "Heart", "Right Lung", "Left Lung"
#: Danzer's cut-off on PA chest films.
CTR_THRESHOLD = 0.5
FRONTAL_VIEWS = frozenset({"PA", "AP"})
DETECTOR_SPACING_NOTE = "ImagerPixelSpacing is at the detector, not calibrated at the patient"


def without_masks(result: dict[str, Any]) -> dict[str, Any]:
    """The result without its private in-memory keys (``_masks``): what gets persisted."""
    return {key: value for key, value in result.items() if not key.startswith("_")}


def spacing_info(decoded: DecodedImage) -> dict[str, Any]:
    """Pixel spacing of the image for area and width measurements, with how far to trust it."""
    if decoded.pixel_spacing_mm is None:
        return {"pixel_spacing_mm": None, "source": "none", "calibrated": False,
                "note": "no pixel spacing in the file: sizes are in pixels only"}
    info: dict[str, Any] = {"pixel_spacing_mm": [float(v) for v in decoded.pixel_spacing_mm],
                            "source": decoded.spacing_source,
                            "calibrated": decoded.spacing_source == "PixelSpacing"}
    if decoded.spacing_source == "ImagerPixelSpacing":
        info["note"] = DETECTOR_SPACING_NOTE
    return info


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask`` (stray islands would widen the extents)."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask.astype(bool, copy=False)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(sizes.argmax())


def _row_extents(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: whether it has pixels, its first and its last column (undefined where empty)."""
    present = mask.any(axis=1)
    first = mask.argmax(axis=1)
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    return present, first, last


def cardiothoracic_ratio(
    heart: np.ndarray,
    right_lung: np.ndarray,
    left_lung: np.ndarray,
    *,
    pixel_spacing_mm: tuple[float, float] | list[float] | None = None,
    view_position: str | None = None,
) -> dict[str, Any]:
    """Cardiothoracic ratio from heart and lung masks of a frontal chest film.

    Cardiac width: the transverse cardiac diameter, leftmost to rightmost heart pixel
    (Danzer's MRD + MLD: the two borders may lie on different rows, both are reported).
    Thoracic width: per row holding both lungs, outer edge of one lung to the outer edge
    of the other; the widest row is used. Widths count pixels inclusively; each mask is
    reduced to its largest connected component first. The ratio is > 0.5 ->
    "cardiomegaly suspected"; AP films magnify the heart and overestimate it.

    Returns ``{"status": "unavailable", "reason"}`` for empty masks, lungs without a
    common row, or a lateral view.
    """
    view = (view_position or "").strip().upper() or None
    if view is not None and view not in FRONTAL_VIEWS:
        return {"status": "unavailable", "reason": f"the cardiothoracic ratio needs a frontal view, not {view}",
                "view_position": view}
    masks = {HEART: heart, RIGHT_LUNG: right_lung, LEFT_LUNG: left_lung}
    empty = [name for name, mask in masks.items() if not mask.any()]
    if empty:
        return {"status": "unavailable", "reason": f"empty mask: {', '.join(empty)}", "view_position": view}
    heart, right_lung, left_lung = (_largest_component(mask) for mask in masks.values())

    columns = np.flatnonzero(heart.any(axis=0))
    left_x, right_x = int(columns[0]), int(columns[-1])
    cardiac_px = right_x - left_x + 1
    border_rows = [int(np.flatnonzero(heart[:, x]).mean().round()) for x in (left_x, right_x)]

    right_present, right_first, right_last = _row_extents(right_lung)
    left_present, left_first, left_last = _row_extents(left_lung)
    both = right_present & left_present
    if not both.any():
        return {"status": "unavailable", "reason": "the lung masks share no row", "view_position": view}
    outer_first = np.minimum(right_first, left_first)
    outer_last = np.maximum(right_last, left_last)
    widths = np.where(both, outer_last - outer_first + 1, 0)
    thorax_row = int(widths.argmax())
    thoracic_px = int(widths[thorax_row])
    ratio = cardiac_px / thoracic_px

    column_mm = float(pixel_spacing_mm[1]) if pixel_spacing_mm else None
    if view == "AP":
        note = "AP view: the projection magnifies the heart, so the ratio overestimates (0.5 is a PA cut-off)"
    elif view == "PA":
        note = "PA view: the 0.5 cut-off applies"
    else:
        note = "view position not recorded: the 0.5 cut-off applies to PA views; AP views overestimate"
    return {
        "status": "ok",
        "ratio": round(ratio, 4),
        "threshold": CTR_THRESHOLD,
        "positive": bool(ratio > CTR_THRESHOLD),
        "finding": "cardiomegaly suspected" if ratio > CTR_THRESHOLD else None,
        "cardiac_width_px": cardiac_px,
        "thoracic_width_px": thoracic_px,
        "cardiac_width_mm": round(cardiac_px * column_mm, 1) if column_mm else None,
        "thoracic_width_mm": round(thoracic_px * column_mm, 1) if column_mm else None,
        "cardiac_columns": [left_x, right_x],
        "cardiac_rows": border_rows,
        "thoracic_row": thorax_row,
        "thoracic_columns": [int(outer_first[thorax_row]), int(outer_last[thorax_row])],
        "view_position": view,
        "note": note,
    }


def organ_measurements(
    label: str,
    mask: np.ndarray,
    *,
    pixel_spacing_mm: tuple[float, float] | list[float] | None,
    mean_probability: float | None = None,
) -> dict[str, Any]:
    """The JSON record of one organ mask: RLE, area (pixels, cm² when spacing is known), bbox."""
    area_px = int(np.count_nonzero(mask))
    area_cm2 = None
    if pixel_spacing_mm:  # (row, column) mm; 100 mm² per cm²
        area_cm2 = round(area_px * float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) / 100.0, 3)
    return {
        "label": label,
        "mask_rle": encode_rle(mask),
        "area_px": area_px,
        "area_cm2": area_cm2,
        "bbox": mask_bbox(mask),
        "pixel_fraction": round(area_px / mask.size, 6),
        "mean_probability": None if mean_probability is None else round(mean_probability, 4),
    }


def _resolve_organs(requested: list[str] | None, labels: list[str]) -> list[str]:
    """Requested organ names mapped to the model's labels (case-insensitive), in label order."""
    if requested is None:
        return list(labels)
    if isinstance(requested, str) or not requested:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "organs must be a non-empty list of organ names",
                             valid=list(labels))
    by_key = {label.casefold(): label for label in labels}
    unknown = [name for name in requested if not isinstance(name, str) or name.casefold() not in by_key]
    if unknown:
        raise MedVisionError(
            ErrorCode.INVALID_ARGUMENT,
            f"unknown organ(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(labels)}",
            unknown=[str(name) for name in unknown], valid=list(labels),
        )
    chosen = {by_key[name.casefold()] for name in requested}
    return [label for label in labels if label in chosen]


def _to_crop(probability: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square float32 map to ``size`` x ``size`` (pixel centres aligned)."""
    if probability.shape[0] == size:
        return probability
    resized = Image.fromarray(np.ascontiguousarray(probability, dtype=np.float32)).resize(
        (size, size), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized)


def segment_organs(
    decoded: DecodedImage,
    registry: ModelRegistry,
    *,
    organs: list[str] | None = None,
    threshold: float = 0.5,
    force: bool = False,
) -> dict[str, Any]:
    """Segment chest organs on a radiograph; masks at image size, areas and the CTR.

    Parameters
    ----------
    decoded:
        The image; it must be a CXR unless ``force`` (``INVALID_IMAGE_TYPE`` otherwise).
    registry:
        Serves the pack's ``organ_seg`` model; labels and resolution come from its entry.
    organs:
        Labels to return (case-insensitive; None = all). Unknown names are
        ``INVALID_ARGUMENT``, listing the valid ones. The cardiothoracic ratio is always
        measured from the heart and lung masks.
    threshold:
        Sigmoid probability a pixel must exceed, in (0, 1).
    force:
        Run on images not detected as CXR.

    Returns
    -------
    dict
        ``status``, ``model``, ``model_trained``, ``threshold``, ``forced``, ``spacing``,
        ``organs`` (one record per label: ``mask_rle``, ``area_px``, ``area_cm2``,
        ``bbox``, ``pixel_fraction``, ``mean_probability``), ``ctr``, ``timings_ms``, and
        ``_masks`` (``{label: bool ndarray}`` of the image's size), which callers must
        strip before persisting (:func:`without_masks`).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "segmentation threshold must be in (0, 1)",
                             threshold=repr(threshold))
    entry = registry.require("organ_seg")
    check_image_type(decoded, CXR_TYPES, entry.id, force)
    check_model_input(decoded, entry)
    labels = entry.labels
    selected = _resolve_organs(organs, labels)
    measured = set(selected) | ({HEART, RIGHT_LUNG, LEFT_LUNG} & set(labels))
    model = registry.onnx(entry)
    spec = entry.spec.get("input", {})
    resolution = int(spec.get("resolution", 512))

    started = time.perf_counter()
    tensor = xrv_tensor(decoded, resolution)
    prepared = time.perf_counter()
    logits = model.run({spec.get("name", model.input_names[0]): tensor})[0][0]
    inferred = time.perf_counter()
    if logits.shape != (len(labels), resolution, resolution):
        raise MedVisionError(ErrorCode.INFERENCE_ERROR,
                             f"{entry.id} returned shape {logits.shape}, expected {len(labels)} maps")

    rows_slice, columns_slice = crop_box(decoded.rows, decoded.columns)
    crop_size = rows_slice.stop - rows_slice.start
    spacing = spacing_info(decoded)

    def label_mask(label: str) -> tuple[np.ndarray, dict[str, Any] | None]:
        with np.errstate(over="ignore"):  # exp overflows to inf for confident negatives: p = 0
            probability = 1.0 / (1.0 + np.exp(-logits[labels.index(label)].astype(np.float32)))
        crop_probability = _to_crop(probability, crop_size)
        crop_mask = crop_probability > threshold
        mask = np.zeros((decoded.rows, decoded.columns), dtype=bool)
        mask[rows_slice, columns_slice] = crop_mask
        if label not in selected:
            return mask, None
        mean_probability = float(crop_probability[crop_mask].mean()) if crop_mask.any() else None
        return mask, organ_measurements(label, mask, pixel_spacing_mm=spacing["pixel_spacing_mm"],
                                        mean_probability=mean_probability)

    # Labels are independent and their resize, threshold and RLE release the GIL for most of
    # their time: the session's threads (idle once inference is done) share them.
    wanted = [label for label in labels if label in measured]
    with ThreadPoolExecutor(max_workers=max(1, min(registry.settings.threads, len(wanted)))) as pool:
        outputs = list(pool.map(label_mask, wanted))
    masks = {label: mask for label, (mask, _) in zip(wanted, outputs, strict=True)}
    records = [record for _, record in outputs if record is not None]
    if all(name in masks for name in (HEART, RIGHT_LUNG, LEFT_LUNG)):
        ctr = cardiothoracic_ratio(masks[HEART], masks[RIGHT_LUNG], masks[LEFT_LUNG],
                                   pixel_spacing_mm=spacing["pixel_spacing_mm"],
                                   view_position=decoded.metadata.get("ViewPosition"))
    else:
        ctr = {"status": "unavailable", "reason": "this model has no heart and lung labels"}
    finished = time.perf_counter()
    return {
        "status": "ok",
        "model": entry.describe() | runtime_info(model),
        "model_trained": entry.trained,
        "threshold": threshold,
        "forced": bool(force and decoded.image_type not in CXR_TYPES),
        "crop": {"x": [columns_slice.start, columns_slice.stop - 1], "y": [rows_slice.start, rows_slice.stop - 1]},
        "spacing": spacing,
        "organs": records,
        "ctr": ctr,
        "timings_ms": {
            "preprocess": round((prepared - started) * 1000, 2),
            "inference": round((inferred - prepared) * 1000, 2),
            "postprocess": round((finished - inferred) * 1000, 2),
        },
        MASKS_KEY: {label: masks[label] for label in selected},
    }
