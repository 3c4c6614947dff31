"""The agent's persistent state: runs, their trace, conversation turns and the running summary.

A run's state is JSON (tool outputs by id, never pixels), so a paused run
(step_by_step, need_input) resumes in any process.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from engine.errors import ErrorCode, MedVisionError
from engine.events import EventKind
from engine.store.common import decode_row, dumps, now_iso
from engine.store.database import Database
from engine.store.events import EventLog
from engine.store.sessions import SessionRepository

AGENT_RUN_STATUSES = ("running", "in_progress", "need_input", "completed", "failed")
TURN_ROLES = ("user", "agent")


class AgentRunRepository:
    """The ``agent_runs``, ``agent_trace``, ``agent_turns`` and ``agent_memory`` tables."""

    def __init__(self, db: Database, events: EventLog, sessions: SessionRepository) -> None:
        self.db, self.events, self.sessions = db, events, sessions

    # -- runs ----------------------------------------------------------------------------
    def create(self, session_id: str, *, run_id: str, task: str, mode: str, pipeline: str,
               image_id: str | None, state: dict, owner: str | None = None) -> dict:
        """Insert a run row (status ``running``) and announce it (``agent.run_created``)."""
        self.sessions.get(session_id)
        stamp = now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO agent_runs (id, session_id, image_id, task, mode, pipeline, status, state, owner,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (run_id, session_id, image_id, task, mode, pipeline, dumps(state), owner, stamp, stamp),
            )
            self.events.append(tx, session_id, EventKind.AGENT_RUN_CREATED,
                               {"run_id": run_id, "image_id": image_id, "mode": mode, "pipeline": pipeline})
        return self.get(run_id)

    def update(self, run_id: str, *, status: str | None = None, state: dict | None = None,
               report: dict | None = None, result: dict | None = None,
               error: dict | None = None, owner: str | None = None) -> None:
        """Change a run's status/state/report/result/error (``agent.run_updated`` on a status change)."""
        if status is not None and status not in AGENT_RUN_STATUSES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"unknown agent run status {status!r}")
        changes: dict[str, Any] = {}
        for name, value in (("state", state), ("report", report), ("result", result), ("error", error)):
            if value is not None:
                changes[name] = dumps(value)
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
                self.events.append(tx, row[0], EventKind.AGENT_RUN_UPDATED, {"run_id": run_id, "status": status})

    def interrupt_stale(self) -> int:
        """Mark runs left ``running`` by a process that died (its stdin closed, killed) as interrupted:
        status ``failed``, error ``{"type": "interrupted", ...}`` (``agent.run_updated``), at engine start.

        A run's ``owner`` is ``host:pid``. Only runs of this host whose process is gone are
        touched: a live run in another process (its pid exists) or on another host, and a row
        without an owner, are left alone. Paused runs (``in_progress``, ``need_input``) resume in
        any process and are never touched. POSIX only (elsewhere nothing is marked).
        """
        if os.name != "posix":
            return 0
        host = socket.gethostname()
        rows = self.db.query("SELECT id, owner FROM agent_runs WHERE status = 'running'")
        dead = [r["id"] for r in rows if _dead_owner(r["owner"], host)]
        if not dead:
            return 0
        error = {"type": "interrupted", "message": "the process running this run ended before it finished; "
                                                   "start a new run"}
        count = 0
        with self.db.transaction() as tx:
            for run_id in dead:
                row = tx.execute("SELECT session_id FROM agent_runs WHERE id = ? AND status = 'running'",
                                 (run_id,)).fetchone()
                if row is None:  # finished or marked meanwhile
                    continue
                tx.execute("UPDATE agent_runs SET status = 'failed', error = ?, updated_at = ? WHERE id = ?",
                           (dumps(error), now_iso(), run_id))
                self.events.append(tx, row[0], EventKind.AGENT_RUN_UPDATED,
                                   {"run_id": run_id, "status": "failed", "reason": "interrupted"})
                count += 1
        return count

    def get(self, run_id: str, session_id: str | None = None) -> dict:
        """One run row (JSON columns decoded); ``INVALID_ARGUMENT`` if absent or another session's."""
        rows = self.db.query("SELECT * FROM agent_runs WHERE id = ?", (run_id,))
        if not rows or (session_id is not None and rows[0]["session_id"] != session_id):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no agent run {run_id!r} in this session",
                                 run_id=run_id)
        return decode_row(rows[0], ("state", "report", "result", "error"))

    def in_session(self, session_id: str, status: str | None = None) -> list[dict]:
        """A session's runs, oldest first (optionally of one status); states left out."""
        sql, params = ("SELECT id, session_id, image_id, task, mode, pipeline, status, error, created_at,"
                       " updated_at FROM agent_runs WHERE session_id = ?"), [session_id]
        if status is not None:
            sql, params = sql + " AND status = ?", [*params, status]
        rows = self.db.query(sql + " ORDER BY created_at, rowid", tuple(params))
        return [decode_row(r, ("error",)) for r in rows]

    # -- trace ---------------------------------------------------------------------------
    def add_trace(self, run_id: str, session_id: str, seq: int, event: dict) -> None:
        """Append one trace event of a run and its outbox row (``agent.trace``); joins an open transaction,
        so a tool's own writes and its trace event commit (or roll back) together."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO agent_trace (run_id, seq, session_id, kind, step_id, tool_id, status, payload,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, seq, session_id, event.get("kind", ""), event.get("step_id"), event.get("tool_id"),
                 event.get("status"), dumps(event), stamp),
            )
            self.events.append(tx, session_id, EventKind.AGENT_TRACE, {
                "run_id": run_id, "seq": seq, "kind": event.get("kind"), "step_id": event.get("step_id"),
                "tool_id": event.get("tool_id"), "status": event.get("status")})

    def trace(self, run_id: str) -> list[dict]:
        """A run's trace events, in order."""
        rows = self.db.query("SELECT payload FROM agent_trace WHERE run_id = ? ORDER BY seq", (run_id,))
        return [json.loads(r["payload"]) for r in rows]

    # -- conversation --------------------------------------------------------------------
    def add_turn(self, session_id: str, role: str, kind: str, content: str, *,
                 sources: list | None = None, run_id: str | None = None,
                 image_id: str | None = None) -> int:
        """Append a conversation turn (``agent.turn``); returns its id."""
        if role not in TURN_ROLES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"turn role must be user or agent, not {role!r}")
        with self.db.transaction() as tx:
            cursor = tx.execute(
                "INSERT INTO agent_turns (session_id, run_id, image_id, role, kind, content, sources, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, run_id, image_id, role, kind, content, dumps(sources or []), now_iso()),
            )
            turn_id = int(cursor.lastrowid)
            self.events.append(tx, session_id, EventKind.AGENT_TURN,
                               {"turn_id": turn_id, "role": role, "kind": kind, "run_id": run_id})
        return turn_id

    def turns(self, session_id: str, *, after: int = 0, limit: int | None = None) -> list[dict]:
        """Turns with ``id > after``, oldest first; with ``limit``, only the newest ``limit`` of them."""
        if limit is None:
            rows = self.db.query("SELECT * FROM agent_turns WHERE session_id = ? AND id > ? ORDER BY id",
                                 (session_id, after))
        else:
            rows = self.db.query(
                "SELECT * FROM (SELECT * FROM agent_turns WHERE session_id = ? AND id > ? ORDER BY id DESC"
                " LIMIT ?) ORDER BY id", (session_id, after, limit))
        return [decode_row(r, ("sources",)) for r in rows]

    def memory(self, session_id: str) -> dict:
        """The session's running summary: ``{"summary", "summarized_until"}`` (empty when none)."""
        rows = self.db.query("SELECT summary, summarized_until, updated_at FROM agent_memory WHERE session_id = ?",
                             (session_id,))
        return rows[0] if rows else {"summary": "", "summarized_until": 0, "updated_at": None}

    def set_memory(self, session_id: str, summary: str, summarized_until: int) -> None:
        """Replace the session's running summary (turns up to ``summarized_until`` are folded in)."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO agent_memory (session_id, summary, summarized_until, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(session_id) DO UPDATE SET summary = excluded.summary,"
                " summarized_until = excluded.summarized_until, updated_at = excluded.updated_at",
                (session_id, summary, int(summarized_until), stamp),
            )


def _dead_owner(owner: str | None, host: str) -> bool:
    """True when ``owner`` (``host:pid``) names a process of this host that no longer exists."""
    owner_host, _, pid_text = (owner or "").rpartition(":")
    if owner_host != host or not pid_text.isdigit() or int(pid_text) <= 0:
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        return False
    return False
