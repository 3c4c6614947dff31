"""Series as volumes: a CT/MR series is complete after a quiet time, then one volume job is queued.

Single-frame CT/MR instances queue no image job on arrival (:func:`engine.imaging.records.is_series_slice`);
instead :class:`SeriesWatcher` learns of each one once its rows are written (the index writer's
callback) and keeps, per (session, series), the time of the last arrival. A series with no new
instance for ``series_quiet_s`` queues ONE ``dicom_node.volume`` job (payload: session, series,
how many instances arrived, ``update``). An instance arriving after that starts the clock again
and the series queues one more job, marked ``update: true`` (a job of that series is in the
store already), so a late slice is analysed with the rest, once.

The arrivals are held in memory: a series whose quiet time had not passed when the node stopped
gets its job when one more of its instances arrives (or by hand: ``medvision volume segment``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from engine.imaging.records import is_series_slice
from engine.store import Store

log = logging.getLogger(__name__)

VOLUME_JOB = "dicom_node.volume"
#: New-image outcomes of :meth:`engine.store.dicom.DicomRepository.add_instance` (a duplicate adds nothing).
NEW_IMAGE = ("stored", "version")


class SeriesWatcher:
    """Tracks the last arrival of every open CT/MR series; queues its volume job once it is quiet."""

    def __init__(self, store: Store, run_on_db: Callable[..., Any], *, quiet_s: float, max_attempts: int,
                 wake_workers: Callable[[], None] | None = None) -> None:
        self.store, self._run_on_db, self.quiet_s, self.max_attempts = store, run_on_db, quiet_s, max_attempts
        self._wake_workers = wake_workers
        self._open: dict[tuple[str, str], list[Any]] = {}  # (session, series) -> [last arrival, count, modality]
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dicom-series", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def note(self, instance: dict, done: dict) -> None:
        """An instance's rows are written (index writer thread): a new slice restarts its series' clock."""
        record = instance["record"]
        if done.get("status") not in NEW_IMAGE or not done.get("session_id") or not is_series_slice(record):
            return
        key = (done["session_id"], record["series_instance_uid"])
        with self._cond:
            entry = self._open.setdefault(key, [0.0, 0, record["modality"]])
            entry[0] = time.monotonic()
            entry[1] += 1
            self._cond.notify_all()

    def pending(self) -> int:
        """Series waiting for their quiet time."""
        with self._cond:
            return len(self._open)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                due = [(key, entry) for key, entry in self._open.items() if now - entry[0] >= self.quiet_s]
                for key, _ in due:
                    del self._open[key]
                if not due:
                    wait = min((entry[0] + self.quiet_s - now for entry in self._open.values()), default=None)
                    self._cond.wait(wait)
                    continue
            for (session_id, series_uid), (_, count, modality) in due:
                try:
                    self._run_on_db(self.queue, session_id, series_uid, count, modality)
                except Exception:  # noqa: BLE001 - the series is tried again at its next instance
                    log.exception("queueing the volume job of a series failed")
            if self._wake_workers is not None:
                self._wake_workers()

    def queue(self, session_id: str, series_uid: str, instances: int, modality: str | None) -> int:
        """Queue the series' volume job (``update`` when one was queued before); its job id."""
        update = any(job["payload"].get("series_uid") == series_uid
                     for job in self.store.list_jobs(VOLUME_JOB, session_id))
        payload = {"session_id": session_id, "series_uid": series_uid, "modality": modality,
                   "instances": instances, "update": update}
        job_id = self.store.enqueue_job(VOLUME_JOB, payload, session_id=session_id, max_attempts=self.max_attempts)
        log.info("series complete: volume job %d queued (%d new instance(s)%s)", job_id, instances,
                 ", an update" if update else "")
        return job_id
