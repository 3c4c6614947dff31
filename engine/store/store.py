"""The store: one data directory's database and blobs, one repository per aggregate.

Each write runs in one transaction together with its ``events`` row (written through
:class:`~engine.store.events.EventLog`), so any process following the outbox sees
exactly the committed changes, in order. The methods below are the historic flat API,
each a delegation to a repository attribute (``store.sessions``, ``store.jobs``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.store.agent_runs import AGENT_RUN_STATUSES, AgentRunRepository
from engine.store.analyses import AnalysisRepository, MaskRepository
from engine.store.annotations import AnnotationRepository
from engine.store.audit import AUDIT_DATABASE_NAME, AuditLog
from engine.store.blobs import BlobStore
from engine.store.canvas import CanvasRepository
from engine.store.common import new_id, now_iso
from engine.store.database import Database
from engine.store.dicom import DicomRepository
from engine.store.envelope import open_data_key
from engine.store.erasure import ErasureJournal
from engine.store.events import EventLog
from engine.store.exports import ExportRepository
from engine.store.inputs import AGENT_INPUT_TYPES, InputRequestRepository
from engine.store.jobs import JobRepository
from engine.store.keys import resolve_key
from engine.store.rotation import recover
from engine.store.sessions import ImageRepository, SessionRepository

__all__ = ["BLOB_DIR", "DATABASE_NAME", "EMBEDDING_DIR", "Store", "new_id", "now_iso"]

DATABASE_NAME = "medvision.db"
BLOB_DIR = "blobs"
#: Cached SAM image embeddings (derived from images, so erased with them).
EMBEDDING_DIR = "cache/embeddings"


class Store:
    """Encrypted store of one data directory (database + blobs), composed of repositories."""

    AGENT_RUN_STATUSES = AGENT_RUN_STATUSES
    AGENT_INPUT_TYPES = AGENT_INPUT_TYPES

    def __init__(self, home: Path, key: bytes) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self._key = key
        database = home / DATABASE_NAME
        existed = database.exists() and database.stat().st_size > 0
        self.db = Database(database, key)  # a wrong key fails here, before the envelope is read
        try:
            self._data_key = open_data_key(home, key, database_existed=existed)
        except BaseException:
            self.db.close()
            raise
        self.blobs = BlobStore(home / BLOB_DIR, self._data_key)
        self.embeddings = BlobStore(home / EMBEDDING_DIR, self._data_key)
        self.events = EventLog(self.db)
        self.erasures = ErasureJournal(self.db, home)
        self.sessions = SessionRepository(self.db, self.blobs, self.events, embeddings=self.embeddings,
                                          journal=self.erasures)
        self.images = ImageRepository(self.db, self.blobs, self.events, self.sessions)
        self.analyses = AnalysisRepository(self.db, self.events)
        self.masks = MaskRepository(self.db, self.events)
        self.annotations = AnnotationRepository(self.db, self.events, self.sessions, self.images)
        self.jobs = JobRepository(self.db, self.events)
        self.dicom = DicomRepository(self.db, self.events, self.sessions, self.images, self.jobs, self.blobs)
        self.exports = ExportRepository(self.db, self.blobs, self.events, self.sessions)
        self.agent_runs = AgentRunRepository(self.db, self.events, self.sessions)
        self.inputs = InputRequestRepository(self.db, self.events, self.sessions)
        self.canvas = CanvasRepository(self.db, self.events)
        self.audit = AuditLog(home / AUDIT_DATABASE_NAME, key, main_db=self.db)  # opened on first use
        # A process killed mid-erasure left files no row points to: erase them now.
        self.erasures.replay()
        self._drop_unscoped_embeddings()

    def _drop_unscoped_embeddings(self) -> None:
        """Once per data directory: empty the embedding cache written before embeddings were
        named after their image (erasure could not find those). A cache: they are recomputed."""
        marker = self.embeddings.root / ".scoped"
        if marker.exists():
            return
        for path in self.embeddings.root.glob("*/*.mvb"):
            path.unlink(missing_ok=True)
        self.embeddings.root.mkdir(parents=True, exist_ok=True)
        marker.touch()

    @classmethod
    def open(cls, home: Path, *, use_keyring: bool = True, key: bytes | None = None) -> Store:
        """Open (or create) the store in ``home``, finding the key through the provider chain.

        Received DICOM instances acknowledged but not yet indexed when a process died
        are indexed now (:meth:`DicomRepository.index_unindexed_blobs`): their blobs are
        the durable record."""
        home = Path(home)
        if key is None:
            recover(home, use_keyring=use_keyring)  # a rotation a kill interrupted is finished first
            key = resolve_key(home, home / DATABASE_NAME, use_keyring=use_keyring)
        store = cls(home, key)
        try:
            store.dicom.index_unindexed_blobs(erasing=store.erasures.pending_blob_ids)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Write queued audit records, then close all database connections."""
        self.audit.close()
        self.db.close()

    @property
    def key(self) -> bytes:
        """The raw store key, for components sharing the data dir's encryption. Never log or persist it."""
        return self._key

    @property
    def data_key(self) -> bytes:
        """The data key blobs derive their key from (:mod:`engine.store.envelope`). Never log or persist it."""
        return self._data_key

    @property
    def cipher_version(self) -> str:
        """SQLCipher version reported at open (never empty: plain SQLite is refused)."""
        return self.db.cipher_version

    # -- events --------------------------------------------------------------------------
    def append_event(self, session_id: str | None, kind: str, payload: dict) -> int:
        """See :meth:`EventLog.append_now`."""
        return self.events.append_now(session_id, kind, payload)

    def events_since(self, last_id: int, session_id: str | None = None, limit: int = 500) -> list[dict]:
        """See :meth:`EventLog.since`."""
        return self.events.since(last_id, session_id, limit)

    def last_event_id(self) -> int:
        """See :meth:`EventLog.last_id`."""
        return self.events.last_id()

    # -- sessions, interactions ------------------------------------------------------------
    def create_session(self, name: str | None = None, metadata: dict | None = None,
                       study_instance_uid: str | None = None, source: str = "file") -> dict:
        """See :meth:`SessionRepository.create`."""
        return self.sessions.create(name, metadata, study_instance_uid, source)

    def get_session(self, session_id: str) -> dict:
        """See :meth:`SessionRepository.get`."""
        return self.sessions.get(session_id)

    def list_sessions(self, limit: int = 100) -> list[dict]:
        """See :meth:`SessionRepository.recent`."""
        return self.sessions.recent(limit)

    def session_of_study(self, study_instance_uid: str) -> dict | None:
        """See :meth:`SessionRepository.by_study`."""
        return self.sessions.by_study(study_instance_uid)

    def images_of_patient(self, patient_id: str, limit: int = 1000) -> list[dict]:
        """See :meth:`SessionRepository.of_patient`."""
        return self.sessions.of_patient(patient_id, limit)

    def set_session_priors(self, session_id: str, priors: list[dict]) -> None:
        """See :meth:`SessionRepository.set_priors`."""
        self.sessions.set_priors(session_id, priors)

    def delete_session(self, session_id: str, *, expired_before: str | None = None) -> dict | None:
        """See :meth:`SessionRepository.delete`."""
        return self.sessions.delete(session_id, expired_before=expired_before)

    def finish_erasures(self) -> int:
        """See :meth:`ErasureJournal.replay`."""
        return self.erasures.replay()

    def set_session_pinned(self, session_id: str, pinned: bool) -> dict:
        """See :meth:`SessionRepository.set_pinned`."""
        return self.sessions.set_pinned(session_id, pinned)

    def expired_sessions(self, cutoffs: dict[str, str]) -> list[dict]:
        """See :meth:`SessionRepository.expired`."""
        return self.sessions.expired(cutoffs)

    def count(self, table: str, session_id: str) -> int:
        """See :meth:`SessionRepository.count`."""
        return self.sessions.count(table, session_id)

    def add_interaction(self, session_id: str, kind: str, data: dict, image_id: str | None = None) -> str:
        """See :meth:`SessionRepository.add_interaction`."""
        return self.sessions.add_interaction(session_id, kind, data, image_id)

    # -- images ----------------------------------------------------------------------------
    def set_current_image(self, session_id: str, image_id: str) -> None:
        """See :meth:`ImageRepository.set_current`."""
        self.images.set_current(session_id, image_id)

    def add_image(self, session_id: str, *, blob_data: bytes, record: dict) -> dict:
        """See :meth:`ImageRepository.add`."""
        return self.images.add(session_id, blob_data=blob_data, record=record)

    def get_image(self, image_id: str, session_id: str | None = None) -> dict:
        """See :meth:`ImageRepository.get`."""
        return self.images.get(image_id, session_id)

    def list_images(self, session_id: str) -> list[dict]:
        """See :meth:`ImageRepository.in_session`."""
        return self.images.in_session(session_id)

    def imported_among(self, paths: list[str]) -> set[str]:
        """See :meth:`ImageRepository.imported_among`."""
        return self.images.imported_among(paths)

    def image_bytes(self, image: dict) -> bytes:
        """See :meth:`ImageRepository.data`."""
        return self.images.data(image)

    # -- analyses, masks -------------------------------------------------------------------
    def add_analysis(self, session_id: str, image_id: str, kind: str, result: dict, *,
                     analysis_id: str | None = None) -> dict:
        """See :meth:`AnalysisRepository.add`."""
        return self.analyses.add(session_id, image_id, kind, result, analysis_id=analysis_id)

    def list_analyses(self, session_id: str, image_id: str | None = None) -> list[dict]:
        """See :meth:`AnalysisRepository.in_session`."""
        return self.analyses.in_session(session_id, image_id)

    def add_masks(self, session_id: str, image_id: str, masks: list[dict], *, source: str,
                  analysis_id: str | None = None, model_id: str | None = None) -> list[str]:
        """See :meth:`MaskRepository.add`."""
        return self.masks.add(session_id, image_id, masks, source=source, analysis_id=analysis_id, model_id=model_id)

    def list_masks(self, session_id: str, image_id: str, source: str | None = None,
                   analysis_id: str | None = None) -> list[dict]:
        """See :meth:`MaskRepository.of_image`."""
        return self.masks.of_image(session_id, image_id, source, analysis_id)

    def get_mask(self, session_id: str, mask_id: str) -> dict:
        """See :meth:`MaskRepository.get`."""
        return self.masks.get(session_id, mask_id)

    # -- jobs ------------------------------------------------------------------------------
    def enqueue_job(self, kind: str, payload: dict, *, session_id: str | None = None,
                    image_id: str | None = None, max_attempts: int = 3) -> int:
        """See :meth:`JobRepository.enqueue`."""
        return self.jobs.enqueue(kind, payload, session_id=session_id, image_id=image_id, max_attempts=max_attempts)

    def claim_job(self, worker: str, kinds: list[str] | None = None) -> dict | None:
        """See :meth:`JobRepository.claim`."""
        return self.jobs.claim(worker, kinds)

    def finish_job(self, job_id: int, *, result: dict | None = None, error: str | None = None) -> str:
        """See :meth:`JobRepository.finish`."""
        return self.jobs.finish(job_id, result=result, error=error)

    def requeue_stale_jobs(self, stale_worker_prefixes: list[str] | None = None) -> int:
        """See :meth:`JobRepository.requeue_stale`."""
        return self.jobs.requeue_stale(stale_worker_prefixes)

    def list_jobs(self, kind: str, session_id: str | None = None) -> list[dict]:
        """See :meth:`JobRepository.of_kind`."""
        return self.jobs.of_kind(kind, session_id)

    def get_job(self, job_id: int) -> dict:
        """See :meth:`JobRepository.get`."""
        return self.jobs.get(job_id)

    # -- annotations -----------------------------------------------------------------------
    def get_annotation(self, session_id: str, annotation_id: str) -> dict:
        """See :meth:`AnnotationRepository.get`."""
        return self.annotations.get(session_id, annotation_id)

    def delete_annotation(self, session_id: str, annotation_id: str) -> dict:
        """See :meth:`AnnotationRepository.delete`."""
        return self.annotations.delete(session_id, annotation_id)

    def list_annotations(self, session_id: str, image_id: str | None = None, source: str = "all") -> list[dict]:
        """See :meth:`AnnotationRepository.in_session`."""
        return self.annotations.in_session(session_id, image_id, source)

    # -- DICOM node ------------------------------------------------------------------------
    def dicom_add_instance(self, *, blob_id: str, size: int, sha256: str, record: dict,
                           association_id: str | None, calling_ae: str | None,
                           session_name: str | None = None, job_kind: str | None = None,
                           max_attempts: int = 3, duplicate_policy: str = "keep_first",
                           received_at: str | None = None) -> dict:
        """See :meth:`DicomRepository.add_instance`."""
        return self.dicom.add_instance(blob_id=blob_id, size=size, sha256=sha256, record=record,
                                       association_id=association_id, calling_ae=calling_ae,
                                       session_name=session_name, job_kind=job_kind, max_attempts=max_attempts,
                                       duplicate_policy=duplicate_policy, received_at=received_at)

    def dicom_association(self, association_id: str, *, node: str | None = None, calling_ae: str | None = None,
                          called_ae: str | None = None, peer_host: str | None = None, state: str = "open",
                          reason: str | None = None, failed: int = 0) -> None:
        """See :meth:`DicomRepository.association`."""
        self.dicom.association(association_id, node=node, calling_ae=calling_ae, called_ae=called_ae,
                               peer_host=peer_host, state=state, reason=reason, failed=failed)

    def dicom_node_beat(self, node: str, *, pid: int, ae_title: str, host: str, port: int,
                        stopped: bool = False, dead_before: str | None = None) -> None:
        """See :meth:`DicomRepository.node_beat`."""
        self.dicom.node_beat(node, pid=pid, ae_title=ae_title, host=host, port=port, stopped=stopped,
                             dead_before=dead_before)

    def dicom_status(self, since: str, alive_after: str = "") -> dict:
        """See :meth:`DicomRepository.status`."""
        return self.dicom.status(since, alive_after)

    def dicom_outbox_add(self, session_id: str, export_id: str, file_names: list[str], destination: dict,
                         max_attempts: int = 8) -> list[int]:
        """See :meth:`DicomRepository.outbox_add`."""
        return self.dicom.outbox_add(session_id, export_id, file_names, destination, max_attempts)

    def dicom_outbox_due(self, limit: int = 20) -> list[dict]:
        """See :meth:`DicomRepository.outbox_due`."""
        return self.dicom.outbox_due(limit)

    def dicom_outbox_result(self, item_id: int, *, status_code: int | None, error: str | None,
                            retry_in_s: float) -> str:
        """See :meth:`DicomRepository.outbox_result`."""
        return self.dicom.outbox_result(item_id, status_code=status_code, error=error, retry_in_s=retry_in_s)

    # -- exports ---------------------------------------------------------------------------
    def add_export(self, session_id: str, export_format: str, files: list[tuple[str, bytes, str]], *,
                   options: dict | None = None, missing: list[str] | None = None) -> dict:
        """See :meth:`ExportRepository.add`."""
        return self.exports.add(session_id, export_format, files, options=options, missing=missing)

    def get_export(self, session_id: str, export_id: str) -> dict:
        """See :meth:`ExportRepository.get`."""
        return self.exports.get(session_id, export_id)

    def list_exports(self, session_id: str) -> list[dict]:
        """See :meth:`ExportRepository.in_session`."""
        return self.exports.in_session(session_id)

    def export_bytes(self, session_id: str, export_id: str, name: str) -> bytes:
        """See :meth:`ExportRepository.file_bytes`."""
        return self.exports.file_bytes(session_id, export_id, name)

    # -- agent: runs, trace, conversation memory -------------------------------------------
    def create_agent_run(self, session_id: str, *, run_id: str, task: str, mode: str, pipeline: str,
                         image_id: str | None, state: dict, owner: str | None = None) -> dict:
        """See :meth:`AgentRunRepository.create`."""
        return self.agent_runs.create(session_id, run_id=run_id, task=task, mode=mode, pipeline=pipeline,
                                      image_id=image_id, state=state, owner=owner)

    def update_agent_run(self, run_id: str, *, status: str | None = None, state: dict | None = None,
                         report: dict | None = None, result: dict | None = None,
                         error: dict | None = None, owner: str | None = None) -> None:
        """See :meth:`AgentRunRepository.update`."""
        self.agent_runs.update(run_id, status=status, state=state, report=report, result=result, error=error,
                               owner=owner)

    def get_agent_run(self, run_id: str, session_id: str | None = None) -> dict:
        """See :meth:`AgentRunRepository.get`."""
        return self.agent_runs.get(run_id, session_id)

    def interrupt_stale_agent_runs(self) -> int:
        """See :meth:`AgentRunRepository.interrupt_stale`."""
        return self.agent_runs.interrupt_stale()

    def list_agent_runs(self, session_id: str, status: str | None = None) -> list[dict]:
        """See :meth:`AgentRunRepository.in_session`."""
        return self.agent_runs.in_session(session_id, status)

    def add_agent_trace(self, run_id: str, session_id: str, seq: int, event: dict) -> None:
        """See :meth:`AgentRunRepository.add_trace`."""
        self.agent_runs.add_trace(run_id, session_id, seq, event)

    def list_agent_trace(self, run_id: str) -> list[dict]:
        """See :meth:`AgentRunRepository.trace`."""
        return self.agent_runs.trace(run_id)

    def add_agent_turn(self, session_id: str, role: str, kind: str, content: str, *,
                       sources: list | None = None, run_id: str | None = None,
                       image_id: str | None = None) -> int:
        """See :meth:`AgentRunRepository.add_turn`."""
        return self.agent_runs.add_turn(session_id, role, kind, content, sources=sources, run_id=run_id,
                                        image_id=image_id)

    def list_agent_turns(self, session_id: str, *, after: int = 0, limit: int | None = None) -> list[dict]:
        """See :meth:`AgentRunRepository.turns`."""
        return self.agent_runs.turns(session_id, after=after, limit=limit)

    def get_agent_memory(self, session_id: str) -> dict:
        """See :meth:`AgentRunRepository.memory`."""
        return self.agent_runs.memory(session_id)

    def set_agent_memory(self, session_id: str, summary: str, summarized_until: int) -> None:
        """See :meth:`AgentRunRepository.set_memory`."""
        self.agent_runs.set_memory(session_id, summary, summarized_until)

    # -- user-input requests ---------------------------------------------------------------
    def create_input_request(self, session_id: str, input_type: str, prompt: str, *,
                             options: list | None = None, run_id: str | None = None,
                             step_id: str | None = None) -> dict:
        """See :meth:`InputRequestRepository.create`."""
        return self.inputs.create(session_id, input_type, prompt, options=options, run_id=run_id, step_id=step_id)

    def get_input_request(self, request_id: str) -> dict:
        """See :meth:`InputRequestRepository.get`."""
        return self.inputs.get(request_id)

    def answer_input_request(self, request_id: str, answer: Any) -> dict:
        """See :meth:`InputRequestRepository.answer`."""
        return self.inputs.answer(request_id, answer)

    def cancel_input_requests(self, run_id: str) -> int:
        """See :meth:`InputRequestRepository.cancel_for_run`."""
        return self.inputs.cancel_for_run(run_id)

    def list_input_requests(self, session_id: str, status: str | None = None) -> list[dict]:
        """See :meth:`InputRequestRepository.in_session`."""
        return self.inputs.in_session(session_id, status)
