"""The append-only audit log: its own SQLCipher file, a hash chain, appends from many processes.

Each append runs in one ``BEGIN IMMEDIATE`` transaction that reads the head (newest seq
and hash), inserts the records chained to it and moves the head, so the desktop, the
node and a CLI appending at once still make one linear chain. Triggers refuse UPDATE and
DELETE on the table; :meth:`AuditLog.verify` finds what was changed anyway (someone with
the key editing the file).

:meth:`AuditLog.record` writes at once (the facade's calls); :meth:`AuditLog.record_soon`
queues for a writer thread that appends what has queued within ``LINGER_S`` in one
transaction (the DICOM node's receipts: one fsync for a burst instead of one per instance,
off the C-STORE path; a crash loses at most the records of that moment).
:meth:`AuditLog.flush` and :meth:`AuditLog.close` wait for the queue.
"""

from __future__ import annotations

import getpass
import logging
import os
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.errors import ErrorCode, MedVisionError
from engine.store.audit.chain import GENESIS, HASHED, Verification, record_hash, verify
from engine.store.audit.codes import (
    ACTION_CODES,
    DEFAULT_IDENTIFIERS,
    IDENTIFIERS,
    OUTCOMES,
    AuditEvent,
)
from engine.store.common import dumps, now_iso
from engine.store.database import Database

log = logging.getLogger(__name__)

AUDIT_DATABASE_NAME = "audit.db"
MIGRATIONS_PACKAGE = "engine.store.audit"
#: Records waiting for the writer thread, at most (``record_soon`` blocks past it).
MAX_QUEUED = 10_000
#: Records one writer transaction takes from the queue, at most.
MAX_BATCH = 500
#: How long the writer collects records after the first before writing them (group commit:
#: at most a few fsyncs a second whatever the rate; a crash loses at most this much).
LINGER_S = 0.25
#: Identifier lookups kept per process.
LOOKUP_CACHE_ENTRIES = 4096
#: Rows :meth:`AuditLog.records` reads per query while streaming.
PAGE = 1000
#: How far from a broken record :meth:`AuditLog.verify` looks for its predecessor before
#: scanning the whole table (records are not indexed by hash: that index would cost every append).
NEAR = 2000


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): the number
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


@dataclass(frozen=True)
class AuditEntry:
    """One record before it is chained: who, what, on which object, how it ended."""

    front_end: str
    event: AuditEvent
    action_code: str
    operation: str
    outcome: int = 0
    outcome_detail: str | None = None
    client: str | None = None
    session_id: str | None = None
    image_id: str | None = None
    study_uid: str | None = None
    sop_uid: str | None = None
    patient_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    time: str = field(default_factory=now_iso)

    def __post_init__(self) -> None:
        if self.action_code not in ACTION_CODES:
            raise ValueError(f'Argument "action_code" must be one of C, R, U, D, E, not {self.action_code!r}')
        if self.outcome not in OUTCOMES:
            raise ValueError(f'Argument "outcome" must be 0, 4, 8 or 12, not {self.outcome!r}')


