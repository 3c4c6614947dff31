"""Auto-analysis: worker threads that drain the store's ``jobs`` table.

Jobs are rows (``dicom_node.analyze``), enqueued in the same transaction as the image
they analyse, so the queue survives restarts: at start-up a job a dead node left
``running`` is put back in the queue, or marked failed once it used its attempts
(``Store.requeue_stale_jobs``). Workers are separate threads with bounded concurrency
and their own database connections; the receive path only inserts a row, so analysis
never blocks receiving. Progress is visible as ``job.*`` and ``analysis.created`` events.
After a successful analysis, when a destination is configured, the SR and a Secondary
Capture with the findings burned in are built in memory, kept encrypted as an export
and queued in the outbox (:mod:`dicom_node.outbox`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from dicom_node.config import NodeConfig
from dicom_node.ingest import ANALYZE_JOB
from dicom_node.series import VOLUME_JOB
from engine.errors import ErrorCode, MedVisionError

log = logging.getLogger(__name__)

WORKER_PREFIX = "dicom-node:"
RESULT_FORMATS = ("dicom_sr", "dicom_sc")
_IDLE_WAIT_S = 0.25


def build_results(engine: Any, session_id: str, image_id: str, config: NodeConfig) -> list[int]:
    """SR + burned-in SC of one image, kept encrypted and queued for the destination."""
    return engine.send_results_to(session_id, image_id, RESULT_FORMATS, asdict(config.destination),
                                  config.outbox_max_attempts)


def analyze_series(engine: Any, payload: dict) -> dict[str, Any]:
    """A complete series as one volume: its main stack's geometry and, for a CT, the classical
    segmentation (``Engine.segment_volume``: body, lungs, airways, bone) with each structure's
    volume in mL. Kept as an analysis row of kind ``volume`` on the stack's first image
    (``analysis.created``); the job's result names it."""
    session_id, series_uid = payload["session_id"], payload["series_uid"]
    listed = engine.list_series(session_id)
    series = next((s for s in listed["series"] if s["series_uid"] == series_uid), None)
    if series is None:
        raise MedVisionError(ErrorCode.NOT_A_VOLUME, "the series does not make a volume"
                             + (f" ({listed['notes'][0]})" if listed["notes"] else ""), series_uid=series_uid)
    stack = next((s for s in series["stacks"] if s["main"]), series["stacks"][0])
    result: dict[str, Any] = {
        "series_uid": series_uid, "modality": series["modality"], "stack": stack["stack"],
        "slices": stack["slices"], "shape_zyx": stack["shape_zyx"], "spacing_zyx_mm": stack["spacing_zyx_mm"],
        "update": bool(payload.get("update")), "instances": payload.get("instances"),
        "warnings": stack["warnings"], "model_trained": False, "structure_volumes_ml": {}}
    if series["modality"] in ("CT", ""):
        segmented = engine.segment_volume(session_id, series_uid=series_uid, stack=stack["stack"])
        result["segmentation"] = segmented["segmentation"]
        result["structure_volumes_ml"] = {s["name"]: s["volume_ml"]
                                          for s in segmented["segmentation"]["structures"] if s["found"]}
    else:
        result["segmentation"] = None
        result["note"] = f"no classical segmentation for {series['modality']} (Hounsfield units needed)"
    stored = engine.store.add_analysis(session_id, stack["first_image_id"], "volume", result)
    return {"analysis_id": stored["id"], "image_id": stack["first_image_id"], "series_uid": series_uid,
            "update": result["update"], "structure_volumes_ml": result["structure_volumes_ml"]}


class AnalysisWorkers:
    """``config.workers`` threads running queued analysis jobs until :meth:`stop`."""

    def __init__(self, engine: Any, config: NodeConfig, node_id: str,
                 after_job: Callable[[str], None] | None = None) -> None:
        self.engine, self.config, self.node_id = engine, config, node_id
        self.after_job = after_job  # called with the session id after each successful job (the priors)
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        requeued = self.engine.requeue_stale_jobs([WORKER_PREFIX])
        if requeued:
            log.info("%d interrupted analysis job(s) requeued or failed", requeued)
        for index in range(self.config.workers):
            thread = threading.Thread(target=self._run, args=(f"{WORKER_PREFIX}{self.node_id}:{index}",),
                                      name=f"dicom-analysis-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def _run(self, worker: str) -> None:
        while not self._stop.is_set():
            try:
                job = self.engine.claim_job(worker, kinds=[ANALYZE_JOB, VOLUME_JOB])
            except MedVisionError:
                log.exception("claiming a job failed")
                job = None
            if job is None:
                self.wake.wait(_IDLE_WAIT_S)
                self.wake.clear()
                continue
            self.run_job(job)

    def run_job(self, job: dict) -> str:
        """Analyse one image (and queue its results) or one series as a volume; records done / retry / failed."""
        payload = job["payload"]
        try:
            if job["kind"] == VOLUME_JOB:
                summary = analyze_series(self.engine, payload)
            else:
                result = self.engine.analyze_image(payload["session_id"], payload["image_id"], preset="quick")
                summary = {"analysis_id": result["analysis_id"]}
                if self.config.destination is not None:
                    summary["outbox"] = build_results(self.engine, payload["session_id"], payload["image_id"],
                                                      self.config)
        except MedVisionError as exc:
            return self.engine.finish_job(job["id"], error=f"{exc.code.value}: {exc.message}"[:500])
        except Exception as exc:  # noqa: BLE001 - a job's failure is recorded, the worker lives on
            log.exception("analysis job %s failed", job["id"])
            return self.engine.finish_job(job["id"], error=type(exc).__name__)
        outcome = self.engine.finish_job(job["id"], result=summary)
        if self.after_job is not None:
            self.after_job(payload["session_id"])
        return outcome
