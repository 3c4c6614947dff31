"""Facts about a selected region: pixel statistics, contralateral comparison, description.

The Engine's ``analyze_selected_region`` composes these with the models (segmentation,
classification, similar cases); everything here is deterministic arithmetic on the
decoded pixels and masks, so it holds for untrained models too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.imaging import DecodedImage

ACTIONS = ("describe", "segment", "measure", "classify", "rag_search", "compare")
#: |standardised mean difference| above which a region and its mirror image differ.
ASYMMETRY_SMD = 0.5


def _summary(values: np.ndarray) -> dict[str, float]:
    values = values.astype(np.float64, copy=False)
    p5, p50, p95 = np.percentile(values, (5, 50, 95))
    return {
        "mean": round(float(values.mean()), 3), "std": round(float(values.std()), 3),
        "min": round(float(values.min()), 3), "max": round(float(values.max()), 3),
        "p5": round(float(p5), 3), "median": round(float(p50), 3), "p95": round(float(p95), 3),
    }


def modality_unit(decoded: DecodedImage) -> str:
    """"HU" for CT modality values, else a neutral name for the rescaled values."""
    if decoded.modality == "CT" or decoded.metadata.get("RescaleType") == "HU":
        return "HU"
    return "modality value"


def pixel_statistics(decoded: DecodedImage, mask: np.ndarray) -> dict[str, Any]:
    """Stored values and modality values (HU where rescale applies) inside ``mask``."""
    if decoded.is_color:
        gray = decoded.pixels.mean(axis=2)
        return {"count": int(mask.sum()), "display_gray": _summary(gray[mask])}
    stats = {"count": int(mask.sum()), "stored": _summary(decoded.raw[mask])}
    if not np.array_equal(decoded.pixels[mask], decoded.raw[mask]):
        stats["modality"] = _summary(decoded.pixels[mask]) | {"unit": modality_unit(decoded)}
    stats["display"] = _summary(decoded.display()[mask])
    return stats


def compare_contralateral(decoded: DecodedImage, mask: np.ndarray, mirrored: np.ndarray,
                          midline_x: float) -> dict[str, Any]:
    """Compare a region with its mirror image across the midline (asymmetry).

    Uses the display rendering (MONOCHROME1 corrected, so "brighter" means denser on
    any film). The standardised mean difference is (mean_region - mean_mirror) /
    pooled std; above :data:`ASYMMETRY_SMD` the sides are called asymmetric.
    """
    overlap = float((mask & mirrored).sum()) / max(1, int(mask.sum()))
    if overlap > 0.5:
        return {"status": "unavailable", "reason": "the region straddles the midline: no contralateral side",
                "midline_x": round(midline_x, 1)}
    if not mirrored.any():
        return {"status": "unavailable", "reason": "the mirrored region falls outside the image",
                "midline_x": round(midline_x, 1)}
    display = decoded.display()
    if display.ndim == 3:
        display = display.mean(axis=2)
    region_values = display[mask].astype(np.float64)
    mirror_values = display[mirrored].astype(np.float64)
    pooled = np.sqrt((region_values.var() + mirror_values.var()) / 2) or 1.0
    smd = (region_values.mean() - mirror_values.mean()) / pooled
    return {
        "status": "ok",
        "midline_x": round(midline_x, 1),
        "region_mean": round(float(region_values.mean()), 2),
        "contralateral_mean": round(float(mirror_values.mean()), 2),
        "standardised_difference": round(float(smd), 3),
        "asymmetric": bool(abs(smd) > ASYMMETRY_SMD),
        "denser_side": None if abs(smd) <= ASYMMETRY_SMD else ("region" if smd > 0 else "contralateral"),
        "method": "display intensity, mirror across the midline, standardised mean difference",
    }


def describe_region(facts: dict[str, Any]) -> str:
    """One or two plain sentences from the measured facts (no model, nothing invented)."""
    parts = []
    anatomy = facts.get("anatomy") or {}
    location = anatomy.get("primary")
    size = facts.get("area")
    parts.append(f"Selected {facts['region_type']} region" + (f" in the {location}" if location else ""))
    if location and anatomy.get("method") == "lung_fields_classical":
        parts[-1] += " (lung fields found by image processing, no trained model)"
    if size and size.get("value") is not None:
        parts[-1] += f", {size['value']:.1f} {size['unit']}"
    parts[-1] += "."
    comparison = facts.get("comparison") or {}
    if comparison.get("status") == "ok":
        if comparison["asymmetric"]:
            side = "denser" if comparison["denser_side"] == "region" else "less dense"
            parts.append(f"It appears {side} than the mirrored contralateral region "
                         f"(standardised difference {comparison['standardised_difference']:+.2f}).")
        else:
            parts.append("Its density is similar to the mirrored contralateral region.")
    top = facts.get("top_finding")
    if top:
        parts.append(f"Classifier on the crop: highest {top['label']} ({top['probability']:.2f}).")
    return " ".join(parts)


def confidence_summary(sections: dict[str, dict | None]) -> dict[str, Any]:
    """Per-action confidence and whether it came from a trained model."""
    summary: dict[str, Any] = {}
    for name, section in sections.items():
        if not section or section.get("status") not in (None, "ok"):
            continue
        entry: dict[str, Any] = {"model_trained": section.get("model_trained")}
        if name == "classification" and section.get("findings"):
            entry["confidence"] = section["findings"][0]["probability"]
            entry["basis"] = f"top label {section['findings'][0]['label']}"
        elif name == "segmentation" and section.get("masks"):
            entry["confidence"] = section["masks"][section.get("best", 0)]["score"]
            entry["basis"] = f"{section.get('backend')} mask score"
        elif name == "similar_cases" and section.get("results"):
            entry["confidence"] = section["results"][0]["similarity"]
            entry["basis"] = "top case similarity"
        else:
            entry["confidence"] = None
        summary[name] = entry
    untrained = [k for k, v in summary.items() if v.get("model_trained") is False]
    summary["overall"] = {
        "reliable": not untrained,
        "note": (f"untrained development models in: {', '.join(untrained)}; outputs are not meaningful"
                 if untrained else "measurements are exact; model outputs carry their own confidence"),
    }
    return summary
