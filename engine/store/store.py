"""The store: every persistent thing of a data directory, behind typed methods.

Each write runs in one transaction together with its ``events`` row, so any process
following the outbox sees exactly the committed changes, in order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import ErrorCode, MedVisionError
from engine.imaging.regions import annotation_coordinates
from engine.store.blobs import BlobStore
from engine.store.database import Connection, Database
from engine.store.keys import resolve_key

log = logging.getLogger(__name__)

DATABASE_NAME = "medvision.db"
BLOB_DIR = "blobs"


def new_id() -> str:
    """A short random id (12 hex digits), like the spec's ids but with fewer collisions."""
    return uuid.uuid4().hex[:12]


def now_iso() -> str:
    """UTC timestamp with milliseconds, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_JSON_COLUMNS = {
    "rle", "metadata", "patient", "classification", "detections", "segmentation", "vqa_history",
    "result", "coordinates", "style", "data", "payload", "files", "options", "missing",
}


def _decode_row(row: dict) -> dict:
    return {k: (_loads(v) if k in _JSON_COLUMNS else v) for k, v in row.items()}


class Store:
    """Encrypted store of one data directory (database + blobs)."""

    def __init__(self, home: Path, key: bytes) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self._key = key
        self.db = Database(home / DATABASE_NAME, key)
        self.blobs = BlobStore(home / BLOB_DIR, key)

    @classmethod
    def open(cls, home: Path, *, use_keyring: bool = True, key: bytes | None = None) -> Store:
        """Open (or create) the store in ``home``, finding the key through the provider chain."""
        home = Path(home)
        if key is None:
            key = resolve_key(home, home / DATABASE_NAME, use_keyring=use_keyring)
        return cls(home, key)

    def close(self) -> None:
        """Close all database connections."""
        self.db.close()

    @property
    def key(self) -> bytes:
        """The raw store key, for components that share the data dir's encryption (the
        reference library). Never log or persist it."""
        return self._key

    @property
    def cipher_version(self) -> str:
        """SQLCipher version reported at open (never empty: plain SQLite is refused)."""
        return self.db.cipher_version

    # -- events ------------------------------------------------------------------------
    @staticmethod
    def _event(tx: Connection, session_id: str | None, kind: str, payload: dict) -> int:
        cursor = tx.execute(
            "INSERT INTO events (session_id, kind, payload, created_at) VALUES (?, ?, ?, ?)",
            (session_id, kind, _dumps(payload), now_iso()),
        )
        return int(cursor.lastrowid)

    def append_event(self, session_id: str | None, kind: str, payload: dict) -> int:
        """Append an event on its own (for changes that live outside the database)."""
        with self.db.transaction() as tx:
            return self._event(tx, session_id, kind, payload)

    def events_since(self, last_id: int, session_id: str | None = None, limit: int = 500) -> list[dict]:
        """Events with ``id > last_id``, oldest first (optionally one session's)."""
        if session_id is None:
            rows = self.db.query("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit))
        else:
            rows = self.db.query(
                "SELECT * FROM events WHERE id > ? AND session_id = ? ORDER BY id LIMIT ?",
                (last_id, session_id, limit),
            )
        return [_decode_row(r) for r in rows]

    def last_event_id(self) -> int:
        """The newest event id, 0 when there is none."""
        return int(self.db.query("SELECT coalesce(max(id), 0) AS id FROM events")[0]["id"])

    # -- sessions ----------------------------------------------------------------------
    def create_session(
        self, name: str | None = None, metadata: dict | None = None, study_instance_uid: str | None = None
    ) -> dict:
        """Create a study session and announce it (``session.created``)."""
        session_id, stamp = new_id(), now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO sessions (id, name, study_instance_uid, metadata, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, name, study_instance_uid, _dumps(metadata or {}), stamp, stamp),
            )
            self._event(tx, session_id, "session.created", {"session_id": session_id})
        return self.get_session(session_id)

    def get_session(self, session_id: str) -> dict:
        """One session row; ``SESSION_NOT_FOUND`` if there is none."""
        rows = self.db.query("SELECT * FROM sessions WHERE id = ?", (session_id,))
        if not rows:
            raise MedVisionError(
                ErrorCode.SESSION_NOT_FOUND, f"no session with id {session_id!r}", session_id=session_id
            )
        return _decode_row(rows[0])

    def list_sessions(self, limit: int = 100) -> list[dict]:
        """Sessions, newest first, with their image counts."""
        rows = self.db.query(
            "SELECT s.*, (SELECT count(*) FROM images i WHERE i.session_id = s.id) AS image_count"
            " FROM sessions s ORDER BY s.created_at DESC, s.rowid DESC LIMIT ?",
            (limit,),
        )
        return [_decode_row(r) for r in rows]

    def delete_session(self, session_id: str) -> dict:
        """Delete a session and everything in it; blob files no other image uses are removed."""
        self.get_session(session_id)
        with self.db.transaction() as tx:
            image_ids = [r[0] for r in tx.execute("SELECT id FROM images WHERE session_id = ?", (session_id,))]
            blob_ids = [r[0] for r in tx.execute(
                "SELECT DISTINCT blob_id FROM images WHERE session_id = ? AND blob_id IS NOT NULL", (session_id,))]
            export_blobs = [f["blob_id"] for r in tx.execute("SELECT files FROM exports WHERE session_id = ?",
                                                             (session_id,)) for f in _loads(r[0])]
            tx.execute("DELETE FROM sessions WHERE id = ?", (session_id,))  # cascades to its rows
            orphans = [b for b in blob_ids
                       if tx.execute("SELECT 1 FROM images WHERE blob_id = ? LIMIT 1", (b,)).fetchone() is None]
            orphans += export_blobs
            tx.executemany("DELETE FROM blobs WHERE id = ?", [(b,) for b in orphans])
            self._event(tx, session_id, "session.deleted", {"session_id": session_id})
        for blob_id in orphans:  # after the commit: a crash here leaves a file no row points to
            self.blobs.delete(blob_id)
        return {"image_ids": image_ids, "blob_ids": orphans}

    def set_current_image(self, session_id: str, image_id: str) -> None:
        """Point the session's focus at one of its images (``session.current_image``)."""
        self.get_image(image_id, session_id=session_id)
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE sessions SET current_image_id = ?, updated_at = ? WHERE id = ?",
                (image_id, now_iso(), session_id),
            )
            self._event(tx, session_id, "session.current_image", {"image_id": image_id})

    # -- images ------------------------------------------------------------------------
    def add_image(self, session_id: str, *, blob_data: bytes, record: dict) -> dict:
        """Store an image's bytes encrypted and its row, in that order (blob durable first).

        ``record`` holds the ``images`` columns (type, format, modality, metadata, patient,
        source_path, source_name, rows, columns, frame_count, UIDs...). An identical file
        already stored as a blob is not written twice.
        """
        self.get_session(session_id)
        sha256 = hashlib.sha256(blob_data).hexdigest()
        existing = self.db.query("SELECT id FROM blobs WHERE sha256 = ? AND size = ?", (sha256, len(blob_data)))
        blob_id = existing[0]["id"] if existing else uuid.uuid4().hex
        if not existing:
            self.blobs.write_bytes(blob_id, blob_data)
        image_id, stamp = new_id(), now_iso()
        columns = dict(record, id=image_id, session_id=session_id, blob_id=blob_id, sha256=sha256, created_at=stamp)
        for key in ("metadata", "patient"):
            columns[key] = _dumps(columns.get(key) or {})
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        try:
            with self.db.transaction() as tx:
                if not existing:
                    tx.execute(
                        "INSERT INTO blobs (id, kind, size, sha256, created_at) VALUES (?, 'image', ?, ?, ?)",
                        (blob_id, len(blob_data), sha256, stamp),
                    )
                tx.execute(f"INSERT INTO images ({names}) VALUES ({marks})", tuple(columns.values()))
                tx.execute(
                    "UPDATE sessions SET current_image_id = ?, updated_at = ? WHERE id = ?",
                    (image_id, stamp, session_id),
                )
                self._event(tx, session_id, "image.added", {"image_id": image_id, "type": record.get("type")})
        except BaseException:
            if not existing:
                self.blobs.delete(blob_id)
            raise
        return self.get_image(image_id)

    def get_image(self, image_id: str, session_id: str | None = None) -> dict:
        """One image row; ``IMAGE_NOT_FOUND`` if absent (or not in ``session_id``)."""
        rows = self.db.query("SELECT * FROM images WHERE id = ?", (image_id,))
        if not rows or (session_id is not None and rows[0]["session_id"] != session_id):
            raise MedVisionError(
                ErrorCode.IMAGE_NOT_FOUND, f"no image with id {image_id!r} in this session", image_id=image_id
            )
        return _decode_row(rows[0])

    def list_images(self, session_id: str) -> list[dict]:
        """A session's images in the order they were added."""
        rows = self.db.query("SELECT * FROM images WHERE session_id = ? ORDER BY created_at, rowid", (session_id,))
        return [_decode_row(r) for r in rows]

    def image_bytes(self, image: dict) -> bytes:
        """Decrypt an image's original file."""
        return self.blobs.read_bytes(image["blob_id"])

    # -- analyses ----------------------------------------------------------------------
    def add_analysis(self, session_id: str, image_id: str, kind: str, result: dict, *,
                     analysis_id: str | None = None) -> dict:
        """Persist one analysis result (the full JSON plus the spec's columns).

        ``analysis_id`` may be chosen by the caller, so that rows written in the same
        transaction (masks, annotations) can point at it.
        """
        analysis_id, stamp = analysis_id or new_id(), now_iso()
        trained = result.get("model_trained")
        report = result.get("report")
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO analyses (id, session_id, image_id, kind, classification, detections,"
                " segmentation, report, vqa_history, result, model_trained, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    analysis_id, session_id, image_id, kind,
                    _dumps(result.get("classification")), _dumps(result.get("detections")),
                    _dumps(result.get("segmentation")),
                    report.get("text") if isinstance(report, dict) else report,
                    _dumps(result.get("vqa_history", [])), _dumps(result),
                    None if trained is None else int(bool(trained)), stamp,
                ),
            )
            self._event(tx, session_id, "analysis.created", {"analysis_id": analysis_id, "image_id": image_id, "kind": kind})
        return {"id": analysis_id, "created_at": stamp}

    def list_analyses(self, session_id: str, image_id: str | None = None) -> list[dict]:
        """Analyses of a session (or one image), oldest first."""
        if image_id is None:
            rows = self.db.query("SELECT * FROM analyses WHERE session_id = ? ORDER BY created_at, rowid", (session_id,))
        else:
            rows = self.db.query(
                "SELECT * FROM analyses WHERE session_id = ? AND image_id = ? ORDER BY created_at, rowid",
                (session_id, image_id),
            )
        return [_decode_row(r) for r in rows]

    def count(self, table: str, session_id: str) -> int:
        """Rows of ``table`` belonging to a session."""
        if table not in {"images", "analyses", "annotations", "interactions"}:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"unknown table {table!r}")
        return int(self.db.query(f"SELECT count(*) AS n FROM {table} WHERE session_id = ?", (session_id,))[0]["n"])

    # -- interactions ------------------------------------------------------------------
    def add_interaction(self, session_id: str, kind: str, data: dict, image_id: str | None = None) -> str:
        """Record a user/agent interaction (upload, region_select, annotation, query, export)."""
        interaction_id = new_id()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO interactions (id, session_id, image_id, type, data, timestamp) VALUES (?, ?, ?, ?, ?, ?)",
                (interaction_id, session_id, image_id, kind, _dumps(data), now_iso()),
            )
        return interaction_id

    # -- jobs --------------------------------------------------------------------------
    def enqueue_job(
        self, kind: str, payload: dict, *, session_id: str | None = None,
        image_id: str | None = None, max_attempts: int = 3,
    ) -> int:
        """Queue work for any process's worker (``job.queued``)."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            cursor = tx.execute(
                "INSERT INTO jobs (kind, session_id, image_id, payload, max_attempts, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kind, session_id, image_id, _dumps(payload), max_attempts, stamp, stamp),
            )
            job_id = int(cursor.lastrowid)
            self._event(tx, session_id, "job.queued", {"job_id": job_id, "kind": kind, "image_id": image_id})
        return job_id

    def claim_job(self, worker: str, kinds: list[str] | None = None) -> dict | None:
        """Atomically take the oldest queued job (status -> running, attempts + 1)."""
        with self.db.transaction() as tx:
            sql = "SELECT * FROM jobs WHERE status = 'queued'"
            params: list[Any] = []
            if kinds:
                sql += f" AND kind IN ({', '.join('?' for _ in kinds)})"
                params += kinds
            cursor = tx.execute(sql + " ORDER BY id LIMIT 1", params)
            row = cursor.fetchone()
            if row is None:
                return None
            job = dict(zip([d[0] for d in cursor.description], row, strict=True))
            stamp = now_iso()
            tx.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = ?,"
                " heartbeat_at = ?, updated_at = ? WHERE id = ?",
                (worker, stamp, stamp, job["id"]),
            )
            self._event(tx, job["session_id"], "job.running", {"job_id": job["id"], "kind": job["kind"]})
        job.update(status="running", attempts=job["attempts"] + 1, worker=worker)
        return _decode_row(job)

    def finish_job(self, job_id: int, *, result: dict | None = None, error: str | None = None) -> str:
        """Mark a running job done, or failed; a failure with attempts left is queued again."""
        with self.db.transaction() as tx:
            row = tx.execute("SELECT session_id, attempts, max_attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no job {job_id}")
            session_id, attempts, max_attempts = row
            if error is None:
                status = "done"
            else:
                status = "queued" if attempts < max_attempts else "failed"
            tx.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, updated_at = ? WHERE id = ?",
                (status, _dumps(result) if result is not None else None, error, now_iso(), job_id),
            )
            self._event(tx, session_id, f"job.{status}", {"job_id": job_id, "error": error})
        return status

    def requeue_stale_jobs(self, stale_worker_prefixes: list[str] | None = None) -> int:
        """Put jobs left ``running`` by a dead process back in the queue (or fail them).

        Called at worker start-up: a job still marked running then was interrupted.
        """
        with self.db.transaction() as tx:
            rows = tx.execute("SELECT id, attempts, max_attempts, worker FROM jobs WHERE status = 'running'").fetchall()
            count = 0
            for job_id, attempts, max_attempts, worker in rows:
                if stale_worker_prefixes and not any((worker or "").startswith(p) for p in stale_worker_prefixes):
                    continue
                status = "queued" if attempts < max_attempts else "failed"
                tx.execute(
                    "UPDATE jobs SET status = ?, error = coalesce(error, 'interrupted'), updated_at = ? WHERE id = ?",
                    (status, now_iso(), job_id),
                )
                count += 1
        return count

    def get_job(self, job_id: int) -> dict:
        """One job row."""
        rows = self.db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no job {job_id}")
        return _decode_row(rows[0])

    # -- annotations -------------------------------------------------------------------
    # Coordinates are validated against the image's rows/columns (engine.imaging.regions)
    # and stored in pixels; a measurement's value is computed here from the image's
    # recorded pixel spacing and stored with it, so every front-end shows the same number.
    ANNOTATION_SOURCES = ("ai", "user", "system")
    ANNOTATION_UPDATABLE = ("type", "coordinates", "label", "confidence", "source", "notes", "layer",
                            "style", "analysis_id")

    def add_annotation(
        self, session_id: str, image_id: str, type: str, coordinates: Any,  # noqa: A002 - the spec's name
        label: str = "", confidence: float | None = None, source: str = "user",
        notes: str | None = None, layer: str | None = None, style: dict | None = None,
        analysis_id: str | None = None,
    ) -> dict:
        """Validate and store an annotation of one of the session's images (``annotation.created``).

        Parameters
        ----------
        type, coordinates:
            bbox ``[x1, y1, x2, y2]``, polygon/freehand ``[[x, y], ...]``, point ``[x, y]``
            (or a region dict with ``"format": "relative"``), mask (RLE dict of the image
            size), measurement ``{"kind": "distance"|"polyline"|"angle"|"area", "points"}``,
            text ``{"position": [x, y], "text"}``: see
            :func:`engine.imaging.regions.annotation_coordinates`. Stored in pixels; a
            measurement gets ``"result"`` (:func:`engine.analysis.measurements.measure_annotation`).
        confidence:
            None or a number in 0..1.
        source:
            "ai", "user" or "system".
        analysis_id:
            The analysis that produced the annotation. Not checked against the analyses
            table: the engine writes an annotation before its analysis, in one transaction.

        Raises
        ------
        MedVisionError
            SESSION_NOT_FOUND, IMAGE_NOT_FOUND (also for an image of another session),
            INVALID_ARGUMENT (type, source, confidence, label, notes, layer, style),
            INVALID_REGION (coordinates). Nothing is written on error.
        """
        self.get_session(session_id)
        image = self.get_image(image_id, session_id=session_id)
        fields = _annotation_fields(label=label, confidence=confidence, source=source, notes=notes,
                                    layer=layer, style=style, analysis_id=analysis_id)
        stored = _annotation_coordinates(image, type, coordinates)
        annotation_id, stamp = new_id(), now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO annotations (id, session_id, image_id, type, coordinates, label, confidence,"
                " source, layer, notes, style, analysis_id, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (annotation_id, session_id, image_id, type, _dumps(stored), fields["label"],
                 fields["confidence"], fields["source"], fields["layer"], fields["notes"],
                 _dumps(fields["style"]), fields["analysis_id"], stamp, stamp),
            )
            tx.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (stamp, session_id))
            self._event(tx, session_id, "annotation.created", {
                "annotation_id": annotation_id, "image_id": image_id, "type": type,
                "source": fields["source"], "layer": fields["layer"]})
        return self.get_annotation(session_id, annotation_id)

    def get_annotation(self, session_id: str, annotation_id: str) -> dict:
        """One annotation of the session; ``ANNOTATION_NOT_FOUND`` if absent or another session's."""
        self.get_session(session_id)
        rows = self.db.query("SELECT * FROM annotations WHERE id = ? AND session_id = ?",
                             (annotation_id, session_id))
        if not rows:
            raise _annotation_not_found(annotation_id)
        return _decode_row(rows[0])

    def update_annotation(self, session_id: str, annotation_id: str, **changes: Any) -> dict:
        """Change fields of an annotation (``annotation.updated`` naming the changed fields).

        ``changes`` may name :attr:`ANNOTATION_UPDATABLE` (not the image). A value of
        None means "unchanged" (front-ends pass every optional argument); an empty
        string clears ``notes`` and ``layer``. Changing ``type`` re-validates the
        coordinates (new or current) for the new type; new measurement points
        recompute the stored value. Nothing changes and no event is written when the
        values are the current ones.
        """
        self.get_session(session_id)
        unknown = sorted(set(changes) - set(self.ANNOTATION_UPDATABLE))
        if unknown:
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT,
                f"cannot update {', '.join(unknown)}; updatable: {', '.join(self.ANNOTATION_UPDATABLE)}",
            )
        changes = {k: v for k, v in changes.items() if v is not None}
        with self.db.transaction() as tx:
            cursor = tx.execute("SELECT * FROM annotations WHERE id = ? AND session_id = ?",
                                (annotation_id, session_id))
            row = cursor.fetchone()
            if row is None:
                raise _annotation_not_found(annotation_id)
            current = _decode_row(dict(zip([d[0] for d in cursor.description], row, strict=True)))
            merged = {k: current[k] for k in ("label", "confidence", "source", "notes", "layer", "style",
                                              "analysis_id")}
            merged.update({k: v for k, v in changes.items() if k not in ("type", "coordinates")})
            fields = _annotation_fields(**merged)
            new = dict(fields)
            new["type"], new["coordinates"] = current["type"], current["coordinates"]
            if "type" in changes or "coordinates" in changes:
                image = self.get_image(current["image_id"])
                new["type"] = changes.get("type", current["type"])
                new["coordinates"] = _annotation_coordinates(
                    image, new["type"], changes.get("coordinates", current["coordinates"]))
            changed = sorted(k for k in new if new[k] != current[k])
            if not changed:
                return current
            stamp = now_iso()
            assignments = ", ".join(f"{k} = ?" for k in changed)
            values = [_dumps(new[k]) if k in ("coordinates", "style") else new[k] for k in changed]
            tx.execute(f"UPDATE annotations SET {assignments}, updated_at = ? WHERE id = ?",
                       (*values, stamp, annotation_id))
            tx.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (stamp, session_id))
            self._event(tx, session_id, "annotation.updated", {
                "annotation_id": annotation_id, "image_id": current["image_id"], "fields": changed})
        return self.get_annotation(session_id, annotation_id)

    def delete_annotation(self, session_id: str, annotation_id: str) -> dict:
        """Delete one annotation of the session (``annotation.deleted``)."""
        self.get_session(session_id)
        with self.db.transaction() as tx:
            row = tx.execute("SELECT image_id FROM annotations WHERE id = ? AND session_id = ?",
                             (annotation_id, session_id)).fetchone()
            if row is None:
                raise _annotation_not_found(annotation_id)
            stamp = now_iso()
            tx.execute("DELETE FROM annotations WHERE id = ?", (annotation_id,))
            tx.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (stamp, session_id))
            self._event(tx, session_id, "annotation.deleted",
                        {"annotation_id": annotation_id, "image_id": row[0]})
        return {"annotation_id": annotation_id, "image_id": row[0], "deleted": True}

    def list_annotations(self, session_id: str, image_id: str | None = None, source: str = "all") -> list[dict]:
        """A session's annotations, oldest first; optionally one image's and/or one source's."""
        self.get_session(session_id)
        if source not in ("all", *self.ANNOTATION_SOURCES):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"source must be all, ai, user or system, not {source!r}")
        sql, params = "SELECT * FROM annotations WHERE session_id = ?", [session_id]
        if image_id is not None:
            self.get_image(image_id, session_id=session_id)
            sql, params = sql + " AND image_id = ?", [*params, image_id]
        if source != "all":
            sql, params = sql + " AND source = ?", [*params, source]
        return [_decode_row(r) for r in self.db.query(sql + " ORDER BY created_at, rowid", tuple(params))]

    # -- masks -------------------------------------------------------------------------
    def add_masks(self, session_id: str, image_id: str, masks: list[dict], *, source: str,
                  analysis_id: str | None = None, model_id: str | None = None) -> list[str]:
        """Store RLE masks (``{"label", "rle", "area_px"}``, optional ``id``) in one transaction."""
        stamp, ids = now_iso(), []
        with self.db.transaction() as tx:
            for mask in masks:
                mask_id = mask.get("id") or new_id()
                tx.execute(
                    "INSERT INTO masks (id, session_id, image_id, analysis_id, label, source, rle, area_px,"
                    " model_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (mask_id, session_id, image_id, analysis_id, mask["label"], source, _dumps(mask["rle"]),
                     int(mask["area_px"]), model_id, stamp),
                )
                ids.append(mask_id)
            self._event(tx, session_id, "masks.created",
                        {"image_id": image_id, "source": source, "mask_ids": ids, "analysis_id": analysis_id})
        return ids

    def list_masks(self, session_id: str, image_id: str, source: str | None = None,
                   analysis_id: str | None = None) -> list[dict]:
        """Stored masks of an image, oldest first (optionally of one source or analysis)."""
        sql, params = "SELECT * FROM masks WHERE session_id = ? AND image_id = ?", [session_id, image_id]
        if source is not None:
            sql, params = sql + " AND source = ?", [*params, source]
        if analysis_id is not None:
            sql, params = sql + " AND analysis_id = ?", [*params, analysis_id]
        return [_decode_row(r) for r in self.db.query(sql + " ORDER BY created_at, rowid", tuple(params))]

    def get_mask(self, session_id: str, mask_id: str) -> dict:
        """One stored mask."""
        rows = self.db.query("SELECT * FROM masks WHERE id = ? AND session_id = ?", (mask_id, session_id))
        if not rows:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no mask {mask_id!r} in this session")
        return _decode_row(rows[0])

    # -- DICOM node (dicom_node/) -------------------------------------------------------
    # The node commits each received instance's blob (fsync + rename) first, then calls
    # dicom_add_instance: one transaction adds the study's session (created or reused),
    # the blob row, the image row, the receipt, the analysis job and their events. An
    # instance whose SOP Instance UID is already stored is a duplicate: never a 2nd row.
    def dicom_add_instance(self, *, blob_id: str, size: int, sha256: str, record: dict,
                           association_id: str | None, calling_ae: str | None,
                           session_name: str | None = None, job_kind: str | None = None,
                           max_attempts: int = 3, before_commit: Callable[[], object] | None = None) -> dict:
        """Record a received instance; returns ``status`` (stored|duplicate), ``image_id``,
        ``session_id``, ``same_content`` (duplicates), ``blob_used`` (False: the caller
        deletes its blob file) and ``job_id``. ``before_commit`` runs last inside the
        transaction of a stored instance (waiting there for its blob's fsync lets the
        rows be written meanwhile); if it raises, nothing is committed."""
        stamp, image_id = now_iso(), new_id()
        with self.db.transaction() as tx:
            row = tx.execute("SELECT id, session_id, sha256 FROM images WHERE sop_instance_uid = ? LIMIT 1",
                             (record["sop_instance_uid"],)).fetchone()
            if row is not None:
                tx.execute("UPDATE dicom_associations SET duplicates = duplicates + 1 WHERE id = ?",
                           (association_id,))
                return {"status": "duplicate", "image_id": row[0], "session_id": row[1],
                        "same_content": row[2] == sha256, "blob_used": False, "job_id": None}
            study = record["study_instance_uid"]  # None: no usable Study UID, one session per association
            found = tx.execute("SELECT id FROM sessions WHERE study_instance_uid = ?", (study,)).fetchone() \
                if study else tx.execute("SELECT id FROM sessions WHERE study_instance_uid IS NULL"
                                         " AND json_extract(metadata, '$.association_id') = ?",
                                         (association_id,)).fetchone()
            if found is None:
                session_id = new_id()
                tx.execute("INSERT INTO sessions (id, name, study_instance_uid, metadata, created_at, updated_at)"
                           " VALUES (?, ?, ?, ?, ?, ?)",
                           (session_id, session_name, study, _dumps({"source": "dicom", "calling_ae": calling_ae,
                                                                     "association_id": association_id}),
                            stamp, stamp))
                self._event(tx, session_id, "session.created", {"session_id": session_id, "source": "dicom"})
            else:
                session_id = found[0]
            existing = tx.execute("SELECT id FROM blobs WHERE sha256 = ? AND size = ?", (sha256, size)).fetchone()
            if existing is None:
                tx.execute("INSERT INTO blobs (id, kind, size, sha256, created_at) VALUES (?, 'image', ?, ?, ?)",
                           (blob_id, size, sha256, stamp))
            columns = dict(record, id=image_id, session_id=session_id, blob_id=existing[0] if existing else blob_id,
                           sha256=sha256, created_at=stamp)
            for key in ("metadata", "patient"):
                columns[key] = _dumps(columns.get(key) or {})
            tx.execute(f"INSERT INTO images ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                       tuple(columns.values()))
            tx.execute("UPDATE sessions SET current_image_id = ?, updated_at = ? WHERE id = ?",
                       (image_id, stamp, session_id))
            self._event(tx, session_id, "image.added", {"image_id": image_id, "type": record.get("type"),
                                                        "source": "dicom"})
            tx.execute("INSERT INTO dicom_received (image_id, association_id, calling_ae, received_at)"
                       " VALUES (?, ?, ?, ?)", (image_id, association_id, calling_ae, stamp))
            tx.execute("UPDATE dicom_associations SET received = received + 1 WHERE id = ?", (association_id,))
            job_id = None
            if job_kind:
                job_id = self.enqueue_job(job_kind, {"session_id": session_id, "image_id": image_id},
                                          session_id=session_id, image_id=image_id, max_attempts=max_attempts)
            if before_commit is not None:
                before_commit()
        return {"status": "stored", "image_id": image_id, "session_id": session_id, "same_content": None,
                "blob_used": existing is None, "job_id": job_id}

    def dicom_association(self, association_id: str, *, node: str | None = None, calling_ae: str | None = None,
                          called_ae: str | None = None, peer_host: str | None = None, state: str = "open",
                          reason: str | None = None, failed: int = 0) -> None:
        """Insert (with ``node``) or update an association's row (``dicom.association``)."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            if node is not None:
                tx.execute("INSERT INTO dicom_associations (id, node, calling_ae, called_ae, peer_host, state, reason,"
                           " started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (association_id, node, calling_ae, called_ae, peer_host, state, reason, stamp,
                            None if state == "open" else stamp))
            else:
                tx.execute("UPDATE dicom_associations SET state = ?, reason = coalesce(?, reason),"
                           " failed = failed + ?, ended_at = CASE WHEN ? = 'open' THEN NULL ELSE ? END WHERE id = ?",
                           (state, reason, failed, state, stamp, association_id))
            if state != "open":
                self._event(tx, None, "dicom.association", {"association_id": association_id, "state": state,
                                                             "reason": reason})

    def dicom_node_beat(self, node: str, *, pid: int, ae_title: str, host: str, port: int,
                        stopped: bool = False, dead_before: str | None = None) -> None:
        """Register a listening node or refresh its heartbeat (``stopped``: it shut down).

        ``dead_before`` (at start-up): associations left open by nodes whose last beat is
        older are closed as aborted (their process died)."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            if dead_before is not None:
                tx.execute("UPDATE dicom_associations SET state = 'aborted', reason = 'node died', ended_at = ?"
                           " WHERE state = 'open' AND node IN (SELECT node FROM dicom_nodes WHERE"
                           " heartbeat_at < ? OR stopped_at IS NOT NULL)", (stamp, dead_before))
            tx.execute("INSERT INTO dicom_nodes (node, pid, ae_title, host, port, started_at, heartbeat_at, stopped_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(node) DO UPDATE SET"
                       " heartbeat_at = excluded.heartbeat_at, stopped_at = excluded.stopped_at",
                       (node, pid, ae_title, host, port, stamp, stamp, stamp if stopped else None))

    def dicom_status(self, since: str, alive_after: str = "") -> dict:
        """Counters for ``dicom-node status``: nodes, associations, receipts and queues since
        ``since``; open associations count only for nodes that beat after ``alive_after``."""
        def one(sql: str, params: tuple = ()) -> int:
            return int(self.db.query(sql, params)[0]["n"])
        return {
            "nodes": self.db.query("SELECT * FROM dicom_nodes ORDER BY started_at DESC"),
            "open_associations": one("SELECT count(*) AS n FROM dicom_associations WHERE state = 'open' AND node IN"
                                     " (SELECT node FROM dicom_nodes WHERE stopped_at IS NULL AND heartbeat_at >= ?)",
                                     (alive_after,)),
            "associations_today": one("SELECT count(*) AS n FROM dicom_associations WHERE started_at >= ?", (since,)),
            "rejected_today": one("SELECT count(*) AS n FROM dicom_associations WHERE state = 'rejected'"
                                  " AND started_at >= ?", (since,)),
            "received_today": one("SELECT count(*) AS n FROM dicom_received WHERE received_at >= ?", (since,)),
            "store_failures_today": one("SELECT coalesce(sum(failed), 0) AS n FROM dicom_associations"
                                        " WHERE started_at >= ?", (since,)),
            "queue_depth": one("SELECT count(*) AS n FROM jobs WHERE status IN ('queued', 'running')"
                               " AND kind LIKE 'dicom_node.%'"),
            "jobs_failed": one("SELECT count(*) AS n FROM jobs WHERE status = 'failed' AND kind LIKE 'dicom_node.%'"),
            "outbox_pending": one("SELECT count(*) AS n FROM dicom_outbox WHERE status = 'pending'"),
            "outbox_failed": one("SELECT count(*) AS n FROM dicom_outbox WHERE status = 'failed'"),
        }

    def dicom_outbox_add(self, session_id: str, export_id: str, file_names: list[str], destination: dict,
                         max_attempts: int = 8) -> list[int]:
        """Queue an export's files for C-STORE to ``destination`` (ae_title, host, port)."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            ids = [int(tx.execute(
                "INSERT INTO dicom_outbox (session_id, export_id, file_name, ae_title, host, port, max_attempts,"
                " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, export_id, name, destination["ae_title"], destination["host"], int(destination["port"]),
                 max_attempts, stamp, stamp, stamp)).lastrowid) for name in file_names]
            self._event(tx, session_id, "dicom.outbox_queued", {"export_id": export_id, "items": ids})
        return ids

    def dicom_outbox_due(self, limit: int = 20) -> list[dict]:
        """Pending outbox items whose next attempt is due, oldest first."""
        return self.db.query("SELECT * FROM dicom_outbox WHERE status = 'pending' AND next_attempt_at <= ?"
                             " ORDER BY id LIMIT ?", (now_iso(), limit))

    def dicom_outbox_result(self, item_id: int, *, status_code: int | None, error: str | None,
                            retry_in_s: float) -> str:
        """Record one send attempt: ``sent``, ``pending`` (retry after ``retry_in_s``) or ``failed``."""
        with self.db.transaction() as tx:
            row = tx.execute("SELECT session_id, attempts, max_attempts FROM dicom_outbox WHERE id = ?",
                             (item_id,)).fetchone()
            attempts = row[1] + 1
            state = "sent" if error is None else ("pending" if attempts < row[2] else "failed")
            due = datetime.fromtimestamp(datetime.now(UTC).timestamp() + retry_in_s, UTC)
            tx.execute("UPDATE dicom_outbox SET status = ?, attempts = ?, last_status = ?, error = ?,"
                       " next_attempt_at = ?, updated_at = ? WHERE id = ?",
                       (state, attempts, status_code, error, due.isoformat(timespec="milliseconds"), now_iso(),
                        item_id))
            self._event(tx, row[0], f"dicom.outbox_{state}", {"item_id": item_id, "status": status_code,
                                                              "error": error})
        return state

    # -- exports -----------------------------------------------------------------------
    def add_export(self, session_id: str, export_format: str, files: list[tuple[str, bytes, str]], *,
                   options: dict | None = None, missing: list[str] | None = None) -> dict:
        """Keep an export encrypted: each ``(name, data, media_type)`` as a blob, then one row.

        Blobs are written (durably) before the row is committed; a failure removes them.
        """
        self.get_session(session_id)
        export_id, stamp, written, entries = new_id(), now_iso(), [], []
        try:
            for name, data, media_type in files:
                blob_id = uuid.uuid4().hex
                size, sha256 = self.blobs.write_bytes(blob_id, data)
                written.append(blob_id)
                entries.append({"name": name, "blob_id": blob_id, "size": size, "sha256": sha256,
                                "media_type": media_type})
            with self.db.transaction() as tx:
                tx.executemany("INSERT INTO blobs (id, kind, size, sha256, created_at) VALUES (?, 'export', ?, ?, ?)",
                               [(e["blob_id"], e["size"], e["sha256"], stamp) for e in entries])
                tx.execute("INSERT INTO exports (id, session_id, format, files, options, missing, created_at)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (export_id, session_id, export_format, _dumps(entries), _dumps(options or {}),
                            _dumps(missing or []), stamp))
                self._event(tx, session_id, "export.created", {"export_id": export_id, "format": export_format})
        except BaseException:
            for blob_id in written:
                self.blobs.delete(blob_id)
            raise
        return self.get_export(session_id, export_id)

    def get_export(self, session_id: str, export_id: str) -> dict:
        """One kept export; ``INVALID_ARGUMENT`` if absent or another session's."""
        rows = self.db.query("SELECT * FROM exports WHERE id = ? AND session_id = ?", (export_id, session_id))
        if not rows:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no export {export_id!r} in this session")
        return _decode_row(rows[0])

    def list_exports(self, session_id: str) -> list[dict]:
        """A session's kept exports, oldest first."""
        rows = self.db.query("SELECT * FROM exports WHERE session_id = ? ORDER BY created_at, rowid", (session_id,))
        return [_decode_row(r) for r in rows]

    def export_bytes(self, session_id: str, export_id: str, name: str) -> bytes:
        """Decrypt one file of a kept export."""
        for entry in self.get_export(session_id, export_id)["files"]:
            if entry["name"] == name:
                return self.blobs.read_bytes(entry["blob_id"])
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"export {export_id!r} has no file {name!r}")

    # -- agent: runs, trace, conversation memory, user-input requests -------------------
    # Written by engine.agent. A run's state is JSON (tool outputs by id, never pixels),
    # so a paused run (step_by_step, need_input) resumes in any process.
    AGENT_RUN_STATUSES = ("running", "in_progress", "need_input", "completed", "failed")
    AGENT_INPUT_TYPES = ("select_region", "confirm", "choose", "draw")

    def create_agent_run(self, session_id: str, *, run_id: str, task: str, mode: str, pipeline: str,
                         image_id: str | None, state: dict, owner: str | None = None) -> dict:
        """Insert a run row (status ``running``) and announce it (``agent.run_created``)."""
        self.get_session(session_id)
        stamp = now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO agent_runs (id, session_id, image_id, task, mode, pipeline, status, state, owner,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (run_id, session_id, image_id, task, mode, pipeline, _dumps(state), owner, stamp, stamp),
            )
            self._event(tx, session_id, "agent.run_created",
                        {"run_id": run_id, "image_id": image_id, "mode": mode, "pipeline": pipeline})
        return self.get_agent_run(run_id)

    def update_agent_run(self, run_id: str, *, status: str | None = None, state: dict | None = None,
                         report: dict | None = None, result: dict | None = None,
                         error: dict | None = None, owner: str | None = None) -> None:
        """Change a run's status/state/report/result/error (``agent.run_updated`` on a status change)."""
        if status is not None and status not in self.AGENT_RUN_STATUSES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"unknown agent run status {status!r}")
        changes: dict[str, Any] = {}
        for name, value in (("state", state), ("report", report), ("result", result), ("error", error)):
            if value is not None:
                changes[name] = _dumps(value)
        if status is not None:
            changes["status"] = status
        if owner is not None:
            changes["owner"] = owner
        if not changes:
            return
        with self.db.transaction() as tx:
            row = tx.execute("SELECT session_id, status FROM agent_runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no agent run {run_id!r}")
            assignments = ", ".join(f"{k} = ?" for k in changes)
            tx.execute(f"UPDATE agent_runs SET {assignments}, updated_at = ? WHERE id = ?",
                       (*changes.values(), now_iso(), run_id))
            if status is not None and status != row[1]:
                self._event(tx, row[0], "agent.run_updated", {"run_id": run_id, "status": status})

    def get_agent_run(self, run_id: str, session_id: str | None = None) -> dict:
        """One run row (JSON columns decoded); ``INVALID_ARGUMENT`` if absent or another session's."""
        rows = self.db.query("SELECT * FROM agent_runs WHERE id = ?", (run_id,))
        if not rows or (session_id is not None and rows[0]["session_id"] != session_id):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no agent run {run_id!r} in this session",
                                 run_id=run_id)
        return _decode_agent_row(rows[0], ("state", "report", "result", "error"))

    def list_agent_runs(self, session_id: str, status: str | None = None) -> list[dict]:
        """A session's runs, oldest first (optionally of one status); states left out."""
        sql, params = ("SELECT id, session_id, image_id, task, mode, pipeline, status, error, created_at,"
                       " updated_at FROM agent_runs WHERE session_id = ?"), [session_id]
        if status is not None:
            sql, params = sql + " AND status = ?", [*params, status]
        rows = self.db.query(sql + " ORDER BY created_at, rowid", tuple(params))
        return [_decode_agent_row(r, ("error",)) for r in rows]

    def add_agent_trace(self, run_id: str, session_id: str, seq: int, event: dict) -> None:
        """Append one trace event of a run and its outbox row (``agent.trace``) in one transaction.

        Joins the caller's transaction when there is one, so a tool's own writes and its
        trace event commit (or roll back) together.
        """
        stamp = now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO agent_trace (run_id, seq, session_id, kind, step_id, tool_id, status, payload,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, seq, session_id, event.get("kind", ""), event.get("step_id"), event.get("tool_id"),
                 event.get("status"), _dumps(event), stamp),
            )
            self._event(tx, session_id, "agent.trace", {
                "run_id": run_id, "seq": seq, "kind": event.get("kind"), "step_id": event.get("step_id"),
                "tool_id": event.get("tool_id"), "status": event.get("status")})

    def list_agent_trace(self, run_id: str) -> list[dict]:
        """A run's trace events, in order."""
        rows = self.db.query("SELECT payload FROM agent_trace WHERE run_id = ? ORDER BY seq", (run_id,))
        return [json.loads(r["payload"]) for r in rows]

    def add_agent_turn(self, session_id: str, role: str, kind: str, content: str, *,
                       sources: list | None = None, run_id: str | None = None,
                       image_id: str | None = None) -> int:
        """Append a conversation turn (``agent.turn``); returns its id."""
        if role not in ("user", "agent"):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"turn role must be user or agent, not {role!r}")
        with self.db.transaction() as tx:
            cursor = tx.execute(
                "INSERT INTO agent_turns (session_id, run_id, image_id, role, kind, content, sources, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, run_id, image_id, role, kind, content, _dumps(sources or []), now_iso()),
            )
            turn_id = int(cursor.lastrowid)
            self._event(tx, session_id, "agent.turn", {"turn_id": turn_id, "role": role, "kind": kind,
                                                       "run_id": run_id})
        return turn_id

    def list_agent_turns(self, session_id: str, *, after: int = 0, limit: int | None = None) -> list[dict]:
        """Turns with ``id > after``, oldest first; with ``limit``, only the newest ``limit`` of them."""
        if limit is None:
            rows = self.db.query("SELECT * FROM agent_turns WHERE session_id = ? AND id > ? ORDER BY id",
                                 (session_id, after))
        else:
            rows = self.db.query(
                "SELECT * FROM (SELECT * FROM agent_turns WHERE session_id = ? AND id > ? ORDER BY id DESC"
                " LIMIT ?) ORDER BY id", (session_id, after, limit))
        return [_decode_agent_row(r, ("sources",)) for r in rows]

    def get_agent_memory(self, session_id: str) -> dict:
        """The session's running summary: ``{"summary", "summarized_until"}`` (empty when none)."""
        rows = self.db.query("SELECT summary, summarized_until, updated_at FROM agent_memory WHERE session_id = ?",
                             (session_id,))
        return rows[0] if rows else {"summary": "", "summarized_until": 0, "updated_at": None}

    def set_agent_memory(self, session_id: str, summary: str, summarized_until: int) -> None:
        """Replace the session's running summary (turns up to ``summarized_until`` are folded in)."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO agent_memory (session_id, summary, summarized_until, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(session_id) DO UPDATE SET summary = excluded.summary,"
                " summarized_until = excluded.summarized_until, updated_at = excluded.updated_at",
                (session_id, summary, int(summarized_until), stamp),
            )

    def create_input_request(self, session_id: str, input_type: str, prompt: str, *,
                             options: list | None = None, run_id: str | None = None,
                             step_id: str | None = None) -> dict:
        """A pending request for user input (``agent.input_requested``), for the canvas to answer."""
        self.get_session(session_id)
        if input_type not in self.AGENT_INPUT_TYPES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"input_type must be one of {', '.join(self.AGENT_INPUT_TYPES)}, not {input_type!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "prompt must be a non-empty string")
        if options is not None and not isinstance(options, list):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "options must be a list")
        request_id = new_id()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO agent_requests (id, session_id, run_id, step_id, input_type, prompt, options, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (request_id, session_id, run_id, step_id, input_type, prompt, _dumps(options or []), now_iso()),
            )
            self._event(tx, session_id, "agent.input_requested",
                        {"request_id": request_id, "run_id": run_id, "input_type": input_type})
        return self.get_input_request(request_id)

    def get_input_request(self, request_id: str) -> dict:
        """One user-input request; ``INVALID_ARGUMENT`` if there is none."""
        rows = self.db.query("SELECT * FROM agent_requests WHERE id = ?", (request_id,))
        if not rows:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no user-input request {request_id!r}",
                                 request_id=request_id)
        return _decode_agent_row(rows[0], ("options", "answer"))

    def answer_input_request(self, request_id: str, answer: Any) -> dict:
        """Record the answer of a pending request (``agent.input_answered``); answered once only."""
        with self.db.transaction() as tx:
            row = tx.execute("SELECT session_id, status, run_id FROM agent_requests WHERE id = ?",
                             (request_id,)).fetchone()
            if row is None:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no user-input request {request_id!r}",
                                     request_id=request_id)
            if row[1] != "pending":
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                     f"user-input request {request_id!r} is already {row[1]}", request_id=request_id)
            tx.execute("UPDATE agent_requests SET status = 'answered', answer = ?, answered_at = ? WHERE id = ?",
                       (_dumps(answer), now_iso(), request_id))
            self._event(tx, row[0], "agent.input_answered", {"request_id": request_id, "run_id": row[2]})
        return self.get_input_request(request_id)

    def cancel_input_requests(self, run_id: str) -> int:
        """Cancel a run's pending requests (the run ended without them); returns how many."""
        with self.db.transaction() as tx:
            rows = tx.execute("SELECT id, session_id FROM agent_requests WHERE run_id = ? AND status = 'pending'",
                              (run_id,)).fetchall()
            tx.execute("UPDATE agent_requests SET status = 'cancelled', answered_at = ?"
                       " WHERE run_id = ? AND status = 'pending'", (now_iso(), run_id))
            for request_id, session_id in rows:
                self._event(tx, session_id, "agent.input_cancelled", {"request_id": request_id, "run_id": run_id})
            return len(rows)

    def list_input_requests(self, session_id: str, status: str | None = None) -> list[dict]:
        """A session's user-input requests, oldest first (optionally of one status)."""
        sql, params = "SELECT * FROM agent_requests WHERE session_id = ?", [session_id]
        if status is not None:
            sql, params = sql + " AND status = ?", [*params, status]
        rows = self.db.query(sql + " ORDER BY created_at, rowid", tuple(params))
        return [_decode_agent_row(r, ("options", "answer")) for r in rows]


