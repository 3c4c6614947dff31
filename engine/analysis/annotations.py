"""Annotation rules, pure: field checks, coordinate checks against the image, a measurement's value.

Coordinates are validated against the image row's ``rows``/``columns``
(:func:`engine.imaging.regions.annotation_coordinates`) and kept in pixels; a
measurement gets its ``"result"`` from the image's recorded pixel spacing, so every
front-end shows the same number. The store persists only values checked here.
"""

from __future__ import annotations

import json
from typing import Any

from engine.analysis.volume.annotation import VOLUME_ROI, check_anchor, validate_volume_roi
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.regions import annotation_coordinates

ANNOTATION_SOURCES = ("ai", "user", "system")
#: Fields an update may name (never the image).
ANNOTATION_UPDATABLE = ("type", "coordinates", "label", "confidence", "source", "notes", "layer",
                        "style", "analysis_id")
#: The non-geometric fields :func:`validate_fields` checks.
ANNOTATION_FIELDS = ("label", "confidence", "source", "notes", "layer", "style", "analysis_id")
#: Longest label accepted (characters): a short name shown on the canvas.
ANNOTATION_LABEL_MAX_CHARS = 500


def _bad(message: str) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_ARGUMENT, message)


def validate_fields(*, label: Any, confidence: Any, source: Any, notes: Any, layer: Any,
                    style: Any, analysis_id: Any) -> dict[str, Any]:
    """The non-geometric fields checked (``INVALID_ARGUMENT``) and normalised for storage."""
    label = "" if label is None else label
    if not isinstance(label, str) or len(label) > ANNOTATION_LABEL_MAX_CHARS:
        raise _bad(f"label must be a string of at most {ANNOTATION_LABEL_MAX_CHARS} characters")
    if confidence is not None:
        if isinstance(confidence, bool) or not isinstance(confidence, int | float) \
                or not (0.0 <= float(confidence) <= 1.0):
            raise _bad(f"confidence must be a number in 0..1, not {confidence!r}")
        confidence = float(confidence)
    if source not in ANNOTATION_SOURCES:
        raise _bad(f"source must be ai, user or system, not {source!r}")
    for name, value in (("notes", notes), ("layer", layer), ("analysis_id", analysis_id)):
        if value is not None and not isinstance(value, str):
            raise _bad(f"{name} must be a string")
    style = {} if style is None else style
    if not isinstance(style, dict):
        raise _bad("style must be a JSON object")
    try:
        json.dumps(style, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _bad(f"style is not plain JSON ({exc})") from exc
    return {"label": label, "confidence": confidence, "source": source, "notes": notes or None,
            "layer": layer or None, "style": style, "analysis_id": analysis_id or None}


def validate_coordinates(image_row: dict, annotation_type: Any, coordinates: Any) -> Any:
    """Coordinates checked against the image row's size (``INVALID_REGION``), in pixels; a measurement gets its value.

    A ``volume_roi`` (a 3D result) holds voxel coordinates of its series' volume: checked for consistency
    and that the row's image, a slice of that series, can anchor it."""
    from engine.analysis.measurements import (
        measure_annotation,  # scipy/skimage: loaded when first needed
    )

    if annotation_type == VOLUME_ROI:
        checked = validate_volume_roi(coordinates)
        check_anchor(image_row, checked)
        return checked

    stored = annotation_coordinates(annotation_type, coordinates, image_row["rows"], image_row["columns"])
    if annotation_type == "measurement":
        spacing = (image_row.get("metadata") or {}).get("pixel_spacing")
        stored["result"] = measure_annotation(stored, spacing if isinstance(spacing, dict) else None)
    return stored


def validate_source_filter(source: Any) -> str:
    """A listing's source filter: ``all`` or one of :data:`ANNOTATION_SOURCES`."""
    if source not in ("all", *ANNOTATION_SOURCES):
        raise _bad(f"source must be all, ai, user or system, not {source!r}")
    return source


def validate_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """An update's requested changes: only :data:`ANNOTATION_UPDATABLE` names; None (unchanged) dropped."""
    unknown = sorted(set(changes) - set(ANNOTATION_UPDATABLE))
    if unknown:
        raise _bad(f"cannot update {', '.join(unknown)}; updatable: {', '.join(ANNOTATION_UPDATABLE)}")
    return {k: v for k, v in changes.items() if v is not None}


def moves_geometry(changes: dict[str, Any]) -> bool:
    """Whether the changes need the image (a new type or new coordinates are re-validated)."""
    return "type" in changes or "coordinates" in changes


def changed_values(current: dict[str, Any], changes: dict[str, Any], image_row: dict | None) -> dict[str, Any]:
    """The validated values of ``changes`` (from :func:`validate_changes`) that differ from ``current``.

    A new type re-validates the (new or current) coordinates for it; ``image_row`` is
    needed when :func:`moves_geometry`. An empty string clears ``notes`` and ``layer``.
    """
    merged = {k: current[k] for k in ANNOTATION_FIELDS}
    merged.update({k: v for k, v in changes.items() if k not in ("type", "coordinates")})
    new = validate_fields(**merged)
    new["type"], new["coordinates"] = current["type"], current["coordinates"]
    if moves_geometry(changes):
        if image_row is None:
            raise ValueError("changing an annotation's type or coordinates needs its image row")
        new["type"] = changes.get("type", current["type"])
        new["coordinates"] = validate_coordinates(image_row, new["type"],
                                                  changes.get("coordinates", current["coordinates"]))
    return {k: v for k, v in new.items() if v != current[k]}
