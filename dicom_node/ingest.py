"""Durable, idempotent storage of one received instance; the C-STORE status it earns.

Order of a store (nothing is acknowledged before it is durable; one fsync in the round trip):

1. the dataset arrived, sealed as it came, in a new encrypted blob's temp file
   (random id; :mod:`dicom_node.spool`);
2. its header (up to Pixel Data, large values deferred) is parsed from it:
   unreadable -> 0xC210; SOP Class/Instance UID missing, malformed or unlike the
   request -> 0xA900; an image over the engine's decode limits
   (:class:`engine.config.DecodeLimits`: rows x columns, the whole Pixel Data, the
   inflated size of a Deflated dataset, which also bounds a native header: everything
   but Pixel Data) -> 0xA700, since the node could never decode it
   (the temp file is deleted). A Deflated dataset is inflated in bounded steps, its
   large values dropped as they pass, never whole in memory. UIDs are checked against
   the UID grammar and never used in paths;
3. the blob is committed with its *index record* sealed in it (the images row, the
   study session's name, the association, the arrival rule's job, the duplicate
   policy, the time: :func:`engine.store.dicom.instance_index`): record sealed, fsync,
   rename, fsync of the directory. The blob is now the durable record (all but its
   last chunk was sealed and written while it arrived: :mod:`dicom_node.spool`);
4. 0x0000;
5. its rows (study session created or reused, blob + image rows, receipt, analysis
   job, events) are written after, many instances per transaction
   (:mod:`dicom_node.indexer`), at the latest when the association is released; a
   crash before that leaves the blob, indexed when the store is next opened.

Duplicate policy (same SOP Instance UID already stored): an identical resend is
answered 0x0000 and its blob deleted when its rows are written (the instance is safely
held, so a resend after a lost response is not an error). One whose content differs is
recorded as a ``dicom.duplicate`` event and logged (ids only), then settled by the
node's ``duplicate_policy``: ``keep_first`` (default: dropped, 0x0000), ``keep_newest``
(stored as a new image superseding the held one, which stays; 0x0000) or ``refuse``
(dropped, 0x0111 Duplicate SOP Instance); see :mod:`dicom_node.config`. Only ``refuse``
changes the answer, so only then is the held copy looked up before answering: in the
store and among the instances acknowledged but not yet written (:class:`Held`).

Disk full -> 0xA700 and any other failure before the acknowledgement -> 0xA701, with
no blob left behind and nothing in the database. Logs carry ids and exception types,
never values.
"""

from __future__ import annotations

import errno
import itertools
import logging
import re
import struct
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError

from dicom_node.audit import record_stored
from dicom_node.config import INDEX_INTERVAL_S
from dicom_node.indexer import IndexWriter
from engine.config import DecodeLimits
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.limits import image_too_large, read_dicom
from engine.imaging.records import arrival_job, record_from_header
from engine.store import Store
from engine.store.common import now_iso
from engine.store.dicom import KEEP_FIRST, REFUSE, instance_index

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
OUT_OF_RESOURCES_OTHER = 0xA701
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
#: A resend with other content under ``duplicate_policy = "refuse"``: PS3.7 Annex C
#: "Duplicate SOP Instance", a Failure (see :data:`dicom_node.config.DUPLICATE_POLICY`).
DUPLICATE_REFUSED = 0x0111
ANALYZE_JOB = "dicom_node.analyze"
#: Blob temp files untouched this long belong to a dead writer (another live process
#: may be writing its own right now, so younger ones are left alone).
STALE_TMP_S = 30.0

#: Deeper sequence nesting is refused (0xC210): real objects (SR trees) stay far below.
MAX_SEQUENCE_DEPTH = 64

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


@dataclass(frozen=True)
class Outcome:
    """What happened to one C-STORE request."""

    status: int
    result: str  # stored (durable, its rows follow) | duplicate (under refuse) | rejected | failed
    image_id: str | None = None
    session_id: str | None = None
    reason: str | None = None


def clean_uid(value: Any) -> str | None:
    """A UID from peer data if it is a well-formed UID (<= 64 chars), else None."""
    text = str(value or "").strip().rstrip("\x00").strip()
    return text if len(text) <= 64 and _UID.match(text) else None


