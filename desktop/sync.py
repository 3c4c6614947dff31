"""Live sync: follow the store's events outbox and re-emit each new event on the GUI thread.

Every process (DICOM node, MCP server, CLI, this app) appends events in the same
transaction as its change; the app polls ``events`` by id. The query is one indexed
range scan on this thread's own connection (well under a millisecond for a handful of
rows), so it runs on the GUI thread and is never queued behind a long analysis.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from desktop.qt import QObject, QTimer, Signal
from engine.errors import MedVisionError

log = logging.getLogger(__name__)


class EventFollower(QObject):
    """Polls ``Engine.events_since`` every ``interval_ms`` and emits each event as a dict (``kind`` an EventKind)."""

    event = Signal(dict)

    def __init__(self, engine, interval_ms: int = 150, parent: QObject | None = None) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.engine = engine
        self.last_id = engine.last_event_id()
        self.timer = QTimer(self, interval=interval_ms)
        self.timer.timeout.connect(self.poll)
        self.timer.start()

    def poll(self) -> int:
        """Emit the events appended since the last poll; returns how many."""
        try:
            events = self.engine.events_since(self.last_id, limit=500)
        except MedVisionError as exc:  # a busy database: try again on the next tick
            log.warning("event poll failed: %s", exc.code)
            return 0
        for event in events:
            self.last_id = max(self.last_id, event.id)
            self.event.emit(asdict(event))
        return len(events)

    def stop(self) -> None:
        self.timer.stop()