class AuditLog:
    """The audit database of one data directory (opened on first use)."""

    def __init__(self, path: Path, key: bytes, *, main_db: Database | None = None) -> None:
        self.path, self._key, self._main_db = path, key, main_db
        self.enabled = True
        self.identifiers: frozenset[str] = frozenset(DEFAULT_IDENTIFIERS)
        self._db: Database | None = None
        self._open_lock = threading.Lock()
        self._queue: queue.Queue[AuditEntry | None] = queue.Queue(MAX_QUEUED)
        self._writer: threading.Thread | None = None
        self._lookups: OrderedDict[tuple[str | None, str | None], dict[str, str | None]] = OrderedDict()
        self._lookups_lock = threading.Lock()
        self._process = {"os_user": _os_user(), "host": socket.gethostname(), "pid": os.getpid()}

    @property
    def db(self) -> Database:
        with self._open_lock:
            if self._db is None:
                self._db = Database(self.path, self._key, migrations_package=MIGRATIONS_PACKAGE)
            return self._db

    def close(self) -> None:
        """Write what is queued, stop the writer and close the database."""
        writer = self._writer
        if writer is not None:
            self._queue.put(None)
            writer.join()
            self._writer = None
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- writing -------------------------------------------------------------------------
    def record(self, entry: AuditEntry) -> int | None:
        """Append one record now; its seq (None when auditing is switched off)."""
        if not self.enabled:
            return None
        return self.append([entry])[0]

    def record_soon(self, entry: AuditEntry) -> None:
        """Queue a record for the writer thread (started on first use)."""
        if not self.enabled:
            return
        with self._open_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_queued, name="audit-writer", daemon=True)
                self._writer.start()
        self._queue.put(entry)

    def flush(self) -> None:
        """Wait until every queued record is written."""
        if self._writer is not None:
            self._queue.join()

    def append(self, entries: list[AuditEntry]) -> list[int]:
        """Chain ``entries`` to the head in one write transaction; their seqs."""
        rows = [self._row(entry) for entry in entries]
        seqs = []
        with self.db.transaction() as tx:
            head = tx.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            seq, prev_hash = head if head else (0, GENESIS)
            values = []
            for row in rows:
                seq += 1
                row["seq"] = seq
                row["prev_hash"], row["hash"] = prev_hash, record_hash(prev_hash, row)
                values.append(tuple(row[c] for c in _COLUMNS))
                prev_hash = row["hash"]
                seqs.append(seq)
            tx.executemany(_INSERT, values)
            tx.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) "
                       "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash", (seq, prev_hash))
        return seqs

    def _row(self, entry: AuditEntry) -> dict[str, Any]:
        """The stored columns of an entry: process stamps, identifiers the policy allows (looked up
        when missing), nothing else."""
        entry = self._with_identifiers(entry)
        row = {"time": entry.time, "front_end": entry.front_end, **self._process, "client": entry.client,
               "event_id": entry.event.code, "action": entry.event.display, "action_code": entry.action_code,
               "operation": entry.operation, "outcome": entry.outcome, "outcome_detail": entry.outcome_detail,
               "details": dumps(entry.details)}
        for name in IDENTIFIERS:
            row[name] = getattr(entry, name) if name in self.identifiers else None
        return row

    def _write_queued(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            deadline = time.monotonic() + LINGER_S
            while len(batch) < MAX_BATCH and batch[-1] is not None:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            stop = None in batch
            entries = [entry for entry in batch if entry is not None]
            try:
                if entries:
                    self.append(entries)
            except Exception:  # noqa: BLE001 - the writer must outlive one failed write; the loss is logged
                log.exception("%d audit record(s) could not be written", len(entries))
            finally:
                for _ in batch:
                    self._queue.task_done()

    # -- identifiers ---------------------------------------------------------------------
    def identifiers_of(self, session_id: str | None, image_id: str | None) -> dict[str, str | None]:
        """Study UID, SOP Instance UID and Patient ID of an image (or a session's study UID) from the
        main database; cached, and empty once the rows are gone."""
        key = (session_id, image_id)
        with self._lookups_lock:
            if key in self._lookups:
                self._lookups.move_to_end(key)
                return self._lookups[key]
        found = self._look_up(session_id, image_id)
        if found:
            with self._lookups_lock:
                self._lookups[key] = found
                while len(self._lookups) > LOOKUP_CACHE_ENTRIES:
                    self._lookups.popitem(last=False)
        return found

    def _look_up(self, session_id: str | None, image_id: str | None) -> dict[str, str | None]:
        if self._main_db is None or not (session_id or image_id):
            return {}
        try:
            if image_id:
                rows = self._main_db.query(
                    "SELECT session_id, study_instance_uid, sop_instance_uid, json_extract(patient, '$.PatientID') "
                    "AS patient_id FROM images WHERE id = ?", (image_id,))
                if rows:
                    row = rows[0]
                    return {"session_id": row["session_id"], "study_uid": row["study_instance_uid"],
                            "sop_uid": row["sop_instance_uid"], "patient_id": row["patient_id"]}
            if session_id:  # a study's session names its UID; a session of files, its images do
                rows = self._main_db.query(
                    "SELECT coalesce(s.study_instance_uid, (SELECT i.study_instance_uid FROM images i WHERE "
                    "i.session_id = s.id AND i.study_instance_uid IS NOT NULL LIMIT 1)) AS uid "
                    "FROM sessions s WHERE s.id = ?", (session_id,))
                if rows and rows[0]["uid"]:
                    return {"study_uid": rows[0]["uid"]}
        except MedVisionError:  # the main store closed or busy: the record keeps the ids it has
            log.warning("audit identifiers of session %s image %s could not be looked up", session_id, image_id)
        return {}

    def _with_identifiers(self, entry: AuditEntry) -> AuditEntry:
        wanted = {"study_uid", "sop_uid", "patient_id"} & self.identifiers
        if not any(getattr(entry, name) is None for name in wanted | {"session_id"}):
            return entry
        found = self.identifiers_of(entry.session_id, entry.image_id)
        missing = {name: value for name, value in found.items() if getattr(entry, name) is None and value}
        return replace(entry, **missing) if missing else entry

    # -- reading -------------------------------------------------------------------------
    def records(self, *, since: str | None = None, session_id: str | None = None,
                limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Records in seq order, from ``since`` (ISO time, inclusive) and of one session, streamed."""
        where, params = [], []
        if since:
            where.append("time >= ?")
            params.append(since)
        if session_id:
            where.append("session_id = ?")
            params.append(session_id)
        after, given = 0, 0
        while limit is None or given < limit:
            page = self.db.query(
                f"SELECT * FROM audit WHERE seq > ? {''.join(' AND ' + w for w in where)} ORDER BY seq LIMIT ?",
                (after, *params, PAGE))
            for row in page:
                if limit is not None and given >= limit:
                    return
                given += 1
                yield row
            if len(page) < PAGE:
                return
            after = page[-1]["seq"]

    def head(self) -> tuple[int, str] | None:
        """The newest record's ``(seq, hash)``, or None when nothing was recorded."""
        rows = self.db.query("SELECT seq, hash FROM audit_head WHERE id = 1")
        return (rows[0]["seq"], rows[0]["hash"]) if rows else None

    def verify(self) -> Verification:
        """Walk the whole chain; see :func:`engine.store.audit.chain.verify`."""
        try:
            head = self.head()
            return verify(self.records(), head, self._by_hash)
        except MedVisionError as exc:
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"the audit log cannot be read: {exc.message}") from exc

    def _by_hash(self, digest: str, near_seq: int) -> dict[str, Any] | None:
        """The row holding ``digest``: within ``NEAR`` seqs of ``near_seq`` first, then anywhere."""
        rows = self.db.query("SELECT * FROM audit WHERE seq BETWEEN ? AND ? AND hash = ? LIMIT 1",
                             (near_seq - NEAR, near_seq + NEAR, digest))
        rows = rows or self.db.query("SELECT * FROM audit WHERE hash = ? LIMIT 1", (digest,))
        return rows[0] if rows else None


_COLUMNS = (*HASHED, "prev_hash", "hash")
_INSERT = f"INSERT INTO audit ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
