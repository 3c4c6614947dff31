"""Retrieve a study (or series) from an archive: C-GET, C-MOVE to our node, or WADO-RS.

One road in: every instance goes through :meth:`dicom_node.ingest.Ingestor.ingest`, the
node's durable, encrypted, idempotent store (C-GET's sub-operations arrive on our own
association as C-STOREs, into the same spooled blob as a pushed instance; C-MOVE's go to
the running node; WADO-RS's are spooled the same way). So a retrieve is acknowledged per
instance only once that instance is committed, and an identical resend stores nothing.

Resume: before retrieving, the archive is asked (C-FIND, image level) which instances
the study holds, and the store which of them are held already; only the missing ones are
asked for (by SOP Instance UID when some are held), so a retrieve cut off half-way
(association aborted, archive down, cancelled) is completed by running it again, with
no duplicate. What a retrieve did is a :class:`RetrieveResult`: the archive's final
status and sub-operation counts, its Failed SOP Instance UID List, what was stored,
what is still missing.

Progress: ``progress(Progress)`` after every instance (C-GET, WADO-RS: as it is stored;
C-MOVE: per pending response of the archive). Cancel: a ``threading.Event``, checked
between sub-operations; C-GET and C-MOVE then send C-CANCEL, WADO-RS stops reading.
"""

from __future__ import annotations

import io
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import _config, evt
from pynetdicom.presentation import build_context, build_role
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_node import spool
from dicom_node.audit import record_receipt
from dicom_node.handlers import DUL_POLL_S, TRANSFER_SYNTAXES
from dicom_node.ingest import CANNOT_UNDERSTAND, OUT_OF_RESOURCES_OTHER, SUCCESS, Ingestor
from dicom_node.pacs.config import Archive, ClientSettings
from dicom_node.pacs.connection import association
from dicom_node.pacs.query import Query, dicomweb_client, find, web_failure
from engine.errors import ErrorCode, MedVisionError

log = logging.getLogger(__name__)

PENDING = (0xFF00,)
CANCELLED = 0xFE00
WARNING = 0xB000
MOVE_DESTINATION_UNKNOWN = 0xA801
#: A C-GET proposes one storage context per SOP class the study holds; without a C-FIND
#: answer, these (a presentation context each, with the Get context under the 128 limit).
DEFAULT_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.4", "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.20",
    "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.481.1",
)
#: SOP Instance UIDs asked for in one image-level request (resume); the rest in the next.
UIDS_PER_REQUEST = 500
#: A study listed (image-level C-FIND) for the resume check has at most this many instances;
#: a larger one is retrieved whole (the listing would cost more than it saves).
MAX_LISTED = 100_000


@dataclass(frozen=True)
class Progress:
    """One instance retrieved (``sop_instance_uid``; None for C-MOVE's per-response count)."""

    done: int
    remaining: int | None
    sop_instance_uid: str | None = None
    outcome: str | None = None  # stored | duplicate | version | rejected | failed
    image_id: str | None = None


@dataclass
class RetrieveResult:
    """What a retrieve did: the archive's answer and what the store holds now."""

    archive: str
    method: str
    study_uid: str
    series_uid: str | None = None
    status: str | None = None  # the archive's final status, 0xHHHH (None: no final response)
    expected: int | None = None  # instances the archive listed (C-FIND), when it serves find
    already_held: int = 0  # of those, held before this retrieve (not asked for again)
    stored: int = 0  # new images stored by this retrieve
    duplicates: int = 0  # identical resends of held instances: nothing stored
    completed: int = 0  # the archive's sub-operation counts
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)  # the archive's list, and what we refused
    missing: list[str] = field(default_factory=list)  # listed by the archive and still not held
    cancelled: bool = False
    aborted: bool = False  # the association ended without a final response
    reason: str | None = None
    image_ids: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.failed_uids or self.failed or self.aborted or self.cancelled) \
            and self.status in ("0x0000", None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"complete": self.complete, "resumable": not self.complete}


