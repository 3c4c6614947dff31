"""Results back to PACS: a persistent outbox drained by C-STORE SCU with retry/backoff.

Each ``dicom_outbox`` row names one file of an encrypted export (the SR or the
burned-in Secondary Capture) and a destination. A sender thread takes due rows,
decrypts the object in memory and sends it over one association per destination;
success (0x0000, or a warning 0xB000/0xB007/0xB006) marks it sent, anything else
schedules a retry after ``backoff * 2**attempts`` (capped at an hour) until
``max_attempts``, then ``failed``. Rows survive restarts, so nothing queued is lost.
"""

from __future__ import annotations

import io
import logging
import threading
from itertools import groupby
from operator import itemgetter
from typing import Any

import pydicom
from pynetdicom import AE

from dicom_node.audit import record_sent
from dicom_node.config import NodeConfig
from engine.errors import MedVisionError

log = logging.getLogger(__name__)

_OK = {0x0000, 0xB000, 0xB006, 0xB007}
_MAX_BACKOFF_S = 3600.0


class OutboxSender:
    """Sends due outbox rows every ``interval_s`` (or when woken) until :meth:`stop`."""

    def __init__(self, store: Any, config: NodeConfig, interval_s: float = 1.0) -> None:
        self.store, self.config, self.interval_s = store, config, interval_s
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicom-outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_due()
            except Exception:  # noqa: BLE001 - keep the sender alive; rows stay pending
                log.exception("outbox pass failed")
            self.wake.wait(self.interval_s)
            self.wake.clear()

    def send_due(self) -> int:
        """One pass over the due rows; returns how many were sent."""
        sent = 0
        destination = itemgetter("ae_title", "host", "port")
        for (ae_title, host, port), rows in groupby(sorted(self.store.dicom_outbox_due(), key=destination),
                                                    key=destination):
            sent += self._send(ae_title, host, port, list(rows))
        return sent

    def _send(self, ae_title: str, host: str, port: int, rows: list[dict]) -> int:
        datasets = []
        for row in rows:
            try:
                data = self.store.export_bytes(row["session_id"], row["export_id"], row["file_name"])
                datasets.append((row, pydicom.dcmread(io.BytesIO(data))))
            except (MedVisionError, ValueError, OSError) as exc:
                self._result(row, None, f"cannot read the kept object ({type(exc).__name__})")
        if not datasets:
            return 0
        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.dimse_timeout_s
        for syntax in {ds.SOPClassUID for _, ds in datasets}:
            ae.add_requested_context(syntax, sorted({str(ds.file_meta.TransferSyntaxUID) for _, ds in datasets
                                                     if ds.SOPClassUID == syntax}))
        assoc = ae.associate(host, port, ae_title=ae_title)
        sent = 0
        try:
            for row, ds in datasets:
                if not assoc.is_established:
                    self._result(row, None, "association not established")
                    continue
                response = assoc.send_c_store(ds)
                status = int(response.Status) if response and "Status" in response else None
                ok = status in _OK
                sent += ok
                self._result(row, status, None if ok else f"C-STORE status {status}")
        finally:
            if assoc.is_established:
                assoc.release()
        return sent

    def _result(self, row: dict, status: int | None, error: str | None) -> None:
        record_sent(self.store, row, status, error, peer_ae=row["ae_title"], peer_host=f"{row['host']}:{row['port']}")
        delay = min(_MAX_BACKOFF_S, self.config.outbox_backoff_s * 2 ** row["attempts"])
        state = self.store.dicom_outbox_result(row["id"], status_code=status, error=error, retry_in_s=delay)
        if error:
            log.warning("outbox item %s: %s (%s)", row["id"], error, state)
