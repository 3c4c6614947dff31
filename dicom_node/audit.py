"""The node's audit records: an instance received (pushed, or fetched by C-GET/C-MOVE/WADO-RS), a result sent.

Each is queued for the audit log's writer thread (:meth:`engine.store.audit.AuditLog.record_soon`),
so a burst of instances costs one audit transaction, not one fsync each on the C-STORE path.
The record holds the identifiers the site's policy allows and the peer's AE title and
address; never a name or a pixel.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.store.audit import AuditEntry, AuditEvent
from engine.store.audit.codes import MAJOR_FAILURE, MINOR_FAILURE, SERIOUS_FAILURE, SUCCESS

#: C-STORE statuses that say the peer's data was refused (a minor failure: the caller's
#: input), not that we failed: 0xA900 dataset/SOP mismatch, 0xC210 cannot understand,
#: 0x0111 duplicate SOP instance refused.
log = logging.getLogger(__name__)

_REFUSED = frozenset({0xA900, 0xC210, 0x0111})
_OUT_OF_RESOURCES = 0xA700


def receipt_outcome(status: int) -> int:
    """RFC 3881 outcome of a C-STORE status we answered."""
    if status == 0:
        return SUCCESS
    if status in _REFUSED:
        return MINOR_FAILURE
    return SERIOUS_FAILURE if status == _OUT_OF_RESOURCES else MAJOR_FAILURE


def record_receipt(store: Any, outcome: Any, sop_instance_uid: Any, *, via: str, peer_ae: str | None,
                   peer_host: str | None = None, front_end: str = "node") -> None:
    """An instance refused or failed (``via``: C-STORE, C-GET, WADO-RS; ``outcome``: an
    :class:`dicom_node.ingest.Outcome`). One answered 0x0000 is recorded by :func:`record_stored`
    once its rows are written (only then are its session and image known). Never raises."""
    if outcome.status == 0:
        return
    try:
        store.audit.record_soon(AuditEntry(
            front_end, AuditEvent.INSTANCES_TRANSFERRED, "C", via, receipt_outcome(outcome.status),
            f"0x{outcome.status:04X} {outcome.result}", sop_uid=str(sop_instance_uid or "") or None,
            details={"peer_ae": peer_ae, "peer_host": peer_host}))
    except Exception:  # noqa: BLE001 - logged; the instance's fate is already settled
        log.exception("the audit record of a refused instance could not be queued")


def record_stored(store: Any, instance: dict, done: dict) -> None:
    """A received instance whose rows are written (``instance``: what the ingest queued; ``done``:
    what the store did: stored, a duplicate, a new version). Never raises."""
    try:
        record = instance["record"]
        store.audit.record_soon(AuditEntry(
            "node", AuditEvent.INSTANCES_TRANSFERRED, "C", "received", SUCCESS,
            None if done["status"] == "stored" else f"0x0000 {done['status']}",
            **({"time": instance["received_at"]} if instance.get("received_at") else {}), session_id=done.get("session_id"), image_id=done.get("image_id"),
            study_uid=record.get("study_instance_uid"), sop_uid=record.get("sop_instance_uid"),
            details={"peer_ae": instance.get("calling_ae")}))
    except Exception:  # noqa: BLE001 - logged; the instance is stored
        log.exception("the audit record of a received instance could not be queued")


def record_sent(store: Any, row: dict, status: int | None, error: str | None, *, peer_ae: str, peer_host: str) -> None:
    """One outbox item sent to a peer (or a failed attempt). Never raises."""
    try:
        store.audit.record_soon(AuditEntry(
            "node", AuditEvent.INSTANCES_TRANSFERRED, "R", "C-STORE-SCU", SERIOUS_FAILURE if error else SUCCESS,
            error or None, session_id=row.get("session_id"),
            details={"peer_ae": peer_ae, "peer_host": peer_host, "file": row.get("file_name"),
                     "export_id": row.get("export_id")}))
    except Exception:  # noqa: BLE001 - logged; the item's state is recorded by the outbox
        log.exception("the audit record of a sent item could not be queued")