class Retriever:
    """Retrieves from ``archive`` into the store behind ``ingestor`` (the node's ingest)."""

    def __init__(self, archive: Archive, settings: ClientSettings, ingestor: Ingestor, *,
                 duplicate_policy: str | None = None) -> None:
        self.archive, self.settings, self.ingestor = archive, settings, ingestor
        self.duplicate_policy = duplicate_policy

    # -- what to ask for -------------------------------------------------------------------
    def held(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs of the study the store holds already."""
        return held_instances(self.ingestor, study_uid)

    def plan(self, result: RetrieveResult) -> tuple[list[dict] | None, list[str] | None]:
        """(the archive's instances of the study, or None when it serves no find; the SOP
        Instance UIDs to ask for, or None for the whole study/series)."""
        if "find" not in self.archive.services:
            return None, None
        listed: list[dict] = []
        for page in find(self.archive, self.settings, Query(study_uid=result.study_uid, series_uid=result.series_uid),
                         level="image", limit=MAX_LISTED):
            listed += page
            if page.truncated:  # too many to list: the whole study is asked for, resends store nothing
                log.info("study has over %d instances: retrieved whole, without the resume list", MAX_LISTED)
                return None, None
        held = self.held(result.study_uid)
        result.expected = len(listed)
        result.already_held = sum(row["sop_instance_uid"] in held for row in listed)
        wanted = [row["sop_instance_uid"] for row in listed if row["sop_instance_uid"] not in held]
        return listed, (None if len(wanted) == len(listed) else wanted)

    def _finish(self, result: RetrieveResult, listed: list[dict] | None) -> RetrieveResult:
        if listed is not None:
            held = self.held(result.study_uid)
            result.missing = [row["sop_instance_uid"] for row in listed if row["sop_instance_uid"] not in held]
            if result.method == "C-MOVE":  # the node stored them: counted from the store
                result.stored = len(listed) - len(result.missing) - result.already_held
        log.info("retrieve %s of a study from %s: status %s, stored %d, missing %d", result.method,
                 self.archive.label, result.status, result.stored, len(result.missing))
        return result

    # -- C-GET -----------------------------------------------------------------------------
    def get(self, study_uid: str, series_uid: str | None = None, *, progress: Callable[[Progress], None] | None = None,
            cancel: threading.Event | None = None) -> RetrieveResult:
        """C-GET: the archive sends each instance back on our association (no AE set-up on its side)."""
        self.archive.require("get")
        result = RetrieveResult(self.archive.label, "C-GET", study_uid, series_uid)
        listed, wanted = self.plan(result)
        if wanted == []:
            return self._finish(result, listed)
        classes = sorted({row["sop_class_uid"] for row in listed or () if row["sop_class_uid"]}) \
            or list(DEFAULT_STORAGE_CLASSES)
        contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
        contexts += [build_context(uid, TRANSFER_SYNTAXES) for uid in classes[:127]]
        roles = [build_role(uid, scp_role=True) for uid in classes[:127]]
        spool.install(self.ingestor.store.blobs)
        _config.STORE_RECV_CHUNKED_DATASET = True
        receiver = _Receiver(self, result, progress, cancel, len(wanted) if wanted is not None else
                             (result.expected - result.already_held if listed is not None else None))
        association_id = uuid.uuid4().hex[:12]
        with association(self.archive, self.settings, contexts, roles=roles,
                         handlers=[(evt.EVT_C_STORE, receiver.on_store)], cancel=cancel) as assoc:
            assoc.dul._run_loop_delay = DUL_POLL_S
            receiver.association_id = association_id
            self.ingestor.db(self.ingestor.store.dicom_association, association_id, node="pacs-retrieve",
                             calling_ae=self.archive.ae_title, called_ae=self.settings.calling_ae,
                             peer_host=self.archive.host, state="open")
            try:
                for identifier in _identifiers(study_uid, series_uid, wanted):
                    self._run(assoc, assoc.send_c_get, identifier, StudyRootQueryRetrieveInformationModelGet,
                              result, cancel)
                    if result.aborted or result.cancelled:
                        break
            finally:
                self.ingestor.db(self.ingestor.store.dicom_association, association_id,
                                 state="aborted" if result.aborted else "released", failed=receiver.refused)
        return self._finish(result, listed)

    # -- C-MOVE ----------------------------------------------------------------------------
    def move(self, study_uid: str, destination: str, series_uid: str | None = None, *,
             destination_address: tuple[str, int] | None = None, progress: Callable[[Progress], None] | None = None,
             cancel: threading.Event | None = None) -> RetrieveResult:
        """C-MOVE to ``destination`` (our node's AE, which the archive must know as a modality)."""
        self.archive.require("move")
        result = RetrieveResult(self.archive.label, "C-MOVE", study_uid, series_uid)
        listed, wanted = self.plan(result)
        if wanted == []:
            return self._finish(result, listed)
        with association(self.archive, self.settings, [build_context(StudyRootQueryRetrieveInformationModelMove)],
                         cancel=cancel) as assoc:
            for identifier in _identifiers(study_uid, series_uid, wanted):
                send = _move_sender(assoc, destination)
                self._run(assoc, send, identifier, StudyRootQueryRetrieveInformationModelMove, result, cancel,
                          progress=progress)
                self._check_destination(result, destination, destination_address)
                if result.aborted or result.cancelled:
                    break
        return self._finish(result, listed)

    def _check_destination(self, result: RetrieveResult, destination: str,
                           address: tuple[str, int] | None) -> None:
        """0xA801 (and a failure before any sub-operation, which is how Orthanc 1.10 answers
        an unknown destination: 0xC000) names the AE the archive must be told about."""
        code = int(result.status, 16) if result.status else None
        unknown = code == MOVE_DESTINATION_UNKNOWN
        if not unknown and not (code is not None and 0xC000 <= code <= 0xCFFF and result.completed == 0):
            return
        where = f" at {address[0]}:{address[1]}" if address else ""
        advice = (f"add AE title {destination!r}{where} to its list of DICOM modalities"
                  " (or use C-GET, which needs no set-up on the archive)")
        details = {"archive": self.archive.label, "destination": destination, "status": result.status,
                   "destination_host": address[0] if address else None,
                   "destination_port": address[1] if address else None}
        if unknown:
            raise MedVisionError(ErrorCode.MOVE_DESTINATION_UNKNOWN,
                                 f"archive {self.archive.label} does not know the move destination"
                                 f" {destination!r} (0xA801): {advice}", **details)
        raise MedVisionError(ErrorCode.PACS_REFUSED,
                             f"archive {self.archive.label} refused the C-MOVE to {destination!r} with"
                             f" {result.status} before any sub-operation; if it does not know that destination,"
                             f" {advice}", **details)

    # -- one request -----------------------------------------------------------------------
    def _run(self, assoc: Any, send: Callable[..., Any], identifier: Dataset, model: str,
             result: RetrieveResult, cancel: threading.Event | None,
             progress: Callable[[Progress], None] | None = None) -> None:
        """Send one C-GET/C-MOVE and read its responses into ``result``."""
        base = (result.completed, result.failed, result.warning)
        cancel_sent = False
        for status, answer in send(identifier, model):
            if "Status" not in status:  # DIMSE timeout, A-ABORT, connection lost
                result.aborted = True
                result.reason = "the association ended before the archive's final response"
                return
            code = int(status.Status)
            counts = [int(status.get(f"NumberOf{kind}Suboperations") or 0)
                      for kind in ("Completed", "Failed", "Warning")]
            result.completed, result.failed, result.warning = (b + c for b, c in zip(base, counts, strict=True))
            if code in PENDING:
                if progress is not None:
                    remaining = status.get("NumberOfRemainingSuboperations")
                    progress(Progress(done=sum(counts), remaining=None if remaining is None else int(remaining)))
                if cancel is not None and cancel.is_set() and not cancel_sent:
                    assoc.send_c_cancel(1, query_model=model)
                    cancel_sent = True
                continue
            result.status = f"0x{code:04X}"
            if progress is not None:
                progress(Progress(done=sum(counts), remaining=0))
            result.cancelled = code == CANCELLED or cancel_sent
            failed = answer.get("FailedSOPInstanceUIDList") if answer is not None else None
            if failed:
                result.failed_uids += [str(uid) for uid in (failed if isinstance(failed, MultiValue | list)
                                                             else [failed])]
            if code not in (0x0000, CANCELLED, WARNING):
                result.reason = f"the archive answered 0x{code:04X}"
            return


class _Receiver:
    """C-GET's C-STORE sub-operations on our association, into the node's ingest."""

    def __init__(self, retriever: Retriever, result: RetrieveResult, progress: Callable[[Progress], None] | None,
                 cancel: threading.Event | None, total: int | None) -> None:
        self.retriever, self.result, self.progress, self.cancel, self.total = retriever, result, progress, cancel, total
        self.association_id: str | None = None
        self.refused = 0
        self.done = 0

    def on_store(self, event: Any) -> int:
        """Store one instance durably, then answer (the node's contract: never raise)."""
        try:
            request = event.request
            pending = getattr(request, "_dataset_file", None)
            if pending is None or not hasattr(pending, "reader"):
                return CANNOT_UNDERSTAND
            retriever = self.retriever
            kwargs = {"duplicate_policy": retriever.duplicate_policy} if retriever.duplicate_policy else {}
            outcome = retriever.ingestor.ingest(pending, request.AffectedSOPClassUID, request.AffectedSOPInstanceUID,
                                                association_id=self.association_id,
                                                calling_ae=retriever.archive.ae_title, **kwargs)
            record_receipt(retriever.ingestor.store, outcome, request.AffectedSOPInstanceUID, via="C-GET",
                           peer_ae=retriever.archive.ae_title, front_end="cli")
            self._count(str(request.AffectedSOPInstanceUID), outcome)
        except Exception:  # noqa: BLE001 - answer with a status, never raise into pynetdicom
            log.exception("storing a retrieved instance failed")
            return OUT_OF_RESOURCES_OTHER
        return outcome.status

    def _count(self, sop_uid: str, outcome: Any) -> None:
        self.done += 1
        if outcome.status != SUCCESS:
            self.refused += 1
            self.result.failed_uids.append(sop_uid)
        elif outcome.result in ("stored", "version"):
            self.result.stored += 1
            self.result.image_ids.append(outcome.image_id)
        else:
            self.result.duplicates += 1
        if self.progress is not None:
            remaining = None if self.total is None else max(self.total - self.done, 0)
            self.progress(Progress(self.done, remaining, sop_uid, outcome.result, outcome.image_id))


def held_instances(ingestor: Ingestor, study_uid: str) -> set[str]:
    """SOP Instance UIDs of a study that the store behind ``ingestor`` holds (acknowledged
    instances' rows are written first: the ingest writes rows after the acknowledgement)."""
    ingestor.flush()
    rows = ingestor.db(ingestor.store.db.query, "SELECT sop_instance_uid FROM images WHERE study_instance_uid = ?",
                       (study_uid,))
    return {row["sop_instance_uid"] for row in rows if row["sop_instance_uid"]}


def _identifiers(study_uid: str, series_uid: str | None, wanted: list[str] | None) -> Iterable[Dataset]:
    """The retrieve identifiers: the whole study/series, or the wanted instances in batches."""
    def base(level: str) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        ds.StudyInstanceUID = study_uid
        if series_uid or level == "IMAGE":
            ds.SeriesInstanceUID = series_uid or ""
        return ds

    if wanted is None:
        yield base("SERIES" if series_uid else "STUDY")
        return
    for start in range(0, len(wanted), UIDS_PER_REQUEST):
        ds = base("IMAGE")
        ds.SOPInstanceUID = wanted[start:start + UIDS_PER_REQUEST]
        yield ds


def _move_sender(assoc: Any, destination: str) -> Callable[[Dataset, str], Any]:
    def send(identifier: Dataset, model: str) -> Any:
        return assoc.send_c_move(identifier, destination, model)
    return send


# -- WADO-RS ---------------------------------------------------------------------------------
def wado(archive: Archive, ingestor: Ingestor, study_uid: str, *, progress: Callable[[Progress], None] | None = None,
         cancel: threading.Event | None = None) -> RetrieveResult:
    """WADO-RS: the study's instances over HTTP, each through the same ingest as a C-STORE."""
    import requests

    client = dicomweb_client(archive)
    result = RetrieveResult(archive.label, "WADO-RS", study_uid)
    held = held_instances(ingestor, study_uid)
    try:
        listed = [Dataset.from_json(row) for row in client.search_for_instances(
            study_instance_uid=study_uid, fields=["SOPInstanceUID", "SeriesInstanceUID"])]
    except requests.exceptions.RequestException as exc:
        raise web_failure(archive, exc, "QIDO-RS instance search") from None
    uids = [str(row.SOPInstanceUID) for row in listed]
    result.expected = len(uids)
    result.already_held = sum(uid in held for uid in uids)
    done = 0
    for row in listed:
        uid = str(row.SOPInstanceUID)
        if uid in held:
            continue
        if cancel is not None and cancel.is_set():
            result.cancelled = True
            break
        try:
            ds = client.retrieve_instance(study_uid, str(row.SeriesInstanceUID), uid)
        except requests.exceptions.RequestException as exc:
            result.aborted = True
            result.reason = str(web_failure(archive, exc, "WADO-RS retrieve"))
            break
        outcome = _ingest_dataset(ingestor, ds, archive.ae_title)
        done += 1
        if outcome.status != SUCCESS:
            result.failed_uids.append(uid)
        elif outcome.result in ("stored", "version"):
            result.stored += 1
            result.image_ids.append(outcome.image_id)
        else:
            result.duplicates += 1
        if progress is not None:
            progress(Progress(done, len(uids) - result.already_held - done, uid, outcome.result, outcome.image_id))
    held = held_instances(ingestor, study_uid)
    result.missing = [uid for uid in uids if uid not in held]
    result.status = "0x0000" if not result.missing and not result.failed_uids else None
    return result


def _ingest_dataset(ingestor: Ingestor, ds: Dataset, calling_ae: str) -> Any:
    """A dataset received over HTTP, written as Part 10 into a spooled blob, then ingested."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    pending = spool.SpoolFile(ingestor.store.blobs)
    pending.write(buffer.getbuffer())
    del buffer
    outcome = ingestor.ingest(pending, ds.SOPClassUID, ds.SOPInstanceUID, association_id=None, calling_ae=calling_ae)
    record_receipt(ingestor.store, outcome, ds.SOPInstanceUID, via="WADO-RS", peer_ae=calling_ae, front_end="cli")
    return outcome

