"""The store: every persistent thing of a data directory, behind typed methods.

Each write runs in one transaction together with its ``events`` row, so any process
following the outbox sees exactly the committed changes, in order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import ErrorCode, MedVisionError
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
    "metadata", "patient", "classification", "detections", "segmentation", "vqa_history",
    "result", "coordinates", "style", "data", "payload",
}


def _decode_row(row: dict) -> dict:
    return {k: (_loads(v) if k in _JSON_COLUMNS else v) for k, v in row.items()}


class Store:
    """Encrypted store of one data directory (database + blobs)."""

    def __init__(self, home: Path, key: bytes) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
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
            tx.execute("DELETE FROM sessions WHERE id = ?", (session_id,))  # cascades to its rows
            orphans = [b for b in blob_ids
                       if tx.execute("SELECT 1 FROM images WHERE blob_id = ? LIMIT 1", (b,)).fetchone() is None]
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
    def add_analysis(self, session_id: str, image_id: str, kind: str, result: dict) -> dict:
        """Persist one analysis result (the full JSON plus the spec's columns)."""
        analysis_id, stamp = new_id(), now_iso()
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
