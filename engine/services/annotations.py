"""Annotations: drawn or AI regions on an image, validated against it, in their public form."""

from __future__ import annotations

from typing import Any

from engine.analysis import annotations as rules
from engine.store import Store


def annotation_view(row: dict) -> dict:
    """The public form of an annotation row (what every front-end and export shows)."""
    return {"annotation_id": row["id"], "image_id": row["image_id"], "type": row["type"],
            "coordinates": row["coordinates"], "label": row["label"], "confidence": row["confidence"],
            "source": row["source"], "notes": row["notes"], "layer": row["layer"], "style": row["style"],
            "analysis_id": row["analysis_id"], "tracking": row.get("tracking"), "created_at": row["created_at"], "updated_at": row["updated_at"]}


class AnnotationService:
    """Adds, changes, deletes and lists annotations: the rules (:mod:`engine.analysis.annotations`)
    checked here, the rows written by the store's annotation repository."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add_row(self, session_id: str, image_id: str, type: str, coordinates: Any,  # noqa: A002 - the spec's name
                label: str = "", confidence: float | None = None, source: str = "user", notes: str | None = None,
                layer: str | None = None, style: dict | None = None, analysis_id: str | None = None) -> dict:
        """Validate and store an annotation of one of the session's images; the stored row.

        Errors: SESSION_NOT_FOUND, IMAGE_NOT_FOUND, INVALID_ARGUMENT, INVALID_REGION; nothing written then.
        Joins the caller's transaction when there is one.
        """
        self.store.sessions.get(session_id)
        image = self.store.images.get(image_id, session_id=session_id)
        fields = rules.validate_fields(label=label, confidence=confidence, source=source, notes=notes,
                                       layer=layer, style=style, analysis_id=analysis_id)
        stored = rules.validate_coordinates(image, type, coordinates)
        return self.store.annotations.insert(session_id, image_id, type, stored, fields)

    def update_row(self, session_id: str, annotation_id: str, **changes: Any) -> dict:
        """Change fields of an annotation (None: unchanged; see :func:`rules.changed_values`); the stored row."""
        self.store.sessions.get(session_id)
        changes = rules.validate_changes(changes)
        with self.store.db.transaction():
            current = self.store.annotations.get(session_id, annotation_id)
            image = self.store.images.get(current["image_id"]) if rules.moves_geometry(changes) else None
            return self.store.annotations.update(session_id, current, rules.changed_values(current, changes, image))

    def add(self, session_id: str, image_id: str, annotation_type: str = "bbox", coordinates: Any = None,
            label: str = "", notes: str | None = None, source: str = "user", confidence: float | None = None,
            layer: str | None = None, style: dict | None = None, analysis_id: str | None = None) -> dict:
        """Add an annotation (validated against the image; coordinates stored in pixels)."""
        row = self.add_row(session_id, image_id, annotation_type, coordinates, label=label, notes=notes,
                           source=source, confidence=confidence, layer=layer, style=style, analysis_id=analysis_id)
        return {"annotation_id": row["id"], "annotation": annotation_view(row)}

    def update(self, session_id: str, annotation_id: str, label: str | None = None, notes: str | None = None,
               coordinates: Any = None, **extra: Any) -> dict:
        """Change an annotation's label, notes, coordinates (or confidence/layer/style)."""
        row = self.update_row(session_id, annotation_id, label=label, notes=notes, coordinates=coordinates, **extra)
        return {"annotation_id": annotation_id, "annotation": annotation_view(row)}

    def delete(self, session_id: str, annotation_id: str) -> dict:
        """Delete an annotation."""
        return self.store.delete_annotation(session_id, annotation_id)

    def list(self, session_id: str, image_id: str | None = None, source: str = "all") -> dict:
        """Annotations of a session (or an image), optionally of one source."""
        rows = self.store.list_annotations(session_id, image_id, source or "all")
        return {"session_id": session_id, "image_id": image_id, "annotations": [annotation_view(r) for r in rows],
                "count": len(rows)}
