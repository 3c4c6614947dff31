"""Image quality checks: inverted, low contrast, clipped exposure, rotation, non-frontal view.

:func:`check_quality` returns ``{"warnings": [...], "metrics": {...}}``; each warning is
``{"code", "message", "value", "threshold", "method"}`` with ``method`` naming the
evidence (so a reader can weigh a heuristic against a header tag). Codes:

- ``inverted``: grey levels run the wrong way. On a chest film (image type CXR, or
  when organ masks are given) the lungs hold air and must display darker than the
  mediastinum: compared on the organ masks when present, else on a fixed profile
  (lateral strips where the lungs lie on a frontal film against the central strip
  over the spine). Other grayscale images whose display is mostly near white are
  flagged too ("histogram"): a MONOCHROME1/2 mix-up or a wrong window. (On a chest
  film the anatomical comparison wins: a clipped, overexposed-looking film is not
  called inverted when its lungs are darker than its mediastinum.)
- ``low_contrast``: the displayed image uses a narrow band of grey levels.
- ``clipped_exposure``: a large share of the image sits exactly at the lowest or
  highest stored value (saturated detector, or clipped processing); projection
  radiographs only, collimator shutters and padding bands left out.
- ``rotation``: the medial clavicle ends are not equidistant from the spine (organ
  masks needed): see :func:`rotation_metrics`.
- ``non_frontal``: ViewPosition is lateral (LL, RL, LAT, LATERAL), or, without the
  tag, the two lung masks overlap horizontally as on a lateral film. No pixel-only
  heuristic is used: image mirror symmetry did not separate views on the real
  samples (RG1 chest PA: 0.83 correlation with its mirror; RG3 ankle AP: 0.79), and
  aspect ratio does not either, so without the tag or masks the view is reported as
  unknown in ``metrics["view"]``.

Chest-only checks (profile inversion, view, rotation) run when the image type is
CXR or organ masks are given. Every threshold is a named constant below.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.analysis.anatomy import boolean_masks

if TYPE_CHECKING:
    from engine.imaging import DecodedImage

#: Display statistics are computed on a strided sample of about this many pixels.
SAMPLE_PIXELS = 262_144
#: Percentiles bounding the displayed dynamic range (robust to a few extreme pixels).
RANGE_PERCENTILES = (1.0, 99.0)
#: Display p1..p99 spread below this many grey levels (of 255, i.e. a quarter of the
#: screen's range) is a flat, washed-out image. RG1 (a good CR chest) spreads over 176.
LOW_CONTRAST_RANGE = 64.0
#: Display levels at or above this count as "near white" for the histogram check.
WHITE_LEVEL = 230
#: More than this share of near-white display pixels: inverted or wrongly windowed.
#: A well-exposed chest film keeps far less (RG1: 9 %) even with bright collimation.
WHITE_DOMINANT_FRACTION = 0.6
#: Lung fields brighter than the mediastinum by more than this many grey levels: the
#: film is inverted (RG1 displays its lungs about 50 levels darker than the centre).
INVERTED_MARGIN = 10.0
#: Profile fallback (frontal chest): rows between these fractions of the height, lung
#: strips and central strip at these fractions of the width.
PROFILE_ROWS = (0.30, 0.70)
PROFILE_LUNG_STRIPS = ((0.20, 0.35), (0.65, 0.80))
PROFILE_CENTRAL_STRIP = (0.45, 0.55)
#: Rows and columns with at least this share of pixels at the extreme value are
#: collimator shutters or padding (straight, axis-aligned bands), not clipped anatomy,
#: and are left out of the clipping count (RG3, a real CR ankle, has full-height
#: unexposed side bands at stored value 0).
SHUTTER_LINE_FRACTION = 0.95
#: More than this share of the remaining pixels exactly at the stored minimum or
#: maximum: clipped exposure (normal images hold a handful of pixels at each extreme).
CLIPPED_FRACTION = 0.05
#: Rotation index |d_right - d_left| / (d_right + d_left) of the medial clavicle ends'
#: distances to the spine above this: rotated. 0.2 means one distance is 1.5 times the
#: other, a clear asymmetry beyond segmentation noise; the clinical rule ("spinous
#: process equidistant from the clavicle heads") has no agreed number.
ROTATION_INDEX_MAX = 0.2
#: The medial end of a clavicle: this percentile of its pixels' x towards the midline
#: (the innermost pixels, robust to a stray pixel of segmentation noise).
MEDIAL_END_PERCENTILE = 98.0
#: Spine pixels within this fraction of the image height of the clavicle heads' rows
#: give the local midline (the spine may be tilted or curved).
SPINE_BAND_FRACTION = 0.10
#: ViewPosition values of a lateral projection (PS3.3 C.8.11.5.1.1 and common variants).
#: Decubitus (RLD/LLD) films are frontal projections and are not flagged.
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLO", "RLO"})
FRONTAL_VIEWS = frozenset({"PA", "AP"})
#: The two lung masks overlapping horizontally by more than this share of the narrower
#: one: superimposed lungs, as on a lateral film (frontal lungs sit side by side).
LUNG_OVERLAP_MAX = 0.5

CHEST_TYPES = frozenset({"CXR"})
#: Clipped exposure is a projection-radiography notion: CT/MR values are not exposure
#: and hold padding or air at their minimum by design. Assessed for these image types
#: or these DICOM modalities (a PNG/JPEG classified CXR/KUB counts as radiography).
RADIOGRAPHY_TYPES = frozenset({"CXR", "KUB"})
RADIOGRAPHY_MODALITIES = frozenset({"CR", "DX", "RF", "MG", "PX", "IO", "XA"})


def check_quality(decoded: DecodedImage, organ_masks: dict[str, Any] | None = None, *,
                  image_type: str | None = None) -> dict[str, Any]:
    """Run the quality checks on a decoded image.

    Parameters
    ----------
    decoded:
        The decoded frame (its display rendering and stored values are read).
    organ_masks:
        Optional ``{PSPNet label: bool mask}`` at the image size: enables the
        mask-based inversion, rotation and lung-layout checks.
    image_type:
        Overrides ``decoded.image_type`` (the session's type may have been set by the user).

    Returns
    -------
    dict
        ``{"warnings": [{"code", "message", "value", "threshold", "method"}],
        "metrics": {...}}``.
    """
    image_type = image_type or decoded.image_type
    masks = boolean_masks(organ_masks, (decoded.rows, decoded.columns)) if organ_masks else {}
    chest = image_type in CHEST_TYPES or bool(masks)
    display = decoded.display()
    gray = display.mean(axis=2) if display.ndim == 3 else display
    sample = _strided(gray)
    warnings: list[dict[str, Any]] = []
    low, high = (float(v) for v in np.percentile(sample, RANGE_PERCENTILES))
    white = float(np.count_nonzero(sample >= WHITE_LEVEL)) / sample.size
    metrics: dict[str, Any] = {
        "image_type": image_type, "display_mean": round(float(sample.mean()), 2),
        "display_p1": low, "display_p99": high, "dynamic_range": high - low,
        "white_fraction": round(white, 4),
    }

    if high - low < LOW_CONTRAST_RANGE:
        warnings.append(_warning(
            "low_contrast", f"narrow displayed dynamic range ({high - low:.0f} of 255 grey levels)",
            high - low, LOW_CONTRAST_RANGE, "display_percentiles"))

    radiography = image_type in RADIOGRAPHY_TYPES or decoded.modality in RADIOGRAPHY_MODALITIES
    if radiography and not decoded.is_color:
        warnings += _clipping(decoded, metrics)

    if chest:
        inverted = _inversion(gray, masks, metrics)
        if inverted is not None:
            warnings.append(inverted)
    elif white > WHITE_DOMINANT_FRACTION and not decoded.is_color:
        warnings.append(_warning(
            "inverted", f"{white:.0%} of the displayed image is near white: inverted grey "
            "levels or a wrong window", white, WHITE_DOMINANT_FRACTION, "histogram"))

    if chest:
        warnings += _view(decoded, masks, metrics)
        rotation = rotation_metrics(masks) if masks else None
        metrics["rotation"] = rotation
        if rotation is not None and rotation["index"] > ROTATION_INDEX_MAX:
            nearer = rotation["nearer_side"]
            warnings.append(_warning(
                "rotation", f"the medial clavicle ends are not equidistant from the spine (the "
                f"{nearer} clavicle head is nearer; index {rotation['index']:.2f}): the patient may be rotated",
                rotation["index"], ROTATION_INDEX_MAX, "clavicle_spine_masks"))
    return {"warnings": warnings, "metrics": metrics}


def _warning(code: str, message: str, value: float, threshold: float, method: str) -> dict[str, Any]:
    return {"code": code, "message": message, "value": round(float(value), 4),
            "threshold": threshold, "method": method}


def _strided(image: np.ndarray) -> np.ndarray:
    step = max(1, int(math.sqrt(image.size / SAMPLE_PIXELS)))
    return image[::step, ::step]


def _clipping(decoded: DecodedImage, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Share of pixels at the stored minimum / maximum, shutters and padding excluded."""
    raw = decoded.raw
    stored_min, stored_max = raw.min(), raw.max()
    metrics.update(stored_min=float(stored_min), stored_max=float(stored_max),
                   saturated_at_bit_depth=bool(float(stored_max) >= decoded.max_value))
    if stored_max <= stored_min:
        return [_warning("clipped_exposure", "the image holds a single stored value", 1.0,
                         CLIPPED_FRACTION, "stored_values")]
    fractions = {}
    for end, value in (("lowest", stored_min), ("highest", stored_max)):
        at_value = raw == value
        keep_rows = at_value.mean(axis=1) < SHUTTER_LINE_FRACTION
        keep_columns = at_value.mean(axis=0) < SHUTTER_LINE_FRACTION
        inner = at_value[keep_rows][:, keep_columns]
        fractions[end] = float(inner.mean()) if inner.size else 0.0
    metrics.update(clipped_low_fraction=round(fractions["lowest"], 4),
                   clipped_high_fraction=round(fractions["highest"], 4))
    end = max(fractions, key=fractions.get)
    worst = fractions[end]
    if worst <= CLIPPED_FRACTION:
        return []
    return [_warning("clipped_exposure", f"{worst:.0%} of the image sits at the {end} stored "
                     "value: clipped or saturated exposure", worst, CLIPPED_FRACTION, "stored_values")]


def _inversion(gray: np.ndarray, masks: dict[str, np.ndarray], metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Lungs brighter than the mediastinum: from the masks, else from the frontal profile."""
    lungs = [masks[k] for k in ("Right Lung", "Left Lung") if k in masks]
    central = [masks[k] for k in ("Mediastinum", "Heart", "Spine") if k in masks]
    if lungs and central:
        lung_pixels, central_pixels = gray[np.logical_or.reduce(lungs)], gray[np.logical_or.reduce(central)]
        if not lung_pixels.size or not central_pixels.size:  # empty masks: nothing to compare
            metrics["inversion_method"] = "not_assessed"
            return None
        lung_mean, central_mean = float(lung_pixels.mean()), float(central_pixels.mean())
        method = "organ_masks"
    else:
        rows, columns = gray.shape
        band = gray[int(rows * PROFILE_ROWS[0]):int(rows * PROFILE_ROWS[1])]
        strips = [band[:, int(columns * a):int(columns * b)] for a, b in PROFILE_LUNG_STRIPS]
        a, b = PROFILE_CENTRAL_STRIP
        centre = band[:, int(columns * a):int(columns * b)]
        if not centre.size or not all(s.size for s in strips):  # too small an image for the profile
            metrics["inversion_method"] = "not_assessed"
            return None
        lung_mean = float(np.mean([s.mean() for s in strips]))
        central_mean = float(centre.mean())
        method = "central_profile"
    margin = lung_mean - central_mean
    if not math.isfinite(margin):
        metrics["inversion_method"] = "not_assessed"
        return None
    metrics.update(lung_mean=round(lung_mean, 2), mediastinum_mean=round(central_mean, 2),
                   lung_minus_mediastinum=round(margin, 2), inversion_method=method)
    if margin <= INVERTED_MARGIN:
        return None
    return _warning("inverted", f"the lung fields display brighter than the mediastinum (by "
                    f"{margin:.0f} grey levels): the image looks inverted", margin, INVERTED_MARGIN, method)


def _view(decoded: DecodedImage, masks: dict[str, np.ndarray], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Non-frontal view from ViewPosition, else from the lung masks' layout."""
    view = str(decoded.metadata.get("ViewPosition") or "").strip().upper()
    if view in LATERAL_VIEWS:
        metrics["view"] = {"view_position": view, "frontal": False, "method": "ViewPosition"}
        return [_warning("non_frontal", f"ViewPosition is {view}: not a frontal view; chest "
                         "analyses assume a PA/AP film", 1.0, 1.0, "ViewPosition")]
    if view in FRONTAL_VIEWS:
        metrics["view"] = {"view_position": view, "frontal": True, "method": "ViewPosition"}
        return []
    right, left = masks.get("Right Lung"), masks.get("Left Lung")
    if right is None or left is None or not (right.any() and left.any()):
        metrics["view"] = {"view_position": view or None, "frontal": None, "method": "unknown"}
        return []
    r_cols, l_cols = np.flatnonzero(right.any(axis=0)), np.flatnonzero(left.any(axis=0))
    overlap = min(r_cols[-1], l_cols[-1]) - max(r_cols[0], l_cols[0]) + 1
    narrower = min(r_cols[-1] - r_cols[0] + 1, l_cols[-1] - l_cols[0] + 1)
    share = max(0.0, float(overlap) / float(narrower))
    frontal = share <= LUNG_OVERLAP_MAX
    metrics["view"] = {"view_position": view or None, "frontal": frontal, "method": "lung_layout",
                       "lung_horizontal_overlap": round(share, 4)}
    if frontal:
        return []
    return [_warning("non_frontal", f"the lung masks overlap horizontally ({share:.0%} of the narrower "
                     "lung), as on a lateral film", share, LUNG_OVERLAP_MAX, "lung_layout")]


def rotation_metrics(organ_masks: dict[str, Any] | None) -> dict[str, Any] | None:
    """Clavicle-head symmetry about the spine, or None without the needed masks.

    The medial end of the right clavicle (image left) is the
    :data:`MEDIAL_END_PERCENTILE` percentile of its pixels' x (its innermost part);
    the left clavicle's the mirror percentile. The midline is the spine mask's
    centre in a band of :data:`SPINE_BAND_FRACTION` of the height around the clavicle
    heads' rows (the whole spine if the band is empty); PSPNet's spine covers the
    vertebral column, a stand-in for the spinous processes of the clinical rule.
    ``index = |d_right - d_left| / (d_right + d_left)``: 0 symmetric, 1 one head on
    the midline. Clavicle heads on the same side of the spine give None (masks
    implausible).
    """
    if not organ_masks:
        return None
    shapes = {m.shape for m in organ_masks.values() if isinstance(m, np.ndarray)}
    if len(shapes) != 1:
        return None
    masks = boolean_masks(organ_masks, next(iter(shapes)))
    spine, right, left = (masks.get(k) for k in ("Spine", "Right Clavicle", "Left Clavicle"))
    if spine is None or right is None or left is None or not (spine.any() and right.any() and left.any()):
        return None
    right_y, right_x = np.nonzero(right)
    left_y, left_x = np.nonzero(left)
    right_end = float(np.percentile(right_x, MEDIAL_END_PERCENTILE))
    left_end = float(np.percentile(left_x, 100.0 - MEDIAL_END_PERCENTILE))
    head_rows = np.concatenate([right_y[right_x >= right_end], left_y[left_x <= left_end]])
    centre_row = float(np.median(head_rows))
    half_band = max(1, int(spine.shape[0] * SPINE_BAND_FRACTION))
    band = spine[max(0, int(centre_row) - half_band):int(centre_row) + half_band + 1]
    spine_x = np.nonzero(band)[1] if band.any() else np.nonzero(spine)[1]
    midline = float(spine_x.mean())
    d_right, d_left = midline - right_end, left_end - midline
    if d_right < 0 or d_left < 0:
        return None
    total = d_right + d_left
    index = 0.0 if total == 0 else abs(d_right - d_left) / total
    return {"index": round(index, 4), "right_distance_px": round(d_right, 2),
            "left_distance_px": round(d_left, 2), "midline_x": round(midline, 2),
            "nearer_side": "right" if d_right < d_left else "left" if d_left < d_right else None}


def rotation_index(organ_masks: dict[str, Any] | None) -> float | None:
    """The rotation index of :func:`rotation_metrics` alone (None without the masks)."""
    metrics = rotation_metrics(organ_masks)
    return None if metrics is None else metrics["index"]
