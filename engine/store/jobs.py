"""The work queue any process's worker takes jobs from."""

from __future__ import annotations

from typing import Any

from engine.errors import ErrorCode, MedVisionError
from engine.events import EventKind
from engine.store.common import decode_row, dumps, now_iso, row_dict
from engine.store.database import Database
from engine.store.events import EventLog


class JobRepository:
    """The ``jobs`` table: queue, claim, finish, requeue after a crash."""

    def __init__(self, db: Database, events: EventLog) -> None:
        self.db, self.events = db, events

    def enqueue(
        self, kind: str, payload: dict, *, session_id: str | None = None,
        image_id: str | None = None, max_attempts: int = 3,
    ) -> int:
        """Queue work for any process's worker (``job.queued``); joins an open transaction."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            cursor = tx.execute(
                "INSERT INTO jobs (kind, session_id, image_id, payload, max_attempts, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kind, session_id, image_id, dumps(payload), max_attempts, stamp, stamp),
            )
            job_id = int(cursor.lastrowid)
            self.events.append(tx, session_id, EventKind.JOB_QUEUED, {"job_id": job_id, "kind": kind, "image_id": image_id})
        return job_id

    def claim(self, worker: str, kinds: list[str] | None = None) -> dict | None:
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
            job = row_dict(cursor, row)
            stamp = now_iso()
            tx.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = ?,"
                " heartbeat_at = ?, updated_at = ? WHERE id = ?",
                (worker, stamp, stamp, job["id"]),
            )
            self.events.append(tx, job["session_id"], EventKind.JOB_RUNNING, {"job_id": job["id"], "kind": job["kind"]})
        job.update(status="running", attempts=job["attempts"] + 1, worker=worker)
        return decode_row(job)

    def finish(self, job_id: int, *, result: dict | None = None, error: str | None = None) -> str:
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
                (status, dumps(result) if result is not None else None, error, now_iso(), job_id),
            )
            self.events.append(tx, session_id, EventKind.job(status), {"job_id": job_id, "error": error})
        return status

    def requeue_stale(self, stale_worker_prefixes: list[str] | None = None) -> int:
        """Put jobs left ``running`` by a dead process back in the queue (or fail them), at worker start-up."""
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

    def of_kind(self, kind: str, session_id: str | None = None) -> list[dict]:
        """Jobs of one kind (of one session), oldest first."""
        if session_id is None:
            rows = self.db.query("SELECT * FROM jobs WHERE kind = ? ORDER BY id", (kind,))
        else:
            rows = self.db.query("SELECT * FROM jobs WHERE kind = ? AND session_id = ? ORDER BY id", (kind, session_id))
        return [decode_row(r) for r in rows]

    def get(self, job_id: int) -> dict:
        """One job row."""
        rows = self.db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no job {job_id}")
        return decode_row(rows[0])
