"""Sessions and their images (the aggregate root and its members), plus interactions and counts."""

from __future__ import annotations

import hashlib

from engine.config import SESSION_SOURCES
from engine.errors import ErrorCode, MedVisionError
from engine.events import EventKind
from engine.imaging.records import DOCUMENT_SOP_CLASS_PREFIXES, is_document
from engine.store.blobs import BlobStore
from engine.store.common import decode_row, dumps, loads, new_blob_id, new_id, now_iso
from engine.store.database import Connection, Database
from engine.store.erasure import ErasureJournal
from engine.store.events import EventLog

#: Tables whose rows :meth:`SessionRepository.count` counts per session.
COUNTED_TABLES = frozenset({"images", "analyses", "annotations", "interactions"})

#: SQL for a session ``s``'s last activity: its newest event (every change writes one), else its row's update.
LAST_ACTIVE = ("max(s.updated_at, coalesce((SELECT e.created_at FROM events e WHERE e.session_id = s.id"
               " ORDER BY e.id DESC LIMIT 1), s.updated_at))")


#: SQL condition: an ``images`` row that is no document (:func:`engine.imaging.records.is_document`).
NOT_DOCUMENT = " AND ".join(f"coalesce(sop_class_uid, '') NOT LIKE '{prefix}%'" for prefix in DOCUMENT_SOP_CLASS_PREFIXES)


