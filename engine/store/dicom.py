"""The DICOM node's tables: received instances, associations, node heartbeats, the C-STORE outbox.

A received instance's blob is its durable record: the node seals an *index record*
(:func:`instance_index`: everything its rows will hold) into the blob, commits it (fsync +
rename), acknowledges it, and only then calls :meth:`DicomRepository.add_instances`
(many instances, one transaction): per instance the study's session (created or
reused), the blob row, the image row, the receipt, the analysis job and their events.
Indexing is idempotent (a blob with a row is skipped), so a blob whose rows a crash
lost is indexed by :meth:`DicomRepository.index_unindexed_blobs` whenever the store is
opened. An instance whose SOP Instance UID is already stored is a duplicate, settled
by the node's duplicate policy (:data:`DUPLICATE_POLICIES`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from engine.errors import MedVisionError
from engine.events import EventKind
from engine.store.blobs import BlobStore
from engine.store.common import dumps, loads, new_id, now_iso
from engine.store.database import Connection, Database
from engine.store.events import EventLog
from engine.store.jobs import JobRepository
from engine.store.sessions import ImageRepository, SessionRepository

#: What to do with a resend of a stored SOP Instance UID whose content differs (an
#: identical resend is always a harmless duplicate): keep the first copy, store it as a
#: new version of the image, or refuse it. ``dicom_node.config`` documents the choice.
KEEP_FIRST, KEEP_NEWEST, REFUSE = "keep_first", "keep_newest", "refuse"
DUPLICATE_POLICIES = (KEEP_FIRST, KEEP_NEWEST, REFUSE)
#: ``dicom-node status`` lists this many of today's duplicates, newest first.
LATEST_DUPLICATES = 5
#: The ``kind`` of a received instance's index record (:func:`instance_index`).
INSTANCE_INDEX = "dicom.instance"
#: What an index record carries: :meth:`DicomRepository.add_instance`'s arguments.
_INDEX_FIELDS = ("blob_id", "size", "sha256", "record", "association_id", "calling_ae", "session_name",
                 "job_kind", "max_attempts", "duplicate_policy", "received_at")

log = logging.getLogger(__name__)


def instance_index(*, blob_id: str, size: int, sha256: str, record: dict, association_id: str | None,
                   calling_ae: str | None, session_name: str | None, job_kind: str | None, max_attempts: int,
                   duplicate_policy: str, received_at: str, sequence: int) -> bytes:
    """The index record sealed into a received instance's blob: the arguments of its
    :meth:`DicomRepository.add_instance` (``sequence``: the acknowledgement order)."""
    return dumps({"kind": INSTANCE_INDEX, "version": 1, "sequence": sequence, "blob_id": blob_id, "size": size,
                  "sha256": sha256, "record": record, "association_id": association_id, "calling_ae": calling_ae,
                  "session_name": session_name, "job_kind": job_kind, "max_attempts": max_attempts,
                  "duplicate_policy": duplicate_policy, "received_at": received_at}).encode()


def read_instance_index(blobs: BlobStore, blob_id: str) -> dict | None:
    """A blob's index record as :meth:`DicomRepository.add_instance` arguments plus
    ``sequence``; None for a blob without one (an artefact, or an older blob)."""
    sealed = blobs.read_index(blob_id)
    if sealed is None:
        return None
    index = json.loads(sealed)
    if not isinstance(index, dict) or index.get("kind") != INSTANCE_INDEX or index.get("blob_id") != blob_id:
        return None
    return {key: index[key] for key in (*_INDEX_FIELDS, "sequence")}


class DicomRepository:
    """Instances received, associations, nodes and the outbox of results to send."""

    def __init__(self, db: Database, events: EventLog, sessions: SessionRepository, images: ImageRepository,
                 jobs: JobRepository, blobs: BlobStore) -> None:
        self.db, self.events, self.sessions, self.images, self.jobs = db, events, sessions, images, jobs
        self.blobs = blobs

    def add_instances(self, instances: list[dict]) -> list[dict]:
        """:meth:`add_instance` for each (keyword arguments, in acknowledgement order), all
        in one transaction: one commit, one WAL fsync, however many instances."""
        with self.db.transaction():
            return [self.add_instance(**instance) for instance in instances]

    def held_sha256(self, sop_instance_uid: str) -> str | None:
        """The content hash of the newest stored copy of a SOP instance (None: not held)."""
        rows = self.db.query("SELECT sha256 FROM images WHERE sop_instance_uid = ? ORDER BY rowid DESC LIMIT 1",
                             (sop_instance_uid,))
        return rows[0]["sha256"] if rows else None

    def add_instance(self, *, blob_id: str, size: int, sha256: str, record: dict,
                     association_id: str | None, calling_ae: str | None,
                     session_name: str | None = None, job_kind: str | None = None,
                     max_attempts: int = 3, duplicate_policy: str = KEEP_FIRST,
                     received_at: str | None = None) -> dict:
        """Record a received instance; returns ``status`` (stored|duplicate|version|refused,
        or ``indexed`` when a row already holds ``blob_id``: indexing is idempotent),
        ``image_id``, ``session_id``, ``same_content`` (a resend of a stored SOP Instance
        UID), ``blob_used`` (False: the caller deletes its blob file) and ``job_id``.
        ``received_at``: when it was acknowledged (default: now).

        A resend identical to the newest stored copy is a ``duplicate`` whatever the
        policy. One with other content is settled by ``duplicate_policy``
        (:data:`DUPLICATE_POLICIES`) and announced by a ``dicom.duplicate`` event:
        ``keep_first`` keeps what is held (``duplicate``); ``keep_newest`` adds it as a new
        image row in the same session whose metadata ``supersedes`` the newest one held,
        which stays (``version``); ``refuse`` keeps what is held (``refused``).
        """
        if duplicate_policy not in DUPLICATE_POLICIES:
            raise ValueError(f"unknown duplicate policy {duplicate_policy!r}")
        stamp, image_id = received_at or now_iso(), new_id()
        with self.db.transaction() as tx:
            if tx.execute("SELECT 1 FROM blobs WHERE id = ?", (blob_id,)).fetchone() is not None:
                return {"status": "indexed", "image_id": None, "session_id": None, "same_content": None,
                        "blob_used": True, "job_id": None}
            row = tx.execute("SELECT id, session_id, sha256 FROM images WHERE sop_instance_uid = ?"
                             " ORDER BY rowid DESC LIMIT 1", (record["sop_instance_uid"],)).fetchone()
            if row is not None:
                tx.execute("UPDATE dicom_associations SET duplicates = duplicates + 1 WHERE id = ?",
                           (association_id,))
                same = row[2] == sha256
                if same or duplicate_policy != KEEP_NEWEST:
                    if not same:
                        outcome = "refused" if duplicate_policy == REFUSE else "kept_first"
                        self.events.append(tx, row[1], EventKind.DICOM_DUPLICATE, {
                            "image_id": row[0], "association_id": association_id, "policy": duplicate_policy,
                            "outcome": outcome})
                    return {"status": "duplicate" if same or duplicate_policy == KEEP_FIRST else "refused",
                            "image_id": row[0], "session_id": row[1], "same_content": same, "blob_used": False,
                            "job_id": None}
                session_id = row[1]
                record = dict(record, metadata={**(record.get("metadata") or {}), "supersedes": row[0]})
                self.events.append(tx, session_id, EventKind.DICOM_DUPLICATE, {
                    "image_id": image_id, "association_id": association_id, "policy": duplicate_policy,
                    "outcome": "stored_as_version", "supersedes": row[0]})
            else:
                session_id = self._study_session(tx, record, session_name, association_id, calling_ae, stamp)
            existing = self.images.find_blob(sha256, size)
            if existing is None:
                self.images.insert_blob(tx, blob_id, size, sha256, stamp)
            self.images.insert(tx, session_id, record, image_id=image_id, blob_id=existing or blob_id,
                               sha256=sha256, stamp=stamp, source="dicom")
            tx.execute("INSERT INTO dicom_received (image_id, association_id, calling_ae, received_at)"
                       " VALUES (?, ?, ?, ?)", (image_id, association_id, calling_ae, stamp))
            tx.execute("UPDATE dicom_associations SET received = received + 1 WHERE id = ?", (association_id,))
            job_id = None
            if job_kind:
                job_id = self.jobs.enqueue(job_kind, {"session_id": session_id, "image_id": image_id},
                                           session_id=session_id, image_id=image_id, max_attempts=max_attempts)
        return {"status": "stored" if row is None else "version", "image_id": image_id, "session_id": session_id,
                "same_content": None if row is None else False, "blob_used": existing is None, "job_id": job_id}

    def _study_session(self, tx: Connection, record: dict, session_name: str | None, association_id: str | None,
                       calling_ae: str | None, stamp: str) -> str:
        """The study's session, created if new (no usable Study UID: one per association)."""
        study = record["study_instance_uid"]
        found = tx.execute("SELECT id FROM sessions WHERE study_instance_uid = ?", (study,)).fetchone() \
            if study else tx.execute("SELECT id FROM sessions WHERE study_instance_uid IS NULL"
                                     " AND json_extract(metadata, '$.association_id') = ?",
                                     (association_id,)).fetchone()
        if found is not None:
            return str(found[0])
        return self.sessions.insert(
            tx, name=session_name, study_instance_uid=study, stamp=stamp, source="dicom",
            metadata={"source": "dicom", "calling_ae": calling_ae, "association_id": association_id})

    def index_unindexed_blobs(self, erasing: Callable[[], set[str]] = set) -> dict:
        """Index every received instance whose blob has no row yet (a crash between the
        acknowledgement and the row write, or a row write that failed), oldest first,
        each queueing its job as it would have; returns ``indexed``, ``dropped`` (a
        duplicate's blob, deleted as its write would have) and ``unreadable`` (blob ids
        whose index record fails its check: kept, never deleted). Idempotent: safe while
        a node in another process indexes the same blobs. The blobs of an erasure in
        progress (``erasing()``, asked after the rows are read: an erasure committed in
        between deletes a row and lists its blob in one transaction) are left alone."""
        known = {row["id"] for row in self.db.query("SELECT id FROM blobs")}
        known |= erasing()
        found, unreadable = [], []
        for blob_id in sorted(self.blobs.ids_on_disk() - known):
            try:
                index = read_instance_index(self.blobs, blob_id)
            except FileNotFoundError:
                continue  # deleted meanwhile (a duplicate dropped by its writer)
            except (MedVisionError, ValueError, KeyError, TypeError):
                unreadable.append(blob_id)
                continue
            if index is not None:
                found.append(index)
        found.sort(key=lambda index: (index["received_at"], index["sequence"]))
        for index in found:
            del index["sequence"]
        dropped = 0
        for instance, done in zip(found, self.add_instances(found) if found else [], strict=True):
            if not done["blob_used"]:
                self.blobs.delete(instance["blob_id"])
                dropped += 1
        if found or unreadable:
            log.warning("indexed %d received instance(s) whose rows were missing (%d duplicate(s) dropped);"
                        " %d blob(s) with a damaged index record kept", len(found) - dropped, dropped,
                        len(unreadable))
        return {"indexed": len(found) - dropped, "dropped": dropped, "unreadable": unreadable}

    def rows_without_blob(self) -> list[dict]:
        """Image rows whose blob file is gone (``image_id``, ``blob_id``): lost data to report."""
        on_disk = self.blobs.ids_on_disk()
        return [{"image_id": row["id"], "blob_id": row["blob_id"]} for row in
                self.db.query("SELECT id, blob_id FROM images WHERE blob_id IS NOT NULL ORDER BY rowid")
                if row["blob_id"] not in on_disk]

    def association(self, association_id: str, *, node: str | None = None, calling_ae: str | None = None,
                    called_ae: str | None = None, peer_host: str | None = None, state: str = "open",
                    reason: str | None = None, failed: int = 0) -> None:
        """Insert (with ``node``) or update an association's row (``dicom.association`` once it ends)."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            if node is not None:
                tx.execute("INSERT INTO dicom_associations (id, node, calling_ae, called_ae, peer_host, state, reason,"
                           " started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (association_id, node, calling_ae, called_ae, peer_host, state, reason, stamp,
                            None if state == "open" else stamp))
            else:
                tx.execute("UPDATE dicom_associations SET state = ?, reason = coalesce(?, reason),"
                           " failed = failed + ?, ended_at = CASE WHEN ? = 'open' THEN NULL ELSE ? END WHERE id = ?",
                           (state, reason, failed, state, stamp, association_id))
            if state != "open":
                self.events.append(tx, None, EventKind.DICOM_ASSOCIATION,
                                   {"association_id": association_id, "state": state, "reason": reason})

    def node_beat(self, node: str, *, pid: int, ae_title: str, host: str, port: int,
                  stopped: bool = False, dead_before: str | None = None) -> None:
        """Register a listening node or refresh its heartbeat (``stopped``: it shut down).

        ``dead_before`` (at start-up): associations left open by nodes whose last beat is
        older are closed as aborted (their process died)."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            if dead_before is not None:
                tx.execute("UPDATE dicom_associations SET state = 'aborted', reason = 'node died', ended_at = ?"
                           " WHERE state = 'open' AND node IN (SELECT node FROM dicom_nodes WHERE"
                           " heartbeat_at < ? OR stopped_at IS NOT NULL)", (stamp, dead_before))
            tx.execute("INSERT INTO dicom_nodes (node, pid, ae_title, host, port, started_at, heartbeat_at, stopped_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(node) DO UPDATE SET"
                       " heartbeat_at = excluded.heartbeat_at, stopped_at = excluded.stopped_at",
                       (node, pid, ae_title, host, port, stamp, stamp, stamp if stopped else None))

    def status(self, since: str, alive_after: str = "") -> dict:
        """Counters for ``dicom-node status``: nodes, associations, receipts and queues since
        ``since``; open associations count only for nodes that beat after ``alive_after``."""
        def one(sql: str, params: tuple = ()) -> int:
            return int(self.db.query(sql, params)[0]["n"])
        first_today = self._first_event_at(since)
        return {
            "nodes": self.db.query("SELECT * FROM dicom_nodes ORDER BY started_at DESC"),
            "open_associations": one("SELECT count(*) AS n FROM dicom_associations WHERE state = 'open' AND node IN"
                                     " (SELECT node FROM dicom_nodes WHERE stopped_at IS NULL AND heartbeat_at >= ?)",
                                     (alive_after,)),
            "associations_today": one("SELECT count(*) AS n FROM dicom_associations WHERE started_at >= ?", (since,)),
            "rejected_today": one("SELECT count(*) AS n FROM dicom_associations WHERE state = 'rejected'"
                                  " AND started_at >= ?", (since,)),
            "duplicates_today": one("SELECT count(*) AS n FROM events WHERE id >= ? AND kind = ?",
                                    (first_today, EventKind.DICOM_DUPLICATE.value)),
            "latest_duplicates": [
                {"at": r["created_at"], **loads(r["payload"])} for r in self.db.query(
                    "SELECT created_at, payload FROM events WHERE id >= ? AND kind = ? ORDER BY id DESC LIMIT ?",
                    (first_today, EventKind.DICOM_DUPLICATE.value, LATEST_DUPLICATES))],
            "received_today": one("SELECT count(*) AS n FROM dicom_received WHERE received_at >= ?", (since,)),
            "store_failures_today": one("SELECT coalesce(sum(failed), 0) AS n FROM dicom_associations"
                                        " WHERE started_at >= ?", (since,)),
            "queue_depth": one("SELECT count(*) AS n FROM jobs WHERE status IN ('queued', 'running')"
                               " AND kind LIKE 'dicom_node.%'"),
            "jobs_failed": one("SELECT count(*) AS n FROM jobs WHERE status = 'failed' AND kind LIKE 'dicom_node.%'"),
            "outbox_pending": one("SELECT count(*) AS n FROM dicom_outbox WHERE status = 'pending'"),
            "outbox_failed": one("SELECT count(*) AS n FROM dicom_outbox WHERE status = 'failed'"),
        }

    def _first_event_at(self, since: str) -> int:
        """The id of the first event stamped at or after ``since`` (one past the last if
        none): a binary search over the primary key, as ids grow with time, so counting
        today's events of a kind reads today's rows only, not the whole log."""
        bounds = self.db.query("SELECT coalesce(min(id), 1) AS lo, coalesce(max(id), 0) + 1 AS hi FROM events")[0]
        lo, hi = int(bounds["lo"]), int(bounds["hi"])
        while lo < hi:
            mid = (lo + hi) // 2
            rows = self.db.query("SELECT id, created_at FROM events WHERE id >= ? ORDER BY id LIMIT 1", (mid,))
            if rows and rows[0]["created_at"] < since:
                lo = int(rows[0]["id"]) + 1
            else:
                hi = mid
        return lo

    def outbox_add(self, session_id: str, export_id: str, file_names: list[str], destination: dict,
                   max_attempts: int = 8) -> list[int]:
        """Queue an export's files for C-STORE to ``destination`` (ae_title, host, port)."""
        stamp = now_iso()
        with self.db.transaction() as tx:
            ids = [int(tx.execute(
                "INSERT INTO dicom_outbox (session_id, export_id, file_name, ae_title, host, port, max_attempts,"
                " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, export_id, name, destination["ae_title"], destination["host"], int(destination["port"]),
                 max_attempts, stamp, stamp, stamp)).lastrowid) for name in file_names]
            self.events.append(tx, session_id, EventKind.outbox("queued"), {"export_id": export_id, "items": ids})
        return ids

    def outbox_due(self, limit: int = 20) -> list[dict]:
        """Pending outbox items whose next attempt is due, oldest first."""
        return self.db.query("SELECT * FROM dicom_outbox WHERE status = 'pending' AND next_attempt_at <= ?"
                             " ORDER BY id LIMIT ?", (now_iso(), limit))

    def outbox_result(self, item_id: int, *, status_code: int | None, error: str | None,
                      retry_in_s: float) -> str:
        """Record one send attempt: ``sent``, ``pending`` (retry after ``retry_in_s``) or ``failed``."""
        with self.db.transaction() as tx:
            row = tx.execute("SELECT session_id, attempts, max_attempts FROM dicom_outbox WHERE id = ?",
                             (item_id,)).fetchone()
            attempts = row[1] + 1
            state = "sent" if error is None else ("pending" if attempts < row[2] else "failed")
            due = datetime.fromtimestamp(datetime.now(UTC).timestamp() + retry_in_s, UTC)
            tx.execute("UPDATE dicom_outbox SET status = ?, attempts = ?, last_status = ?, error = ?,"
                       " next_attempt_at = ?, updated_at = ? WHERE id = ?",
                       (state, attempts, status_code, error, due.isoformat(timespec="milliseconds"), now_iso(),
                        item_id))
            self.events.append(tx, row[0], EventKind.outbox(state),
                               {"item_id": item_id, "status": status_code, "error": error})
        return state
