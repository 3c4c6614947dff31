"""Exports the app keeps: each file an encrypted blob, listed by one ``exports`` row."""

from __future__ import annotations

from engine.errors import ErrorCode, MedVisionError
from engine.events import EventKind
from engine.store.blobs import BlobStore
from engine.store.common import decode_row, dumps, new_blob_id, new_id, now_iso
from engine.store.database import Database
from engine.store.events import EventLog
from engine.store.sessions import SessionRepository


class ExportRepository:
    """The ``exports`` table and its blob files."""

    def __init__(self, db: Database, blobs: BlobStore, events: EventLog, sessions: SessionRepository) -> None:
        self.db, self.blobs, self.events, self.sessions = db, blobs, events, sessions

    def add(self, session_id: str, export_format: str, files: list[tuple[str, bytes, str]], *,
            options: dict | None = None, missing: list[str] | None = None) -> dict:
        """Keep an export encrypted: each ``(name, data, media_type)`` as a blob (durable first), then one row.

        A failure removes the blobs already written (``export.created`` on success).
        """
        self.sessions.get(session_id)
        export_id, stamp, written, entries = new_id(), now_iso(), [], []
        try:
            for name, data, media_type in files:
                blob_id = new_blob_id()
                size, sha256 = self.blobs.write_bytes(blob_id, data)
                written.append(blob_id)
                entries.append({"name": name, "blob_id": blob_id, "size": size, "sha256": sha256,
                                "media_type": media_type})
            with self.db.transaction() as tx:
                tx.executemany("INSERT INTO blobs (id, kind, size, sha256, created_at) VALUES (?, 'export', ?, ?, ?)",
                               [(e["blob_id"], e["size"], e["sha256"], stamp) for e in entries])
                tx.execute("INSERT INTO exports (id, session_id, format, files, options, missing, created_at)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (export_id, session_id, export_format, dumps(entries), dumps(options or {}),
                            dumps(missing or []), stamp))
                self.events.append(tx, session_id, EventKind.EXPORT_CREATED,
                                   {"export_id": export_id, "format": export_format})
        except BaseException:
            for blob_id in written:
                self.blobs.delete(blob_id)
            raise
        return self.get(session_id, export_id)

    def get(self, session_id: str, export_id: str) -> dict:
        """One kept export; ``INVALID_ARGUMENT`` if absent or another session's."""
        rows = self.db.query("SELECT * FROM exports WHERE id = ? AND session_id = ?", (export_id, session_id))
        if not rows:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no export {export_id!r} in this session")
        return decode_row(rows[0])

    def in_session(self, session_id: str) -> list[dict]:
        """A session's kept exports, oldest first."""
        rows = self.db.query("SELECT * FROM exports WHERE session_id = ? ORDER BY created_at, rowid", (session_id,))
        return [decode_row(r) for r in rows]

    def file_bytes(self, session_id: str, export_id: str, name: str) -> bytes:
        """Decrypt one file of a kept export."""
        for entry in self.get(session_id, export_id)["files"]:
            if entry["name"] == name:
                return self.blobs.read_bytes(entry["blob_id"])
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"export {export_id!r} has no file {name!r}")