class Held:
    """Under ``refuse``: the SOP instances acknowledged as new whose rows are not written
    yet (UID -> content hash), so a resend in between is answered as the store will settle it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._pending: dict[str, str] = {}

    def get(self, sop_instance_uid: str) -> str | None:
        return self._pending.get(sop_instance_uid)

    def add(self, sop_instance_uid: str, sha256: str) -> None:
        self._pending[sop_instance_uid] = sha256

    def forget(self, sop_instance_uid: str, sha256: str) -> None:
        """Its rows are written (or its blob failed): the store answers for it now."""
        with self.lock:
            if self._pending.get(sop_instance_uid) == sha256:
                del self._pending[sop_instance_uid]


class Ingestor:
    """Stores instances for all associations; database writes go through one thread so
    a node holds one connection however many associations come and go (the refuse
    policy's look-ups through a second one, never queued behind a write)."""

    def __init__(self, store: Store, *, analyze: bool = True, job_max_attempts: int = 3,
                 limits: DecodeLimits | None = None, index_interval_s: float = INDEX_INTERVAL_S,
                 on_indexed: Callable[[dict, dict], None] | None = None) -> None:
        self.store = store
        self.on_indexed = on_indexed  # (instance, how the store settled it) after its rows are written
        self.analyze = analyze
        self.job_max_attempts = job_max_attempts
        self.limits = limits or DecodeLimits.from_env()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dicom-db")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dicom-read")
        self._held = Held()
        self._sequence = itertools.count(time.time_ns())
        self.writer = IndexWriter(store, self.db, interval_s=index_interval_s, on_written=self._written)

    def db(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one store method (bound) on the database thread and wait for it."""
        return self._db.submit(method, *args, **kwargs).result()

    def flush(self, timeout: float | None = None) -> bool:
        """Write the rows of every instance acknowledged so far (see :class:`IndexWriter`)."""
        return self.writer.flush(timeout)

    def close(self) -> None:
        self.writer.close()
        self._reader.shutdown(wait=True)
        self._db.shutdown(wait=True)

    def ingest(self, spool: Any, request_class: str, request_instance: str, *,
               association_id: str | None, calling_ae: str | None, duplicate_policy: str = KEEP_FIRST) -> Outcome:
        """Store one received dataset (a :class:`~dicom_node.spool.SpoolFile`) durably and
        queue its rows; never raises."""
        try:
            reader = spool.reader()
        except OSError as exc:  # the receive itself met a disk error
            spool.discard()
            return _storage_failure(exc)
        try:
            checked = _checked_header(reader, request_class, request_instance, self.limits)
        except Exception as exc:  # noqa: BLE001 - an unforeseen parser failure still cleans up below
            checked = _storage_failure(exc)
        finally:
            reader.close()
        if isinstance(checked, Outcome):
            spool.discard()
            return checked
        record, session_name = checked
        instance = {"blob_id": spool.blob_id, "size": spool.size, "sha256": spool.sha256, "record": record,
                    "association_id": association_id, "calling_ae": calling_ae, "session_name": session_name,
                    "job_kind": ANALYZE_JOB if self.analyze and arrival_job(record) else None,
                    "max_attempts": self.job_max_attempts, "duplicate_policy": duplicate_policy,
                    "received_at": now_iso()}
        # Under keep_first/keep_newest the answer is 0x0000 whatever the store holds; a
        # duplicate's blob is committed too, so what its rows say is settled once, in order.
        outcome = self._refuse_check(instance) if duplicate_policy == REFUSE else None
        if outcome is not None and outcome.result == "failed":
            spool.discard()
            return outcome
        try:
            spool.commit(instance_index(**instance, sequence=next(self._sequence)))
        except Exception as exc:  # noqa: BLE001 - a handler answers with a status, never raises
            spool.discard()
            self.store.blobs.delete(spool.blob_id)
            if outcome is None:
                self._held.forget(record["sop_instance_uid"], spool.sha256)
            return _storage_failure(exc)
        self.writer.add(instance)
        return outcome or Outcome(SUCCESS, "stored")

    def _refuse_check(self, instance: dict) -> Outcome | None:
        """Under ``refuse``: None for a new instance (now held), else its answer: 0x0000 for
        an identical resend, 0x0111 for other content under a held UID."""
        uid, sha256 = instance["record"]["sop_instance_uid"], instance["sha256"]
        try:
            with self._held.lock:
                held = self._held.get(uid) or self._reader.submit(self.store.dicom.held_sha256, uid).result()
                if held is None:
                    self._held.add(uid, sha256)
                    return None
        except Exception as exc:  # noqa: BLE001 - a handler answers with a status, never raises
            return _storage_failure(exc)
        if held == sha256:
            return Outcome(SUCCESS, "duplicate")
        log.warning("duplicate SOP instance with different content refused (0x%04X), association %s",
                    DUPLICATE_REFUSED, instance["association_id"])
        return Outcome(DUPLICATE_REFUSED, "rejected", reason="duplicate SOP instance with different content")

    def _written(self, instance: dict, done: dict) -> None:
        """After an instance's rows are written: its audit record; a blob no row took is deleted."""
        record_stored(self.store, instance, done)
        if not done["blob_used"]:
            self.store.blobs.delete(instance["blob_id"])
        self._held.forget(instance["record"]["sop_instance_uid"], instance["sha256"])
        _log_duplicate(done, instance["association_id"])
        if self.on_indexed is not None:
            self.on_indexed(instance, done)


def _log_duplicate(done: dict, association_id: str | None) -> None:
    """Log how the store settled a resend with other content (ids only)."""
    status, image_id = done["status"], done["image_id"]
    if status == "version":
        log.warning("duplicate SOP instance with different content stored as a new version: image %s,"
                    " association %s", image_id, association_id)
    elif status == "duplicate" and done["same_content"] is False:
        log.warning("duplicate SOP instance with different content dropped, first received kept: image %s,"
                    " association %s", image_id, association_id)


def _storage_failure(exc: Exception) -> Outcome:
    """Disk full -> 0xA700; any other failure -> 0xA701 (logged by type, never by value)."""
    if isinstance(exc, OSError):
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = f"storage error ({errno.errorcode.get(exc.errno or 0, type(exc).__name__)})"
    elif isinstance(exc, MedVisionError):
        full, reason = exc.code is ErrorCode.DISK_FULL, exc.code.value
    else:
        full, reason = False, type(exc).__name__
        log.error("C-STORE failed (%s); traceback without values:\n%s", type(exc).__name__,
                  "".join(traceback.format_tb(exc.__traceback__)))
    return Outcome(OUT_OF_RESOURCES if full else OUT_OF_RESOURCES_OTHER, "failed", reason=reason)


def _checked_header(reader: Any, request_class: str, request_instance: str,
                    limits: DecodeLimits) -> Outcome | tuple[dict, str | None]:
    """The images row and session name from a received header, or the refusal it earns."""
    try:
        ds, inflated = read_dicom(reader, limits, name="dicom-node.dcm", stop_before_pixels=True,
                                  defer_size="64 KB")
        if inflated is not None:
            inflated.drain()  # the whole stream, within the limit, chunk by chunk, nothing kept
        elif reader.tell() > limits.max_inflated_bytes:  # a native header as large as a bomb inflates to
            raise image_too_large("dicom-node.dcm", "the header (all but Pixel Data) of", reader.tell(),
                                  limits.max_inflated_bytes, "MEDVISION_MAX_INFLATED_BYTES")
        problem = _structure_problem(ds, inflated or reader)
        if problem:
            return Outcome(CANNOT_UNDERSTAND, "rejected", reason=problem)
        record, session_name = _record(ds)
    except MedVisionError as exc:
        if exc.code is not ErrorCode.IMAGE_TOO_LARGE:
            raise
        return Outcome(OUT_OF_RESOURCES, "rejected", reason=exc.code.value)
    except (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            EOFError, OSError, OverflowError, RecursionError, MemoryError, NotImplementedError,
            zlib.error) as exc:
        return Outcome(CANNOT_UNDERSTAND, "rejected", reason=f"header unreadable ({type(exc).__name__})")
    if record["sop_class_uid"] != clean_uid(request_class) \
            or record["sop_instance_uid"] != clean_uid(request_instance) or not record["sop_instance_uid"]:
        return Outcome(DATASET_MISMATCH, "rejected", reason="SOP Class/Instance UID differs from the request")
    return record, session_name


def _structure_problem(ds: pydicom.Dataset, reader: Any) -> str | None:
    """Cheap checks the header parse alone would miss: lengths running past the end
    (a truncated transfer or an absurd declared length, which pydicom seeks over when
    it defers a value), native pixel data shorter than declared, nesting too deep."""
    if reader.tell() > reader.size:
        return "a declared length runs past the end of the dataset"
    if not _depth_ok(ds, MAX_SEQUENCE_DEPTH):
        return f"sequences nested deeper than {MAX_SEQUENCE_DEPTH}"
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or syntax.is_deflated or reader.tell() == reader.size:
        return None
    start = reader.tell()
    header = reader.read(12)
    if len(header) < 8:
        return "truncated element header"
    order = "<" if syntax.is_little_endian else ">"
    tag = struct.unpack(order + "HH", header[:4])
    if tag != (0x7FE0, 0x0010):
        return None  # float/double pixel data or trailing elements: parsed above already
    if syntax.is_implicit_VR:
        length, size = struct.unpack(order + "I", header[4:8])[0], 8
    elif header[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"):
        length, size = struct.unpack(order + "I", header[8:12])[0], 12
    else:
        length, size = struct.unpack(order + "H", header[6:8])[0], 8
    if length != 0xFFFFFFFF and start + size + length > reader.size:
        return "pixel data shorter than its declared length"
    return None


def _depth_ok(ds: pydicom.Dataset, budget: int) -> bool:
    """Every sequence nested at most ``budget`` deep (parses the non-pixel header; a
    deferred value, never a sequence, is not read back)."""
    for tag in ds.keys():
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
            continue  # deferred: left unparsed, as everything else will leave it
        if isinstance(raw, RawDataElement) and raw.VR is not None and raw.VR not in ("SQ", "UN"):
            continue  # explicit VR, not a sequence (nor one pydicom may read UN as): nothing nested
        element = ds[tag]
        if element.VR == "SQ":
            if budget == 0 or not all(_depth_ok(item, budget - 1) for item in element.value):
                return False
    return True


def _record(ds: pydicom.Dataset) -> tuple[dict, str | None]:
    """The images row of a received instance (:func:`engine.imaging.records.record_from_header`),
    its UIDs held to the UID grammar, and the study session's name."""
    record = record_from_header(ds, source_name="dicom-node.dcm", received_by="dicom_node")
    for key in ("sop_class_uid", "sop_instance_uid", "series_instance_uid", "study_instance_uid"):
        record[key] = clean_uid(record[key])
    description = str(ds.get("StudyDescription") or "").strip()[:200]
    return record, description or f"{record['modality'] or 'DICOM'} study"


def reconcile(store: Store) -> dict:
    """At node start: index every acknowledged instance whose rows a crash (or a failed
    write) lost, remove what dead writers left, and report image rows whose blob is gone
    (``DATABASE_ERROR`` in the log, ids only: that data is lost and no sweep hides it)."""
    indexed = store.dicom.index_unindexed_blobs()
    swept = sweep_stale_blob_temps(store)
    if swept:
        log.info("removed %d file(s) left by an interrupted receive", swept)
    missing = store.dicom.rows_without_blob()
    if missing:
        log.error("%s: %d image row(s) point to a missing blob: %s", ErrorCode.DATABASE_ERROR.value, len(missing),
                  ", ".join(f"image {m['image_id']} (blob {m['blob_id']})" for m in missing[:20]))
    return {**indexed, "swept": swept, "rows_without_blob": missing}


def sweep_stale_blob_temps(store: Store, min_age_s: float = STALE_TMP_S) -> int:
    """Remove what a writer that died (kill -9) left: blob temp files (partial) and whole
    blobs committed to disk whose database row never was and that carry no index record
    (a blob with one is a received instance's durable record: indexed, never removed).
    Only files untouched for ``min_age_s``: another live process may be between those two
    steps right now."""
    root = Path(store.blobs.root)
    if not root.exists():
        return 0
    known = {row["id"] for row in store.db.query("SELECT id FROM blobs")}
    removed, now = 0, time.time()
    for path in [*root.glob("*/*.tmp"), *(p for p in root.glob("*/*.mvb") if p.stem not in known)]:
        try:
            if now - path.stat().st_mtime < min_age_s or (path.suffix == ".mvb" and _has_index(store, path.stem)):
                continue
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _has_index(store: Store, blob_id: str) -> bool:
    try:
        return store.blobs.read_index(blob_id) is not None
    except MedVisionError:
        return True  # a damaged record is still somebody's data: kept, reported by the index pass
