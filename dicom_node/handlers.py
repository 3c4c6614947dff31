"""pynetdicom event handlers: access control, C-ECHO, C-STORE, association bookkeeping.

Contract (pynetdicom ``_handlers.py``): intervention handlers return a status code and
never raise; notification handlers return nothing. ``EVT_REQUESTED`` runs before the
presentation contexts are negotiated, so it is where a caller is refused
(A-ASSOCIATE-RJ permanent, "calling AE not recognised" / "called AE not recognised")
and where the acceptor's contexts are set to exactly the abstract syntaxes the peer
proposed (any storage SOP class, private or future ones included) crossed with the
transfer syntaxes our imaging layer decodes: no 120-context table to outgrow.

The limit on simultaneous associations is ours, not pynetdicom's (which counts every
association thread, a peer still negotiating or one being refused included, so a burst
got only part of the slots): ``EVT_REQUESTED`` takes one of ``max_associations`` slots
or answers a transient A-ASSOCIATE-RJ ("local limit exceeded"); the slot is given back
when the association ends (released, aborted, refused later in negotiation, or its
connection closed). An association's row is written as ``open`` once it is accepted
(``EVT_ACCEPTED``) and every refusal as ``rejected`` with its reason (and a
``dicom.association`` event), so ``dicom-node status`` counts only accepted ones as open.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from typing import Any

from pydicom.pixels import get_decoder
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import evt, register_uid, sop_class
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.presentation import build_context
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification

from dicom_node.audit import record_receipt
from dicom_node.config import NodeConfig
from dicom_node.ingest import CANNOT_UNDERSTAND, OUT_OF_RESOURCES_OTHER, Ingestor
from dicom_node.spool import SpoolFile

log = logging.getLogger(__name__)


def _decodable(uid: str) -> bool:
    try:
        return get_decoder(uid).is_available
    except NotImplementedError:
        return False


#: Every transfer syntax engine.imaging can decode here (uncompressed, deflate, JPEG,
#: JPEG-LS, JPEG 2000, HTJ2K, RLE), most preferred first.
TRANSFER_SYNTAXES = sorted((uid for uid in AllTransferSyntaxes if _decodable(uid)),
                           key=lambda uid: (uid != "1.2.840.10008.1.2.1", uid))
_STORAGE_UIDS = frozenset(_STORAGE_CLASSES.values())

#: How long an association's DUL thread sleeps when it has nothing to do (pynetdicom:
#: 1 ms). It sits in every C-STORE round trip (the response waits for the next loop),
#: so 0.5 ms cuts ~0.5 ms per instance (benchmarks/bench_dicom_node.py), for ~2 points
#: more of one core per idle open association (7.5% instead of 5.2%).
DUL_POLL_S = 0.0005
#: Longest wait of an A-RELEASE-RP for the rows of the instances acknowledged before it.
RELEASE_FLUSH_TIMEOUT_S = 30.0


#: Private/unknown storage classes registered with pynetdicom so far (bounded: a peer
#: cannot grow the registry without limit by proposing random UIDs).
MAX_REGISTERED_CLASSES = 4096
_registered: set[str] = set()
_register_lock = threading.Lock()


def _is_storage(uid: Any) -> bool:
    """Storage, private, or unknown to pynetdicom (a newer storage class): accept it."""
    return uid in _STORAGE_UIDS or uid.is_private or not hasattr(sop_class, uid.keyword or "-")


def _ensure_storage_service(uid: str) -> bool:
    """Make pynetdicom serve C-STORE for a private/unknown class (``register_uid``)."""
    with _register_lock:
        if uid in _STORAGE_UIDS or uid in _registered:
            return True
        if len(_registered) >= MAX_REGISTERED_CLASSES:
            return False
        try:
            register_uid(uid, f"MedVisionStorage_{uid.replace('.', '_')}", StorageServiceClass)
        except ValueError:  # not a valid UID: that one context is refused, not the association
            return False
        _registered.add(uid)
        return True


class Handlers:
    """The node's handlers, sharing its config, ingestor and node id."""

    def __init__(self, config: NodeConfig, ingestor: Ingestor, node_id: str) -> None:
        self.config, self.ingestor, self.node_id = config, ingestor, node_id
        self._ids: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()  # accepted ones
        self._slots: set[Any] = set()  # associations holding one of max_associations slots
        self._slots_lock = threading.Lock()

    def bindings(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_ACCEPTED, self.on_accepted),
                (evt.EVT_REJECTED, self.on_rejected), (evt.EVT_C_ECHO, self.on_echo),
                (evt.EVT_C_STORE, self.on_store), (evt.EVT_RELEASED, self.on_released),
                (evt.EVT_ABORTED, self.on_aborted), (evt.EVT_CONN_CLOSE, self.on_closed),
                (evt.EVT_ACSE_RECV, self.on_acse_received)]

    def _live_slots(self) -> set[Any]:
        """The slots held, less those of threads that ended on a path firing no end event."""
        self._slots = {assoc for assoc in self._slots if assoc.is_alive()}
        return self._slots

    def _take_slot(self, assoc: Any) -> bool:
        with self._slots_lock:
            if len(self._live_slots()) >= self.config.max_associations:
                return False
            self._slots.add(assoc)
            return True

    def _free_slot(self, assoc: Any) -> None:
        with self._slots_lock:
            self._slots.discard(assoc)

    # -- notifications -----------------------------------------------------------------
    def on_requested(self, event: Any) -> None:
        """Refuse callers off the allow list (or the wrong called AE) and any past the
        association limit; set the contexts of the one admitted."""
        assoc = event.assoc
        try:
            request = assoc.requestor.primitive
            calling, called = request.calling_ae_title.strip(), request.called_ae_title.strip()
            host = assoc.requestor.address
            rejection = None
            if not self.config.caller_allowed(calling, host):
                rejection = "calling AE not allowed", (0x01, 0x01, 0x03)
            elif self.config.require_called_ae and called != self.config.ae_title:
                rejection = "called AE not recognised", (0x01, 0x01, 0x07)
            elif not self._take_slot(assoc):  # transient, service provider (presentation): local limit
                rejection = f"association limit ({self.config.max_associations}) reached", (0x02, 0x03, 0x02)
            if rejection:
                reason, (result, source, diagnostic) = rejection
                self._record_rejection(assoc, reason)  # first: once the peer knows, status does too
                assoc.acse.send_reject(result, source, diagnostic)
                assoc.kill()  # as pynetdicom's own rejections do: lets the DUL send the RJ first
                return
            assoc.dul._run_loop_delay = DUL_POLL_S
            proposed = {cx.abstract_syntax for cx in request.presentation_context_definition_list}
            assoc.acceptor.supported_contexts = [
                build_context(uid, TRANSFER_SYNTAXES) for uid in sorted(proposed)
                if uid == Verification or (_is_storage(uid) and _ensure_storage_service(uid))]
        except Exception:  # noqa: BLE001 - a failing handler must not take the node down
            log.exception("association request handling failed; aborting it")
            self._free_slot(assoc)
            assoc.abort()

    def _record_rejection(self, assoc: Any, reason: str) -> None:
        """A refused association's row (``rejected``, with the reason) and its event."""
        association_id = uuid.uuid4().hex[:12]
        log.info("association %s from %s rejected: %s", association_id, assoc.requestor.address, reason)
        request = assoc.requestor.primitive
        try:
            self.ingestor.db(self.ingestor.store.dicom_association, association_id, node=self.node_id,
                             calling_ae=request.calling_ae_title.strip(), called_ae=request.called_ae_title.strip(),
                             peer_host=assoc.requestor.address, state="rejected", reason=reason)
        except Exception:  # noqa: BLE001 - bookkeeping only: the peer has its answer
            log.exception("recording the rejection of association %s failed", association_id)

    def on_accepted(self, event: Any) -> None:
        """The association is accepted: now it is recorded as open."""
        assoc = event.assoc
        association_id = uuid.uuid4().hex[:12]
        self._ids[assoc] = association_id
        request = assoc.requestor.primitive
        log.info("association %s accepted from %s@%s", association_id, request.calling_ae_title.strip(),
                 assoc.requestor.address)
        try:
            self.ingestor.db(self.ingestor.store.dicom_association, association_id, node=self.node_id,
                             calling_ae=request.calling_ae_title.strip(), called_ae=request.called_ae_title.strip(),
                             peer_host=assoc.requestor.address, state="open")
        except Exception:  # noqa: BLE001 - a failing handler must not take the node down
            log.exception("recording association %s failed; aborting it", association_id)
            self._ids.pop(assoc, None)
            assoc.abort()

    def on_rejected(self, event: Any) -> None:
        """pynetdicom refused it after ``on_requested`` admitted it (e.g. a user identity
        it could not verify): the slot goes back, the rejection is recorded."""
        self._free_slot(event.assoc)
        self._record_rejection(event.assoc, "refused in negotiation")

    def on_acse_received(self, event: Any) -> None:
        """An A-RELEASE-RQ arrived (pynetdicom answers it right after this returns): write
        the rows of every instance acknowledged so far first, so a peer that has released
        finds all it sent in the store (they were durable already, as their blobs)."""
        primitive = event.primitive
        if isinstance(primitive, A_RELEASE) and primitive.result is None and self._ids.get(event.assoc):
            try:
                if not self.ingestor.flush(RELEASE_FLUSH_TIMEOUT_S):
                    log.warning("rows of association %s not written within %.0f s of its release",
                                self._ids.get(event.assoc), RELEASE_FLUSH_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a failing handler must not take the node down
                log.exception("writing rows before a release failed")

    def on_released(self, event: Any) -> None:
        self._ended(event, "released")

    def on_aborted(self, event: Any) -> None:
        self._ended(event, "aborted")

    def on_closed(self, event: Any) -> None:
        """Free what a closed connection still holds, at once rather than at a timeout.

        A transfer cut off mid-dataset leaves its spool open: dropped here. A peer that
        connects and closes without an A-ASSOCIATE-RQ would keep its thread waiting the
        whole ACSE timeout (pynetdicom queues nothing for that case): wake it with the
        same ``None`` a timeout gives, so a connect/close flood does not pile up threads.
        """
        assoc = event.assoc
        self._free_slot(assoc)
        message = getattr(getattr(assoc, "dimse", None), "message", None)
        pending = getattr(message, "_data_set_file", None)
        if isinstance(pending, SpoolFile):
            pending.discard()
        if assoc.is_acceptor and assoc.requestor.primitive is None and not assoc.is_established:
            assoc.dul.to_user_queue.put(None)

    def _ended(self, event: Any, state: str) -> None:
        self._free_slot(event.assoc)
        association_id = self._ids.pop(event.assoc, None)
        if association_id is None:
            return
        try:
            self.ingestor.db(self.ingestor.store.dicom_association, association_id, state=state)
        except Exception:  # noqa: BLE001 - bookkeeping only
            log.exception("recording the end of association %s failed", association_id)

    # -- interventions -----------------------------------------------------------------
    def on_echo(self, event: Any) -> int:
        return 0x0000

    def on_store(self, event: Any) -> int:
        """Store the instance durably, then answer (its rows follow); see :mod:`dicom_node.ingest`."""
        association_id = self._ids.get(event.assoc)
        try:
            request = event.request
            spool = getattr(request, "_dataset_file", None)
            if spool is None or not hasattr(spool, "reader"):
                return CANNOT_UNDERSTAND
            outcome = self.ingestor.ingest(
                spool, request.AffectedSOPClassUID, request.AffectedSOPInstanceUID,
                association_id=association_id, calling_ae=event.assoc.requestor.ae_title.strip(),
                duplicate_policy=self.config.duplicate_policy)
            record_receipt(self.ingestor.store, outcome, request.AffectedSOPInstanceUID, via="C-STORE",
                           peer_ae=event.assoc.requestor.ae_title.strip(), peer_host=event.assoc.requestor.address)
        except Exception:  # noqa: BLE001 - answer with a status, never raise
            log.exception("C-STORE handling failed in association %s", association_id)
            return OUT_OF_RESOURCES_OTHER
        if outcome.status:
            log.warning("C-STORE refused with 0x%04X in association %s: %s", outcome.status, association_id,
                        outcome.reason)
            try:
                self.ingestor.db(self.ingestor.store.dicom_association, association_id, failed=1)
            except Exception:  # noqa: BLE001 - bookkeeping only
                log.exception("counting a failure of association %s failed", association_id)
        return outcome.status
