"""Annotations of a session's images; values arrive validated (:mod:`engine.analysis.annotations`)."""

from __future__ import annotations

from typing import Any

from engine.analysis.annotations import validate_source_filter
from engine.errors import ErrorCode, MedVisionError
from engine.events import EventKind
from engine.store.common import decode_row, dumps, new_id, now_iso
from engine.store.database import Database
from engine.store.events import EventLog
from engine.store.sessions import ImageRepository, SessionRepository

#: Columns stored as JSON text.
JSON_FIELDS = ("coordinates", "style", "tracking")


def annotation_not_found(annotation_id: str) -> MedVisionError:
    """The ``ANNOTATION_NOT_FOUND`` error for an id absent from the session."""
    return MedVisionError(ErrorCode.ANNOTATION_NOT_FOUND,
                          f"no annotation with id {annotation_id!r} in this session",
                          annotation_id=annotation_id)


class AnnotationRepository:
    """The ``annotations`` table; each change touches the session and announces itself."""

    def __init__(self, db: Database, events: EventLog, sessions: SessionRepository,
                 images: ImageRepository) -> None:
        self.db, self.events, self.sessions, self.images = db, events, sessions, images

    def insert(self, session_id: str, image_id: str, annotation_type: str, coordinates: Any,
               fields: dict[str, Any]) -> dict:
        """Store a validated annotation (``annotation.created``); ``fields`` as ``validate_fields`` returns them."""
        annotation_id, stamp = new_id(), now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO annotations (id, session_id, image_id, type, coordinates, label, confidence,"
                " source, layer, notes, style, analysis_id, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (annotation_id, session_id, image_id, annotation_type, dumps(coordinates), fields["label"],
                 fields["confidence"], fields["source"], fields["layer"], fields["notes"],
                 dumps(fields["style"]), fields["analysis_id"], stamp, stamp),
            )
            tx.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (stamp, session_id))
            self.events.append(tx, session_id, EventKind.ANNOTATION_CREATED, {
                "annotation_id": annotation_id, "image_id": image_id, "type": annotation_type,
                "source": fields["source"], "layer": fields["layer"]})
        return self.get(session_id, annotation_id)

    def get(self, session_id: str, annotation_id: str) -> dict:
        """One annotation of the session; ``ANNOTATION_NOT_FOUND`` if absent or another session's."""
        self.sessions.get(session_id)
        rows = self.db.query("SELECT * FROM annotations WHERE id = ? AND session_id = ?",
                             (annotation_id, session_id))
        if not rows:
            raise annotation_not_found(annotation_id)
        return decode_row(rows[0])

    def update(self, session_id: str, current: dict, changed: dict[str, Any]) -> dict:
        """Write validated changed values of the row ``current`` (``annotation.updated`` naming them).

        Nothing is written, and ``current`` is returned, when ``changed`` is empty.
        """
        if not changed:
            return current
        fields = sorted(changed)
        stamp = now_iso()
        with self.db.transaction() as tx:
            assignments = ", ".join(f"{k} = ?" for k in fields)
            values = [dumps(changed[k]) if k in JSON_FIELDS else changed[k] for k in fields]
            tx.execute(f"UPDATE annotations SET {assignments}, updated_at = ? WHERE id = ?",
                       (*values, stamp, current["id"]))
            tx.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (stamp, session_id))
            self.events.append(tx, session_id, EventKind.ANNOTATION_UPDATED, {
                "annotation_id": current["id"], "image_id": current["image_id"], "fields": fields})
        return self.get(session_id, current["id"])

    def delete(self, session_id: str, annotation_id: str) -> dict:
        """Delete one annotation of the session (``annotation.deleted``)."""
        self.sessions.get(session_id)
        with self.db.transaction() as tx:
            row = tx.execute("SELECT image_id FROM annotations WHERE id = ? AND session_id = ?",
                             (annotation_id, session_id)).fetchone()
            if row is None:
                raise annotation_not_found(annotation_id)
            stamp = now_iso()
            tx.execute("DELETE FROM annotations WHERE id = ?", (annotation_id,))
            tx.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (stamp, session_id))
            self.events.append(tx, session_id, EventKind.ANNOTATION_DELETED,
                               {"annotation_id": annotation_id, "image_id": row[0]})
        return {"annotation_id": annotation_id, "image_id": row[0], "deleted": True}

    def in_session(self, session_id: str, image_id: str | None = None, source: str = "all") -> list[dict]:
        """A session's annotations, oldest first; optionally one image's and/or one source's (``all``: any)."""
        self.sessions.get(session_id)
        validate_source_filter(source)
        sql, params = "SELECT * FROM annotations WHERE session_id = ?", [session_id]
        if image_id is not None:
            self.images.get(image_id, session_id=session_id)
            sql, params = sql + " AND image_id = ?", [*params, image_id]
        if source != "all":
            sql, params = sql + " AND source = ?", [*params, source]
        return [decode_row(r) for r in self.db.query(sql + " ORDER BY created_at, rowid", tuple(params))]
