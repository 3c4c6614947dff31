"""The events outbox: the one writer of ``events`` rows, which readers follow by id."""

from __future__ import annotations

from engine.events import EventKind
from engine.store.common import decode_row, dumps, now_iso
from engine.store.database import Connection, Database


class EventLog:
    """Append and read the ``events`` table; kinds come from the catalogue (:class:`EventKind`)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, tx: Connection, session_id: str | None, kind: EventKind | str, payload: dict) -> int:
        """Append an event inside the caller's transaction ``tx``; returns its id."""
        cursor = tx.execute(
            "INSERT INTO events (session_id, kind, payload, created_at) VALUES (?, ?, ?, ?)",
            (session_id, EventKind(kind).value, dumps(payload), now_iso()),
        )
        return int(cursor.lastrowid)

    def append_now(self, session_id: str | None, kind: EventKind | str, payload: dict) -> int:
        """Append an event in its own transaction (joins an open one), for changes outside the database."""
        with self.db.transaction() as tx:
            return self.append(tx, session_id, kind, payload)

    def since(self, last_id: int, session_id: str | None = None, limit: int = 500) -> list[dict]:
        """Events with ``id > last_id``, oldest first (optionally one session's)."""
        if session_id is None:
            rows = self.db.query("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit))
        else:
            rows = self.db.query(
                "SELECT * FROM events WHERE id > ? AND session_id = ? ORDER BY id LIMIT ?",
                (last_id, session_id, limit),
            )
        return [decode_row(r) for r in rows]

    def last_id(self) -> int:
        """The newest event id, 0 when there is none."""
        return int(self.db.query("SELECT coalesce(max(id), 0) AS id FROM events")[0]["id"])
