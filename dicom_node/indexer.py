"""Group commit of acknowledged instances' rows: the WAL commit leaves the C-STORE round trip.

An instance is acknowledged once its blob, which carries its sealed index record, is
durable (:mod:`dicom_node.ingest`); its rows are written after, by one writer thread,
many instances per transaction (:meth:`engine.store.dicom.DicomRepository.add_instances`):
when ``interval_s`` has passed since the oldest waiting one, when ``max_batch`` wait,
when an association asks for its A-RELEASE (:meth:`IndexWriter.flush`: a peer that
released sees every instance it sent in the store) and when the node stops. The
transaction runs on the ingestor's database thread, like every other write of the node.

A batch that fails is retried instance by instance; one still failing (disk full, a
database error) stays queued and is tried again every ``RETRY_S``. Whatever a crash
or a failure leaves unwritten is indexed from its blob the next time the store is
opened (:meth:`~engine.store.dicom.DicomRepository.index_unindexed_blobs`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from engine.errors import MedVisionError
from engine.store import Store

log = logging.getLogger(__name__)

#: Seconds between retries of rows whose write failed.
RETRY_S = 1.0
#: Instances written in one transaction at most.
MAX_BATCH = 256


class IndexWriter:
    """One thread writing acknowledged instances' rows in batches, in acknowledgement order."""

    def __init__(self, store: Store, run_on_db: Callable[..., Any], *, interval_s: float,
                 on_written: Callable[[dict, dict], None], max_batch: int = MAX_BATCH) -> None:
        self.store, self._run_on_db, self.interval_s, self.max_batch = store, run_on_db, interval_s, max_batch
        self._on_written = on_written
        self._cond = threading.Condition()
        self._queue: list[dict] = []
        self._retry: list[dict] = []
        self._first_at = 0.0
        self._added = self._written = self._urgent = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="dicom-index", daemon=True)
        self._thread.start()

    def add(self, instance: dict) -> None:
        """Queue one acknowledged instance (:meth:`DicomRepository.add_instance` arguments)."""
        with self._cond:
            if not self._queue:
                self._first_at = time.monotonic()
            self._queue.append(instance)
            self._added += 1
            if len(self._queue) in (1, self.max_batch):  # the interval starts / the batch is full
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything queued so far now and wait for it (False: ``timeout`` passed)."""
        with self._cond:
            target = self._added
            self._urgent = max(self._urgent, target)
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._written >= target, timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Write what is queued (one more try for failed rows) and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._retry:
            log.error("%d acknowledged instance(s) not indexed; their blobs are indexed at the next start",
                      len(self._retry))

    def _due(self) -> bool:
        return (self._closing or self._urgent > self._written or len(self._queue) >= self.max_batch
                or time.monotonic() >= self._first_at + self.interval_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    if not self._cond.wait(RETRY_S if self._retry else None) and self._retry:
                        break  # time to try the failed ones again
                while self._queue and not self._due():
                    self._cond.wait(max(0.0, self._first_at + self.interval_s - time.monotonic()))
                batch, self._retry, self._queue = self._retry + self._queue, [], []
                upto, last = self._added, self._closing
            failed = self._write(batch) if batch else []
            with self._cond:
                self._retry = failed + self._retry
                self._written = upto
                self._cond.notify_all()
            if last:
                return

    def _write(self, batch: list[dict]) -> list[dict]:
        """Write ``batch`` in one transaction, or one by one if that fails; the failed ones."""
        try:
            results = self._run_on_db(self.store.dicom.add_instances, batch)
        except Exception:  # noqa: BLE001 - retried one by one below
            results = None
        if results is not None:
            for instance, done in zip(batch, results, strict=True):
                self._after(instance, done)
            return []
        failed = []
        for instance in batch:
            try:
                (done,) = self._run_on_db(self.store.dicom.add_instances, [instance])
            except Exception as exc:  # noqa: BLE001 - the blob is the record: kept, retried
                reason = exc.code.value if isinstance(exc, MedVisionError) else type(exc).__name__
                log.error("indexing blob %s failed (%s); retried in %.0f s", instance["blob_id"], reason, RETRY_S)
                failed.append(instance)
                continue
            self._after(instance, done)
        return failed

    def _after(self, instance: dict, done: dict) -> None:
        try:
            self._on_written(instance, done)
        except Exception:  # noqa: BLE001 - the rows are written; the writer carries on
            log.exception("after indexing blob %s", instance["blob_id"])
