"""Annotations: drawn or AI regions on an image, validated against it, in their public form."""

from __future__ import annotations

from typing import Any

from engine.store import Store


def annotation_view(row: dict) -> dict:
    """The public form of an annotation row (what every front-end and export shows)."""
    return {"annotation_id": row["id"], "image_id": row["image_id"], "type": row["type"],
            "coordinates": row["coordinates"], "label": row["label"], "confidence": row["confidence"],
            "source": row["source"], "notes": row["notes"], "layer": row["layer"], "style": row["style"],
            "analysis_id": row["analysis_id"], "created_at": row["created_at"], "updated_at": row["updated_at"]}


class AnnotationService:
    """Adds, changes, deletes and lists annotations (validation in :mod:`engine.analysis.annotations`)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, session_id: str, image_id: str, annotation_type: str = "bbox", coordinates: Any = None,
            label: str = "", notes: str | None = None, source: str = "user", confidence: float | None = None,
            layer: str | None = None, style: dict | None = None, analysis_id: str | None = None) -> dict:
        """Add an annotation (validated against the image; coordinates stored in pixels)."""
        row = self.store.add_annotation(session_id, image_id, annotation_type, coordinates, label=label,
                                        notes=notes, source=source, confidence=confidence, layer=layer,
                                        style=style, analysis_id=analysis_id)
        return {"annotation_id": row["id"], "annotation": annotation_view(row)}

    def update(self, session_id: str, annotation_id: str, label: str | None = None, notes: str | None = None,
               coordinates: Any = None, **extra: Any) -> dict:
        """Change an annotation's label, notes, coordinates (or confidence/layer/style)."""
        row = self.store.update_annotation(session_id, annotation_id, label=label, notes=notes,
                                           coordinates=coordinates, **extra)
        return {"annotation_id": annotation_id, "annotation": annotation_view(row)}

    def delete(self, session_id: str, annotation_id: str) -> dict:
        """Delete an annotation."""
        return self.store.delete_annotation(session_id, annotation_id)

    def list(self, session_id: str, image_id: str | None = None, source: str = "all") -> dict:
        """Annotations of a session (or an image), optionally of one source."""
        rows = self.store.list_annotations(session_id, image_id, source or "all")
        return {"session_id": session_id, "image_id": image_id, "annotations": [annotation_view(r) for r in rows],
                "count": len(rows)}
