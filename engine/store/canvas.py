"""The canvas's tables: the state each session's canvas last reported, and the layers agents push."""

from __future__ import annotations

from typing import Any

from engine.events import EventKind
from engine.store.common import decode_row, dumps, loads, new_id, now_iso
from engine.store.database import Database
from engine.store.events import EventLog

#: Layer columns stored as JSON text.
JSON_FIELDS = ("data", "style")
#: Layer columns an update may change.
LAYER_UPDATABLE = ("name", "data", "style", "visible")


def _strict(value: Any) -> str:
    return dumps(value, allow_nan=False)


class CanvasRepository:
    """The ``canvas_state`` and ``canvas_layers`` tables; every change appends its ``canvas.*`` event."""

    def __init__(self, db: Database, events: EventLog) -> None:
        self.db, self.events = db, events

    # -- state ---------------------------------------------------------------------------
    def state(self, session_id: str) -> tuple[dict | None, str | None]:
        """The stored state and when it was synced; ``(None, None)`` when the canvas never synced."""
        rows = self.db.query("SELECT state, updated_at FROM canvas_state WHERE session_id = ?", (session_id,))
        return (loads(rows[0]["state"]), rows[0]["updated_at"]) if rows else (None, None)

    def save_state(self, session_id: str, state: dict, *, keys: list[str]) -> tuple[str, int]:
        """Replace the stored state (``canvas.state_synced`` naming the reported ``keys``); returns (stamp, event id)."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO canvas_state (session_id, state, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(session_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (session_id, _strict(state), stamp),
            )
            event_id = self.events.append(tx, session_id, EventKind.CANVAS_STATE_SYNCED, {
                "updated_at": stamp, "current_image_id": state["current_image_id"],
                "active_tool": state["active_tool"], "keys": sorted(keys)})
        return stamp, event_id

    # -- layers --------------------------------------------------------------------------
    def layers(self, session_id: str) -> list[dict]:
        """A session's layer rows (data and style decoded), oldest first."""
        rows = self.db.query("SELECT * FROM canvas_layers WHERE session_id = ? ORDER BY created_at, rowid",
                             (session_id,))
        return [decode_row(r, JSON_FIELDS) for r in rows]

    def layer(self, session_id: str, layer_id: str) -> dict | None:
        """One layer row of the session (data and style decoded), None if there is none."""
        rows = self.db.query("SELECT * FROM canvas_layers WHERE id = ? AND session_id = ?", (layer_id, session_id))
        return decode_row(rows[0], JSON_FIELDS) if rows else None

    def add_layer(self, session_id: str, image_id: str, *, kind: str, name: str, data: dict, style: dict,
                  visible: bool, source: str) -> tuple[str, int]:
        """Insert a validated layer (``canvas.layer_added``); returns (layer id, event id)."""
        layer_id, stamp = new_id(), now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO canvas_layers (id, session_id, image_id, kind, name, data, style, visible, source,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (layer_id, session_id, image_id, kind, name, _strict(data), _strict(style), int(visible), source,
                 stamp, stamp),
            )
            event_id = self.events.append(tx, session_id, EventKind.CANVAS_LAYER_ADDED,
                                          {"layer_id": layer_id, "image_id": image_id, "type": kind, "name": name})
        return layer_id, event_id

    def update_layer(self, session_id: str, layer: dict, changes: dict[str, Any]) -> int:
        """Write validated new values of ``layer`` (``canvas.layer_updated`` naming the fields); returns the event id."""
        fields = sorted(changes)
        unknown = set(fields) - set(LAYER_UPDATABLE)
        if unknown or not fields:
            raise ValueError(f"a layer update changes some of {', '.join(LAYER_UPDATABLE)}, not {sorted(unknown)}")
        values = [_strict(changes[k]) if k in JSON_FIELDS else int(changes[k]) if k == "visible" else changes[k]
                  for k in fields]
        with self.db.transaction() as tx:
            assignments = ", ".join(f"{k} = ?" for k in fields)
            tx.execute(f"UPDATE canvas_layers SET {assignments}, updated_at = ? WHERE id = ?",
                       (*values, now_iso(), layer["id"]))
            return self.events.append(tx, session_id, EventKind.CANVAS_LAYER_UPDATED,
                                      {"layer_id": layer["id"], "image_id": layer["image_id"], "fields": fields})

    def remove_layer(self, session_id: str, layer: dict) -> int:
        """Delete a layer (``canvas.layer_removed``); returns the event id."""
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM canvas_layers WHERE id = ?", (layer["id"],))
            return self.events.append(tx, session_id, EventKind.CANVAS_LAYER_REMOVED,
                                      {"layer_id": layer["id"], "image_id": layer["image_id"]})
