"""The Engine facade: the one entry point the CLI, desktop, DICOM node and MCP server use.

Method names and arguments follow the product spec's MCP tool list, so every
front-end calls the same thing. Results are plain JSON-ready dicts; failures are
:class:`engine.errors.MedVisionError` with a stable code. The Engine composes the
use-case services (:mod:`engine.services`), the agent, the canvas and export, and
delegates each call in one line; see ARCHITECTURE.md.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.config import Settings
from engine.events import Event
from engine.services import Services
from engine.services.audit import AuditTrail, audited

if TYPE_CHECKING:  # the agent, canvas and export load on first use: a cold CLI stays fast
    from engine.agent.service import MedicalAgent
    from engine.canvas import Canvas
    from engine.imaging import DecodedImage
    from engine.inference.registry import ModelRegistry
    from engine.store import Store


@audited  # the calls that touch patient data leave an audit record: engine/services/audit.py
class Engine:
    """One engine per process, over one data directory and one model pack, named ``front_end`` in audit records."""

    def __init__(self, settings: Settings | None = None, *, home: str | Path | None = None,
                 model_pack: str | Path | None = None, front_end: str = "api") -> None:
        self.services = Services.open(settings or Settings.from_env(home, model_pack))
        self.audit: AuditTrail = self.services.audit  # audit.log reads and verifies the records
        self.audit.identify(front_end)
        self._agent: MedicalAgent | None = None
        self._canvas: Canvas | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release models, the reference library and database connections."""
        self.services.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def store(self) -> Store:
        """The store (tests and tools; front-ends use the facade's methods)."""
        return self.services.store

    @property
    def models(self) -> ModelRegistry:
        return self.services.models

    @property
    def agent(self) -> MedicalAgent:
        """The medical agent over this engine's services (created on first use)."""
        with self._lock:
            if self._agent is None:
                from engine.agent.service import MedicalAgent

                self._agent = MedicalAgent(self.services)
            return self._agent

    @property
    def canvas(self) -> Canvas:
        """The canvas use-cases over this engine's services (created on first use)."""
        with self._lock:
            if self._canvas is None:
                from engine.canvas import Canvas

                self._canvas = Canvas(self.services)
            return self._canvas

    @property
    def segmenter(self):  # noqa: ANN201 - engine.analysis.interactive.InteractiveSegmenter
        return self.services.interactive.segmenter

    @property
    def library(self):  # noqa: ANN201 - engine.rag.ReferenceLibrary
        return self.services.similar.library

    # -- events ------------------------------------------------------------------------
    def events_since(self, last_id: int, session_id: str | None = None, limit: int = 500) -> list[Event]:
        """Events after ``last_id`` (what front-ends follow to stay live)."""
        return [Event.from_row(row) for row in self.services.store.events_since(last_id, session_id, limit)]

    def last_event_id(self) -> int:
        """The newest event's id (start following from here)."""
        return self.services.store.last_event_id()

    # -- the job queue (the DICOM node's analysis workers) ------------------------------
    def claim_job(self, worker: str, kinds: list[str]) -> dict | None:
        """Take the oldest queued job of ``kinds`` for ``worker`` (None when there is none)."""
        return self.services.store.claim_job(worker, kinds=kinds)

    def finish_job(self, job_id: int, *, result: dict | None = None, error: str | None = None) -> str:
        """Record a job's end: done, queued again (attempts left) or failed."""
        return self.services.store.finish_job(job_id, result=result, error=error)

    def requeue_stale_jobs(self, worker_prefixes: list[str]) -> int:
        """Jobs a dead worker left running: queued again, or failed once out of attempts."""
        return self.services.store.requeue_stale_jobs(worker_prefixes)

    # -- sessions ----------------------------------------------------------------------
    def create_study_session(self, name: str | None = None, metadata: dict[str, Any] | None = None,
                             source: str = "file") -> dict:
        """Create a new analysis session (``source``: file, mcp or dicom, for the retention policy)."""
        return self.services.sessions.create(name, metadata, source)

    def list_sessions(self, limit: int = 100) -> list[dict]:
        """Sessions, newest first."""
        return self.services.sessions.list(limit)

    def get_session_status(self, session_id: str) -> dict:
        """Summary of a session: its images, the current one, annotation and analysis counts."""
        return self.services.sessions.status(session_id)

    def delete_session(self, session_id: str) -> dict:
        """Erase a session and everything derived from it (rows, blobs, embeddings, exports, outbox)."""
        return self.services.sessions.delete(session_id)

    def pin_session(self, session_id: str, pinned: bool = True) -> dict:
        """Keep a session past the retention policy (``pinned=False`` undoes it)."""
        return self.services.sessions.set_pinned(session_id, pinned)

    def purge_expired_sessions(self, dry_run: bool = False) -> dict:
        """Erase unpinned sessions past their source's retention period (``dry_run``: list only)."""
        return self.services.sessions.purge_expired(dry_run)

    def switch_image(self, session_id: str, image_id: str) -> dict:
        """Move the session's focus to another of its images."""
        return self.services.sessions.switch_image(session_id, image_id)

    # -- images ------------------------------------------------------------------------
    def add_image_to_session(self, session_id: str, image_path: str | Path, image_type: str | None = None,
                             auto_analyze: bool = True, analysis_config: dict[str, Any] | None = None,
                             frame: int = 0) -> dict:
        """Decode an image file, store it encrypted in the session, optionally analyse it."""
        return self.services.intake.add_image_to_session(session_id, image_path, image_type, auto_analyze,
                                                         analysis_config, frame)

    def check_image_file(self, image_path: str | Path) -> dict:
        """Whether a file could be added: a readable regular file within the size limit (nothing read or stored)."""
        return self.services.images.check_file(image_path)

    def decoded_image(self, session_id: str, image_id: str) -> tuple[dict, DecodedImage]:
        """The image row and its decoded pixels (from the per-process cache when possible)."""
        return self.services.images.decoded_image(session_id, image_id)

    # -- analysis ----------------------------------------------------------------------
    def analyze_image(self, session_id: str, image_id: str | None = None, classify: bool = True,
                      detect: bool = True, segment: bool = False, generate_report: bool = True,
                      classification_threshold: float = 0.5, detection_mode: str = "auto",
                      detection_phrases: list[str] | None = None, segment_organs: list[str] | None = None,
                      preset: str | None = None, force: bool = False) -> dict:
        """Run the requested analyses on one image and persist the result.

        Switches whose model the pack lacks come back as ``{"status": "unavailable",
        "reason": ...}`` rather than failing the whole call.
        """
        return self.services.analysis.analyze_image(
            session_id, image_id, classify, detect, segment, generate_report, classification_threshold,
            detection_mode, detection_phrases, segment_organs, preset, force)

    def get_analysis_summary(self, session_id: str, image_id: str | None = None) -> dict:
        """The latest analysis of each image (or of one image) in short form."""
        return self.services.analysis.get_analysis_summary(session_id, image_id)

    def latest_analysis(self, session_id: str, image_id: str,
                        kinds: tuple[str, ...] = ("analyze_image", "rag")) -> dict | None:
        """The newest stored analysis result of an image among ``kinds``, or None."""
        return self.services.analysis.latest_result(session_id, image_id, kinds)

    def organ_masks(self, session_id: str, image_id: str, *, run: bool = True) -> dict[str, np.ndarray] | None:
        """The latest stored organ masks of an image; segments it first when ``run`` and possible."""
        return self.services.analysis.organ_masks(session_id, image_id, run=run)

    def analyze_selected_region(self, session_id: str, region: dict, question: str | None = None,
                                actions: list[str] | tuple[str, ...] = ("describe",),
                                image_id: str | None = None, top_k: int = 5) -> dict:
        """Analyse a region the user (or an agent) selected, and keep it as an AI annotation.

        ``actions``: describe, segment, measure, classify, rag_search, compare. The
        result holds ``region_info`` (bounds, area, pixel statistics, anatomy), one
        section per action, a ``confidence_summary`` and the new ``annotation_id``. A
        ``question`` naming a finding (any common wording) also runs classify and adds an
        ``answer`` (the crop's and the whole image's probability, threshold, model,
        sources; checked by the narrative guard) and the ``image_classification`` it used;
        a finding no model covers, or a size the image's spacing cannot give, is answered
        so, with what would answer it.
        """
        from engine.agent.guard import check_narrative

        return self.services.regions.analyze_selected_region(session_id, region, question, actions, image_id, top_k,
                                                             check=check_narrative)

    # -- annotations -------------------------------------------------------------------
    def add_annotation(self, session_id: str, image_id: str | None = None, annotation_type: str = "bbox",
                       coordinates: Any = None, label: str = "", notes: str | None = None,
                       source: str = "user", confidence: float | None = None, layer: str | None = None,
                       style: dict | None = None) -> dict:
        """Add an annotation (validated against the image; coordinates stored in pixels)."""
        image_id = image_id or self.services.images.current_image_id(session_id)
        return self.services.annotations.add(session_id, image_id, annotation_type, coordinates, label, notes,
                                             source, confidence, layer, style)

    def update_annotation(self, session_id: str, annotation_id: str, label: str | None = None,
                          notes: str | None = None, coordinates: Any = None, **extra: Any) -> dict:
        """Change an annotation's label, notes, coordinates (or confidence/layer/style)."""
        return self.services.annotations.update(session_id, annotation_id, label, notes, coordinates, **extra)

    def delete_annotation(self, session_id: str, annotation_id: str) -> dict:
        """Delete an annotation."""
        return self.services.annotations.delete(session_id, annotation_id)

    def get_annotations(self, session_id: str, image_id: str | None = None, source: str = "all") -> dict:
        """Annotations of a session (or an image), optionally of one source."""
        return self.services.annotations.list(session_id, image_id, source)

    # -- interactive segmentation --------------------------------------------------------
    def segment_interactive(self, session_id: str, image_id: str | None = None, *,
                            points: list[list[float]] | None = None, labels: list[int] | None = None,
                            box: list[float] | None = None, region: dict | None = None,
                            store: bool = True) -> dict:
        """Click-to-segment: points (fg 1 / bg 0), a box, or a region dict as the prompt.

        Returns candidate masks as RLE with scores and the backend that made them;
        with ``store`` the best mask is kept (source "interactive") for accepting later.
        """
        return self.services.interactive.segment_interactive(session_id, image_id, points=points, labels=labels,
                                                             box=box, region=region, store=store)

    def accept_mask(self, session_id: str, mask_id: str, label: str = "", notes: str | None = None) -> dict:
        """Turn a stored interactive mask into a user annotation."""
        return self.services.interactive.accept_mask(session_id, mask_id, label, notes)

    # -- visual RAG --------------------------------------------------------------------
    def build_rag_index(self, source: str = "custom", data_path: str | Path | None = None,
                        reports_csv: str | Path | None = None, rebuild: bool = False,
                        progress: Callable[..., Any] | None = None) -> dict:
        """Build or extend the reference library from a CSV or a folder of images + reports CSV."""
        return self.services.similar.build_rag_index(source, data_path, reports_csv, rebuild, progress)

    def similar_case_thumbnails(self, case_ids: list[str]) -> dict[str, bytes]:
        """PNG previews of reference cases (longest side 160 px) by case id; cases added
        before previews were kept have none."""
        return self.services.similar.thumbnails(case_ids)

    def search_similar_cases(self, session_id: str, image_id: str | None = None, top_k: int = 5,
                             include_reports: bool = True, min_similarity: float = 0.0) -> dict:
        """The reference cases most similar to an image, with similarity-weighted labels."""
        return self.services.similar.search_similar_cases(session_id, image_id, top_k, include_reports,
                                                          min_similarity)

    def analyze_with_rag(self, session_id: str, image_id: str | None = None, mode: str = "quick",
                         top_k: int = 5) -> dict:
        """Classifier + similar cases (+ segmentation in ``full``) merged, with an LLM prompt.

        Modes: ``quick`` (classify + similar cases), ``full`` (adds organ segmentation),
        ``rag_only`` (similar cases only). Each stage's milliseconds are in ``metadata``.
        """
        return self.services.similar.analyze_with_rag(session_id, image_id, mode, top_k)

    # -- the medical agent (engine.agent.service.MedicalAgent) --------------------------
    def invoke_medical_agent(self, session_id: str, task: str, context: dict[str, Any] | None = None,
                             mode: str = "auto", handoff: dict[str, Any] | None = None) -> dict:
        """Delegate an analysis task to the built-in medical agent (A2A); see :meth:`MedicalAgent.invoke`."""
        return self.agent.invoke(session_id, task, context, mode, handoff)

    def agent_messages(self, session_id: str) -> dict:
        """The newest agent conversation turns and pending user-input requests."""
        return self.agent.messages(session_id)

    def ask_about_image(self, session_id: str, question: str, image_id: str | None = None,
                        include_context: bool = True) -> dict:
        """Answer a question about an image from its analysed context, citing the tool outputs used."""
        return self.agent.ask(session_id, question, image_id, include_context)

    def get_agent_capabilities(self) -> dict:
        """Tasks, supported image types, the tool registry (with versions), pipelines and models."""
        return self.agent.capabilities()

    def request_user_input(self, session_id: str, input_type: str, prompt: str,
                           options: list[dict] | None = None) -> dict:
        """Ask the user something through the canvas (select_region, confirm, choose, draw)."""
        return self.agent.request_user_input(session_id, input_type, prompt, options)

    def get_user_input(self, request_id: str) -> dict:
        """A user-input request and, once answered, the user's input (polling)."""
        return self.agent.get_user_input(request_id)

    def answer_user_input(self, request_id: str, answer: Any) -> dict:
        """Answer a pending user-input request (the desktop, or a test)."""
        return self.agent.answer_user_input(request_id, answer)

    def get_agent_run(self, session_id: str, run_id: str) -> dict:
        """An agent run's status, result and report."""
        return self.agent.get_run(session_id, run_id)

    def export_trace(self, run_id: str, path: str | Path | None = None) -> dict:
        """An agent run's full trace (``trace.schema.json``) with its error attribution; optionally to a file."""
        return self.agent.export_trace(run_id, path)

    # -- canvas ------------------------------------------------------------------------
    def sync_canvas_state(self, session_id: str, canvas_state: dict[str, Any]) -> dict:
        """Store what the canvas reports; returns the pending user-input requests and the layers."""
        return self.canvas.sync_state(session_id, canvas_state)

    def push_to_canvas(self, session_id: str, action: str, payload: dict[str, Any]) -> dict:
        """Push to the canvas: add/update/remove_layer, highlight, animate, add_annotations."""
        return self.canvas.push(session_id, action, payload)

    def get_canvas_state(self, session_id: str) -> dict:
        """The canvas state last synced (or the defaults) with the session's canvas layers."""
        return self.canvas.get_state(session_id)

    # -- export ------------------------------------------------------------------------
    def export_study(self, session_id: str, format: str = "pdf", include_images: list[str] | None = None,  # noqa: A002
                     include_report: bool = True, include_annotations: bool = True,
                     include_measurements: bool = True, template: str | None = None,
                     output_path: str | Path | None = None, include_identifiers: bool = False,
                     institution: str = "", overwrite: bool = False, show_untrained_overlays: bool = False) -> dict:
        """Export a session's results as files people and PACS use; an existing file is replaced
        only with ``overwrite``; overlays of untrained models are drawn only with
        ``show_untrained_overlays``; see :func:`engine.export.service.export_study`."""
        from engine.export.service import export_study

        return export_study(self.services, session_id, format, include_images, include_report, include_annotations,
                            include_measurements, template, output_path, include_identifiers, institution, overwrite,
                            show_untrained_overlays)

    def get_visualization(self, session_id: str, image_id: str | None = None, include_annotations: bool = True,
                          include_segmentation: bool = True, include_measurements: bool = True,
                          output_path: str | Path | None = None, max_side: int | None = None,
                          overwrite: bool = False, plane: str | None = None, index: int | None = None,
                          series_uid: str | None = None, show_untrained_overlays: bool = False) -> dict:
        """The composited view (image + chosen layers, or a volume series' plane) as a PNG (``png_base64``),
        with the list of layers (those of untrained models hidden unless ``show_untrained_overlays``);
        written to a file only when ``output_path`` is given."""
        from engine.export.service import get_visualization

        return get_visualization(self.services, session_id, image_id, include_annotations, include_segmentation,
                                 include_measurements, output_path, max_side, overwrite, plane, index, series_uid,
                                 show_untrained_overlays)

    def send_results_to(self, session_id: str, image_id: str, formats: tuple[str, ...],
                        destination: dict[str, Any], max_attempts: int) -> list[int]:
        """Build an image's results (e.g. SR + SC), keep them encrypted, queue them for a DICOM peer."""
        from engine.export.service import queue_for_destination

        return queue_for_destination(self.services, session_id, image_id, formats, destination, max_attempts)

    # -- volumes (a session's stored series) ------------------------------------------
    def list_series(self, session_id: str) -> dict:
        """The session's series with their stacks: geometry, slice count, warnings (no pixel decoded)."""
        return self.services.volumes.list_series(session_id)

    def get_volume(self, session_id: str, series_uid: str | None = None, stack: str | None = None) -> Any:
        """A stack assembled from the encrypted store (an :class:`engine.imaging.volume.Volume`, cached)."""
        return self.services.volumes.volume(session_id, series_uid, stack)

    def volume_slice(self, session_id: str, z: int, series_uid: str | None = None, stack: str | None = None,
                     plane: str = "axial") -> tuple[np.ndarray, dict]:
        """One axial slice decoded on its own (the rest assembled behind it), or a coronal/sagittal plane."""
        return self.services.volumes.plane_image(session_id, plane, z, series_uid, stack)

    def volume_roi(self, session_id: str, **roi: Any) -> dict:
        """HU statistics and mL of a voxel box or a sphere in patient mm of a stored series."""
        return self.services.volumes.roi(session_id, **roi)

    def volume_source_headers(self, session_id: str, series_uid: str | None = None, stack: str | None = None
                              ) -> list[Any]:
        """The stored slices' headers (pydicom datasets without pixels) in the volume's z order."""
        return self.services.volumes.source_headers(session_id, series_uid, stack)

    def segment_volume(self, session_id: str, structures: list[str] | str | None = None,
                       series_uid: str | None = None, stack: str | None = None, annotate: bool = False) -> dict:
        """Body, lungs, airways and bone of a stored CT without a trained model, with volumes in mL
        (``annotate``: each structure stored as a ``volume_roi`` annotation)."""
        return self.services.volumes.segment(session_id, structures, series_uid, stack, annotate)

    # -- models ------------------------------------------------------------------------
    # -- priors and compare ----------------------------------------------------------
    def list_priors(self, session_id: str, count: int | None = None) -> dict:
        """The same patient's earlier relevant studies held in the store, and those recorded as fetched."""
        return self.services.priors.list_priors(session_id, count)

    def study_facts(self, session_id: str) -> dict:
        """The session's study facts the priors are matched on (Patient ID, issuer, date, modality, body part)."""
        return self.services.priors.facts(session_id)

    def record_priors(self, session_id: str, priors: list[dict[str, Any]]) -> dict:
        """Record a session's fetched priors (``session.priors``; the worklist shows them)."""
        return self.services.priors.record(session_id, priors)

    def compare_with_prior(self, session_id: str, prior: str, image_id: str | None = None,
                           prior_image_id: str | None = None, register: bool = True, analyze: bool = True) -> dict:
        """Findings, measurements and registration of a session against a prior (session or Study Instance UID)."""
        return self.services.compare.compare(session_id, prior, image_id=image_id, prior_image_id=prior_image_id,
                                             register=register, analyze=analyze)

    def compare_images(self, session_id: str, prior: str, image_id: str | None = None,
                       prior_image_id: str | None = None) -> dict:
        """The registration's arrays (aligned prior, difference) for side-by-side views."""
        return self.services.compare.arrays(session_id, prior, image_id=image_id, prior_image_id=prior_image_id)

    def model_status(self) -> dict:
        """The pack summary, loaded models and ONNX Runtime devices."""
        import onnxruntime as ort

        return {
            "pack": self.models.pack.summary(),
            "loaded": self.models.loaded(),
            "available_providers": ort.get_available_providers(),
            "threads": self.settings.threads,
            "pid": os.getpid(),
        }