# -- annotation helpers ----------------------------------------------------------------
#: Longest label accepted (characters): a short name shown on the canvas.
ANNOTATION_LABEL_MAX_CHARS = 500


def _annotation_not_found(annotation_id: str) -> MedVisionError:
    return MedVisionError(ErrorCode.ANNOTATION_NOT_FOUND,
                          f"no annotation with id {annotation_id!r} in this session",
                          annotation_id=annotation_id)


def _annotation_fields(*, label: Any, confidence: Any, source: Any, notes: Any, layer: Any,
                       style: Any, analysis_id: Any) -> dict[str, Any]:
    """Check the non-geometric annotation fields; returns them normalised for storage."""
    def bad(message: str) -> MedVisionError:
        return MedVisionError(ErrorCode.INVALID_ARGUMENT, message)

    label = "" if label is None else label
    if not isinstance(label, str) or len(label) > ANNOTATION_LABEL_MAX_CHARS:
        raise bad(f"label must be a string of at most {ANNOTATION_LABEL_MAX_CHARS} characters")
    if confidence is not None:
        if isinstance(confidence, bool) or not isinstance(confidence, int | float) \
                or not (0.0 <= float(confidence) <= 1.0):
            raise bad(f"confidence must be a number in 0..1, not {confidence!r}")
        confidence = float(confidence)
    if source not in Store.ANNOTATION_SOURCES:
        raise bad(f"source must be ai, user or system, not {source!r}")
    for name, value in (("notes", notes), ("layer", layer), ("analysis_id", analysis_id)):
        if value is not None and not isinstance(value, str):
            raise bad(f"{name} must be a string")
    style = {} if style is None else style
    if not isinstance(style, dict):
        raise bad("style must be a JSON object")
    try:
        json.dumps(style, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise bad(f"style is not plain JSON ({exc})") from exc
    return {"label": label, "confidence": confidence, "source": source, "notes": notes or None,
            "layer": layer or None, "style": style, "analysis_id": analysis_id or None}


def _annotation_coordinates(image: dict, annotation_type: Any, coordinates: Any) -> Any:
    """Validate coordinates against the image row's size; measurements get their value."""
    from engine.analysis.measurements import measure_annotation  # analysis imports heavy deps

    stored = annotation_coordinates(annotation_type, coordinates, image["rows"], image["columns"])
    if annotation_type == "measurement":
        spacing = (image.get("metadata") or {}).get("pixel_spacing")
        stored["result"] = measure_annotation(stored, spacing if isinstance(spacing, dict) else None)
    return stored


def _decode_agent_row(row: dict, json_columns: tuple[str, ...]) -> dict:
    """An agent table row with its JSON columns decoded."""
    return {k: (_loads(v) if k in json_columns else v) for k, v in row.items()}
