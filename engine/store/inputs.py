"""Requests for user input an agent run waits on, answered from the canvas."""

from __future__ import annotations

from typing import Any

from engine.errors import ErrorCode, MedVisionError
from engine.events import EventKind
from engine.store.common import decode_row, dumps, new_id, now_iso
from engine.store.database import Database
from engine.store.events import EventLog
from engine.store.sessions import SessionRepository

AGENT_INPUT_TYPES = ("select_region", "confirm", "choose", "draw")
JSON_FIELDS = ("options", "answer")


def request_not_found(request_id: str) -> MedVisionError:
    """The ``INVALID_ARGUMENT`` error for an unknown request id."""
    return MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no user-input request {request_id!r}", request_id=request_id)


class InputRequestRepository:
    """The ``agent_requests`` table: pending, answered (once) or cancelled requests."""

    def __init__(self, db: Database, events: EventLog, sessions: SessionRepository) -> None:
        self.db, self.events, self.sessions = db, events, sessions

    def create(self, session_id: str, input_type: str, prompt: str, *,
               options: list | None = None, run_id: str | None = None,
               step_id: str | None = None) -> dict:
        """A pending request for user input (``agent.input_requested``), for the canvas to answer."""
        self.sessions.get(session_id)
        if input_type not in AGENT_INPUT_TYPES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"input_type must be one of {', '.join(AGENT_INPUT_TYPES)}, not {input_type!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "prompt must be a non-empty string")
        if options is not None and not isinstance(options, list):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "options must be a list")
        request_id = new_id()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO agent_requests (id, session_id, run_id, step_id, input_type, prompt, options, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (request_id, session_id, run_id, step_id, input_type, prompt, dumps(options or []), now_iso()),
            )
            self.events.append(tx, session_id, EventKind.AGENT_INPUT_REQUESTED,
                               {"request_id": request_id, "run_id": run_id, "input_type": input_type})
        return self.get(request_id)

    def get(self, request_id: str) -> dict:
        """One user-input request; ``INVALID_ARGUMENT`` if there is none."""
        rows = self.db.query("SELECT * FROM agent_requests WHERE id = ?", (request_id,))
        if not rows:
            raise request_not_found(request_id)
        return decode_row(rows[0], JSON_FIELDS)

    def answer(self, request_id: str, answer: Any) -> dict:
        """Record the answer of a pending request (``agent.input_answered``); answered once only."""
        with self.db.transaction() as tx:
            row = tx.execute("SELECT session_id, status, run_id FROM agent_requests WHERE id = ?",
                             (request_id,)).fetchone()
            if row is None:
                raise request_not_found(request_id)
            if row[1] != "pending":
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                     f"user-input request {request_id!r} is already {row[1]}", request_id=request_id)
            tx.execute("UPDATE agent_requests SET status = 'answered', answer = ?, answered_at = ? WHERE id = ?",
                       (dumps(answer), now_iso(), request_id))
            self.events.append(tx, row[0], EventKind.AGENT_INPUT_ANSWERED, {"request_id": request_id, "run_id": row[2]})
        return self.get(request_id)

    def cancel_for_run(self, run_id: str) -> int:
        """Cancel a run's pending requests (the run ended without them); returns how many."""
        with self.db.transaction() as tx:
            rows = tx.execute("SELECT id, session_id FROM agent_requests WHERE run_id = ? AND status = 'pending'",
                              (run_id,)).fetchall()
            tx.execute("UPDATE agent_requests SET status = 'cancelled', answered_at = ?"
                       " WHERE run_id = ? AND status = 'pending'", (now_iso(), run_id))
            for request_id, session_id in rows:
                self.events.append(tx, session_id, EventKind.AGENT_INPUT_CANCELLED,
                                   {"request_id": request_id, "run_id": run_id})
            return len(rows)

    def in_session(self, session_id: str, status: str | None = None) -> list[dict]:
        """A session's user-input requests, oldest first (optionally of one status)."""
        sql, params = "SELECT * FROM agent_requests WHERE session_id = ?", [session_id]
        if status is not None:
            sql, params = sql + " AND status = ?", [*params, status]
        rows = self.db.query(sql + " ORDER BY created_at, rowid", tuple(params))
        return [decode_row(r, JSON_FIELDS) for r in rows]
