"""Background work through one builder, in the style of Anki's ``CollectionOp``.

``Op(parent, fn).success(cb).failure(cb).run()`` runs ``fn`` on a worker thread and
calls back on the GUI thread. ``fn`` must never touch widgets. Three lanes:

- ``engine``: one thread, so the Engine is called from one worker at a time (long
  analyses queue here);
- ``read``: one thread for store reads and pixel work (annotation lists, mask
  decoding, thumbnails) that must not wait behind a 6 s analysis;
- ``network``: one thread for archive work (the priors of an opened study, fetched
  by C-FIND and C-GET) that must hold up neither of the others.

Failures go to ``failure`` or, by default, to :func:`desktop.errors.show_error`.
Cancelling an op drops its result (engine calls are not interruptible).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from desktop.errors import show_error
from desktop.qt import QObject, QRunnable, QThreadPool, Signal, Slot, isValid

log = logging.getLogger(__name__)
_pools: dict[str, QThreadPool] = {}


def pool(lane: str) -> QThreadPool:
    """The thread pool of a lane (one thread each)."""
    if lane not in _pools:
        _pools[lane] = QThreadPool()
        _pools[lane].setMaxThreadCount(1)
    return _pools[lane]


class OpTracker(QObject):
    """Announces running ops with a label, for the status bar's progress and cancel."""

    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.running: list[Op] = []

    def busy(self) -> bool:
        return bool(self.running)

    def cancel_all(self) -> None:
        for op in list(self.running):
            op.cancel()


tracker = OpTracker()


class _Relay(QObject):
    """Lives on the GUI thread; its queued signals carry the result back from the worker."""

    done = Signal(object)
    failed = Signal(object)

    def __init__(self, op: Op) -> None:
        super().__init__()
        self.op = op
        self.done.connect(self.on_done)
        self.failed.connect(self.on_failed)

    @Slot(object)
    def on_done(self, result: object) -> None:
        self.op._succeeded(result)

    @Slot(object)
    def on_failed(self, exc: object) -> None:
        self.op._failed(exc)


class _Runnable(QRunnable):
    def __init__(self, fn: Callable[[], Any], relay: _Relay) -> None:
        super().__init__()
        self.fn, self.relay = fn, relay

    def run(self) -> None:
        try:
            result = self.fn()
        except Exception as exc:  # noqa: BLE001 - every failure is relayed to the GUI's error path
            self._deliver(self.relay.failed, exc)
        else:
            self._deliver(self.relay.done, result)

    @staticmethod
    def _deliver(signal: Signal, value: object) -> None:
        try:
            signal.emit(value)
        except RuntimeError:  # the window closed while this ran: no one is left to tell
            log.debug("background result dropped: its receiver is gone")


class Op:
    """A background operation: build it, chain callbacks, then ``run()``."""

    def __init__(self, parent: QObject | None, fn: Callable[[], Any], *, lane: str = "engine") -> None:
        self.parent, self.fn, self.lane = parent, fn, lane
        self.label: str | None = None
        self.cancelled = False
        self._on_success: Callable[[Any], None] | None = None
        self._on_failure: Callable[[BaseException], None] | None = None
        self._relay = _Relay(self)

    def success(self, callback: Callable[[Any], None]) -> Op:
        self._on_success = callback
        return self

    def failure(self, callback: Callable[[BaseException], None]) -> Op:
        self._on_failure = callback
        return self

    def progress(self, label: str) -> Op:
        """Show ``label`` with a busy bar and a cancel button while the op runs."""
        self.label = label
        return self

    def cancel(self) -> None:
        self.cancelled = True
        self._finish()

    def run(self) -> Op:
        tracker.running.append(self)
        tracker.changed.emit()
        pool(self.lane).start(_Runnable(self.fn, self._relay))
        return self

    def _finish(self) -> None:
        if self in tracker.running:
            tracker.running.remove(self)
            tracker.changed.emit()

    def _orphaned(self) -> bool:
        """True once the op was cancelled or its parent widget is gone (window closed)."""
        return self.cancelled or (isinstance(self.parent, QObject) and not isValid(self.parent))

    def _succeeded(self, result: Any) -> None:
        self._finish()
        if self._orphaned():
            return
        if self._on_success is not None:
            self._on_success(result)

    def _failed(self, exc: BaseException) -> None:
        self._finish()
        if self._orphaned():
            log.info("dropped the failure of a cancelled op: %s", exc)
            return
        if self._on_failure is not None:
            self._on_failure(exc)
        else:
            show_error(self.parent.window() if hasattr(self.parent, "window") else None, exc, self.label or "")


def wait_idle(timeout_ms: int = 30000) -> bool:
    """Block until every lane is idle (tests and the benchmark; never from the GUI)."""
    return all(p.waitForDone(timeout_ms) for p in _pools.values())
