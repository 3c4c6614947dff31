"""pynetdicom's reactors wake when there is work for them, not at their next poll.

An association's loop (``Association._run_reactor``) sleeps 1 ms before each look at
its DIMSE message queue, and its DUL's loop sleeps ``_run_loop_delay`` before looking
for a primitive to send: every C-STORE waits for both polls (longer on a busy machine,
where a short sleep overshoots), a fixed cost in each round trip once the instance
itself costs one fsync. :func:`install` gives ``pynetdicom.association`` and
``pynetdicom.dul`` a ``time`` whose ``sleep``, on an association's thread, waits on its
message queue and, on a DUL's thread, on its queue of primitives to send, at most as
long as asked (so sockets are polled as often as before); anywhere else it is the plain
sleep. Process-wide, like :func:`dicom_node.spool.install`.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from pynetdicom import association, dul


def _work_queue(thread: Any) -> Any:
    """The queue whose next item is the work of ``thread`` (an association or a DUL)."""
    if isinstance(thread, association.Association):
        return getattr(getattr(thread, "dimse", None), "msg_queue", None)
    if isinstance(thread, dul.DULServiceProvider):
        return getattr(thread, "to_provider_queue", None)
    return None


def _sleep(seconds: float) -> None:
    queue = _work_queue(threading.current_thread())
    if queue is None or not hasattr(queue, "not_empty"):
        time.sleep(seconds)
        return
    with queue.not_empty:
        if not queue.queue:  # a message already waiting: look at it at once
            queue.not_empty.wait(seconds)
        if queue.queue:  # put() wakes one waiter: pass it on to a blocked get(), if any
            queue.not_empty.notify()


def install() -> None:
    """Make the reactors of this process's associations wake on their next work item."""
    association.time = dul.time = SimpleNamespace(sleep=_sleep)  # type: ignore[attr-defined]