class SessionRepository:
    """The ``sessions`` table, their retention (pins, tombstones) and erasing a session with everything in it."""

    def __init__(self, db: Database, blobs: BlobStore, events: EventLog, *, embeddings: BlobStore,
                 journal: ErasureJournal) -> None:
        self.db, self.blobs, self.events = db, blobs, events
        self.embeddings, self.journal = embeddings, journal

    def insert(self, tx: Connection, *, name: str | None, metadata: dict, study_instance_uid: str | None,
               stamp: str, source: str | None = None) -> str:
        """Insert a session row and its ``session.created`` event inside ``tx``; returns the id.

        ``source`` is where the session came from (``SESSION_SOURCES``; default ``file``)."""
        session_id = new_id()
        origin = source or "file"
        if origin not in SESSION_SOURCES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"unknown session source {origin!r}",
                                 allowed=list(SESSION_SOURCES))
        tx.execute(
            "INSERT INTO sessions (id, name, study_instance_uid, metadata, created_at, updated_at, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session_id, name, study_instance_uid, dumps(metadata), stamp, stamp, origin),
        )
        payload = {"session_id": session_id, **({"source": source} if source else {})}
        self.events.append(tx, session_id, EventKind.SESSION_CREATED, payload)
        return session_id

    def create(self, name: str | None = None, metadata: dict | None = None,
               study_instance_uid: str | None = None, source: str = "file") -> dict:
        """Create a study session and announce it (``session.created``)."""
        with self.db.transaction() as tx:
            session_id = self.insert(tx, name=name, metadata=metadata or {}, study_instance_uid=study_instance_uid,
                                     stamp=now_iso(), source=source)
        return self.get(session_id)

    def get(self, session_id: str) -> dict:
        """One session row; ``SESSION_EXPIRED`` if it was purged, else ``SESSION_NOT_FOUND`` if there is none."""
        rows = self.db.query("SELECT * FROM sessions WHERE id = ?", (session_id,))
        if not rows:
            raise self._missing(session_id)
        return decode_row(rows[0])

    def by_study(self, study_instance_uid: str) -> dict | None:
        """The session of a Study Instance UID (received or retrieved: the session's own; else the
        newest session holding an image of it, as a file added to a session), or None."""
        rows = self.db.query("SELECT * FROM sessions WHERE study_instance_uid = ?", (study_instance_uid,))
        if not rows:
            rows = self.db.query("SELECT s.* FROM sessions s JOIN images i ON i.session_id = s.id"
                                 " WHERE i.study_instance_uid = ? ORDER BY i.created_at DESC, i.rowid DESC LIMIT 1",
                                 (study_instance_uid,))
        return decode_row(rows[0]) if rows else None

    def of_patient(self, patient_id: str, limit: int = 1000) -> list[dict]:
        """One image row per session whose images carry this Patient ID (any issuer: the
        caller compares issuers), newest sessions first; documents (an SR held with the study)
        are not the study's image."""
        rows = self.db.query(
            "SELECT * FROM images WHERE rowid IN (SELECT min(rowid) FROM images"
            f" WHERE json_extract(patient, '$.PatientID') = ? AND {NOT_DOCUMENT} GROUP BY session_id)"
            " ORDER BY created_at DESC LIMIT ?", (patient_id, limit))
        return [decode_row(r) for r in rows]

    def set_priors(self, session_id: str, priors: list[dict]) -> None:
        """Record the session's priors (in its metadata, ``priors``) and announce them (``session.priors``)."""
        session = self.get(session_id)
        metadata = dict(session["metadata"] or {}) | {"priors": priors}
        with self.db.transaction() as tx:
            tx.execute("UPDATE sessions SET metadata = ?, updated_at = ? WHERE id = ?",
                       (dumps(metadata), now_iso(), session_id))
            self.events.append(tx, session_id, EventKind.SESSION_PRIORS,
                               {"session_id": session_id, "count": len(priors),
                                "prior_session_ids": [p["session_id"] for p in priors if p.get("session_id")]})

    def _missing(self, session_id: str) -> MedVisionError:
        tombstone = self.db.query("SELECT source, expired_at FROM session_tombstones WHERE session_id = ?",
                                  (session_id,))
        if tombstone:
            return MedVisionError(ErrorCode.SESSION_EXPIRED,
                                  f"session {session_id!r} expired and was erased by the retention policy",
                                  session_id=session_id, **tombstone[0])
        return MedVisionError(ErrorCode.SESSION_NOT_FOUND, f"no session with id {session_id!r}",
                              session_id=session_id)

    def recent(self, limit: int = 100) -> list[dict]:
        """Sessions, newest first, with their image counts and last activity."""
        rows = self.db.query(
            f"SELECT s.*, (SELECT count(*) FROM images i WHERE i.session_id = s.id) AS image_count,"
            f" {LAST_ACTIVE} AS last_active_at FROM sessions s ORDER BY s.created_at DESC, s.rowid DESC LIMIT ?",
            (limit,),
        )
        return [decode_row(r) for r in rows]

    def set_pinned(self, session_id: str, pinned: bool) -> dict:
        """Pin (keep past the retention policy) or unpin a session (``session.pinned``)."""
        with self.db.transaction() as tx:
            if tx.execute("UPDATE sessions SET pinned = ? WHERE id = ?", (int(pinned), session_id)).rowcount == 0:
                raise self._missing(session_id)
            self.events.append(tx, session_id, EventKind.SESSION_PINNED,
                               {"session_id": session_id, "pinned": bool(pinned)})
        return self.get(session_id)

    def expired(self, cutoffs: dict[str, str]) -> list[dict]:
        """Unpinned sessions whose last activity is older than their source's cutoff
        (``{source: ISO time}``; a source not named is kept), oldest first."""
        if not cutoffs:
            return []
        rows = self.db.query(f"SELECT s.id, s.source, {LAST_ACTIVE} AS last_active_at FROM sessions s"
                             " WHERE s.pinned = 0 ORDER BY last_active_at")
        return [r for r in rows if r["source"] in cutoffs and r["last_active_at"] < cutoffs[r["source"]]]

    def delete(self, session_id: str, *, expired_before: str | None = None) -> dict | None:
        """Erase a session with everything in it, its files through the erasure journal.

        One transaction deletes the session's rows (cascades, plus its jobs and events),
        the blob rows no other image uses, its kept exports' blobs, and writes the journal
        row naming those files and the image embeddings cached for it; the files go after
        the commit (:class:`~engine.store.erasure.ErasureJournal`). With ``expired_before``
        (a purge) the session is erased only if it is still unpinned and inactive since
        then, checked inside the transaction, and leaves a tombstone; otherwise ``None``.
        """
        stamp = now_iso()
        with self.db.transaction() as tx:
            row = tx.execute(f"SELECT s.source, s.pinned, {LAST_ACTIVE} FROM sessions s WHERE s.id = ?",
                             (session_id,)).fetchone()
            if row is None:
                raise self._missing(session_id)
            source, pinned, last_active = row
            if expired_before is not None and (pinned or last_active >= expired_before):
                return None
            image_ids = [r[0] for r in tx.execute("SELECT id FROM images WHERE session_id = ?", (session_id,))]
            blob_ids = [r[0] for r in tx.execute(
                "SELECT DISTINCT blob_id FROM images WHERE session_id = ? AND blob_id IS NOT NULL", (session_id,))]
            export_blobs = [f["blob_id"] for r in tx.execute("SELECT files FROM exports WHERE session_id = ?",
                                                             (session_id,)) for f in loads(r[0])]
            tx.execute("DELETE FROM jobs WHERE session_id = ?", (session_id,))
            tx.execute("DELETE FROM events WHERE session_id = ?", (session_id,))
            tx.execute("DELETE FROM sessions WHERE id = ?", (session_id,))  # cascades to its rows
            orphans = [b for b in blob_ids
                       if tx.execute("SELECT 1 FROM images WHERE blob_id = ? LIMIT 1", (b,)).fetchone() is None]
            orphans += export_blobs
            tx.executemany("DELETE FROM blobs WHERE id = ?", [(b,) for b in orphans])
            files = [self.blobs.path_for(b) for b in orphans]
            files += [self.embeddings.path_for(b) for image_id in image_ids
                      for b in self.embeddings.ids_of_owner(image_id)]
            if expired_before is not None:
                tx.execute("INSERT OR REPLACE INTO session_tombstones (session_id, source, expired_at)"
                           " VALUES (?, ?, ?)", (session_id, source, stamp))
            journal_id = self.journal.record(tx, session_id, files)
            self.events.append(tx, session_id, EventKind.SESSION_DELETED,
                               {"session_id": session_id, "reason": "expired" if expired_before else "deleted"})
        self.journal.finish(journal_id)
        return {"image_ids": image_ids, "blob_ids": orphans, "files": len(files), "source": source}

    def add_interaction(self, session_id: str, kind: str, data: dict, image_id: str | None = None) -> str:
        """Record a user/agent interaction (upload, region_select, annotation, query, export)."""
        interaction_id = new_id()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO interactions (id, session_id, image_id, type, data, timestamp) VALUES (?, ?, ?, ?, ?, ?)",
                (interaction_id, session_id, image_id, kind, dumps(data), now_iso()),
            )
        return interaction_id

    def count(self, table: str, session_id: str) -> int:
        """Rows of ``table`` belonging to a session."""
        if table not in COUNTED_TABLES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"unknown table {table!r}")
        return int(self.db.query(f"SELECT count(*) AS n FROM {table} WHERE session_id = ?", (session_id,))[0]["n"])


class ImageRepository:
    """The ``images`` table, its ``blobs`` rows and encrypted files, and the session's current image."""

    def __init__(self, db: Database, blobs: BlobStore, events: EventLog, sessions: SessionRepository) -> None:
        self.db, self.blobs, self.events, self.sessions = db, blobs, events, sessions

    def find_blob(self, sha256: str, size: int) -> str | None:
        """The id of a stored blob with this content, if any (read inside an open transaction too)."""
        rows = self.db.query("SELECT id FROM blobs WHERE sha256 = ? AND size = ?", (sha256, size))
        return rows[0]["id"] if rows else None

    @staticmethod
    def insert_blob(tx: Connection, blob_id: str, size: int, sha256: str, stamp: str) -> None:
        """Record an image blob file (already durable) inside ``tx``."""
        tx.execute("INSERT INTO blobs (id, kind, size, sha256, created_at) VALUES (?, 'image', ?, ?, ?)",
                   (blob_id, size, sha256, stamp))

    def insert(self, tx: Connection, session_id: str, record: dict, *, image_id: str, blob_id: str, sha256: str,
               stamp: str, source: str | None = None) -> None:
        """Insert an image row, make it the session's current image (a document never is), announce it
        (``image.added``)."""
        columns = dict(record, id=image_id, session_id=session_id, blob_id=blob_id, sha256=sha256, created_at=stamp)
        for key in ("metadata", "patient"):
            columns[key] = dumps(columns.get(key) or {})
        tx.execute(f"INSERT INTO images ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                   tuple(columns.values()))
        if is_document(record):
            tx.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (stamp, session_id))
        else:
            tx.execute("UPDATE sessions SET current_image_id = ?, updated_at = ? WHERE id = ?",
                       (image_id, stamp, session_id))
        payload = {"image_id": image_id, "type": record.get("type"), **({"source": source} if source else {})}
        self.events.append(tx, session_id, EventKind.IMAGE_ADDED, payload)

    def add(self, session_id: str, *, blob_data: bytes, record: dict) -> dict:
        """Store an image's bytes encrypted and its row, in that order (blob durable first).

        ``record`` holds the ``images`` columns (type, format, modality, metadata, patient,
        source_path, source_name, rows, columns, frame_count, UIDs...). An identical file
        already stored as a blob is not written twice.
        """
        self.sessions.get(session_id)
        sha256 = hashlib.sha256(blob_data).hexdigest()
        existing = self.find_blob(sha256, len(blob_data))
        blob_id = existing or new_blob_id()
        if not existing:
            self.blobs.write_bytes(blob_id, blob_data)
        image_id, stamp = new_id(), now_iso()
        try:
            with self.db.transaction() as tx:
                if not existing:
                    self.insert_blob(tx, blob_id, len(blob_data), sha256, stamp)
                self.insert(tx, session_id, record, image_id=image_id, blob_id=blob_id, sha256=sha256, stamp=stamp)
        except BaseException:
            if not existing:
                self.blobs.delete(blob_id)
            raise
        return self.get(image_id)

    def get(self, image_id: str, session_id: str | None = None) -> dict:
        """One image row; ``IMAGE_NOT_FOUND`` if absent (or not in ``session_id``)."""
        rows = self.db.query("SELECT * FROM images WHERE id = ?", (image_id,))
        if not rows or (session_id is not None and rows[0]["session_id"] != session_id):
            raise MedVisionError(
                ErrorCode.IMAGE_NOT_FOUND, f"no image with id {image_id!r} in this session", image_id=image_id
            )
        return decode_row(rows[0])

    def exists(self, image_id: str, session_id: str) -> bool:
        """Whether the session holds this image."""
        return bool(self.db.query("SELECT 1 FROM images WHERE id = ? AND session_id = ?", (image_id, session_id)))

    def in_session(self, session_id: str) -> list[dict]:
        """A session's images in the order they were added."""
        rows = self.db.query("SELECT * FROM images WHERE session_id = ? ORDER BY created_at, rowid", (session_id,))
        return [decode_row(r) for r in rows]

    def imported_among(self, paths: list[str]) -> set[str]:
        """Which of ``paths`` (resolved, absolute) some session imported: an ``images`` row's
        ``source_path``, in any session. Exports never replace such a file."""
        if not paths:
            return set()
        marks = ", ".join("?" for _ in paths)
        rows = self.db.query(f"SELECT DISTINCT source_path FROM images WHERE source_path IN ({marks})", tuple(paths))
        return {r["source_path"] for r in rows}

    def data(self, image: dict) -> bytes:
        """Decrypt an image's original file."""
        return self.blobs.read_bytes(image["blob_id"])

    def set_current(self, session_id: str, image_id: str) -> None:
        """Point the session's focus at one of its images (``session.current_image``)."""
        self.get(image_id, session_id=session_id)
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE sessions SET current_image_id = ?, updated_at = ? WHERE id = ?",
                (image_id, now_iso(), session_id),
            )
            self.events.append(tx, session_id, EventKind.SESSION_CURRENT_IMAGE, {"image_id": image_id})
