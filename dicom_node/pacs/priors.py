"""Priors from the archives: find the same patient's earlier relevant studies, retrieve them, record them.

:func:`find_priors` asks each archive (Study Root C-FIND, study level, by Patient ID and
Issuer of Patient ID; then series level for the body part) and chooses with the engine's
rule (:func:`engine.analysis.priors.choose_priors`: the same patient ID *and* issuer,
never a name; a modality in common; the same body part when both name one; earlier;
most recent first; ``count``). :func:`fetch_priors` retrieves the chosen ones by C-GET
through the node's ingest (the same road as a pushed study: encrypted, durable,
analysed on arrival when the ingest analyses) and records them on the session
(``session.priors``), which the worklist shows.

:class:`PriorFetcher` is the node's background side: after a received study's analysis
job, the node hands it the session; one thread fetches, so receiving and analysing never
wait for an archive. A study fetched as a prior does not look for priors of its own.
The desktop takes the same road when a study is opened
(:func:`dicom_node.pacs.client.fetch_configured_priors`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from dicom_node.ingest import Ingestor
from dicom_node.pacs.config import Archive, ClientSettings
from dicom_node.pacs.query import Query, find_all
from dicom_node.pacs.retrieve import Retriever
from engine.analysis.priors import choose_priors, modalities
from engine.errors import MedVisionError

log = logging.getLogger(__name__)

#: Studies of one patient an archive may list before the rest is cut (C-CANCEL).
MAX_STUDIES = 500


def candidates(archive: Archive, settings: ClientSettings, current: dict[str, Any]) -> list[dict[str, Any]]:
    """The archive's studies of the current study's patient (ID and issuer) that share a modality,
    with the body part of their first series of that modality."""
    query = Query(patient_id=current["patient_id"], issuer=current.get("issuer") or None)
    wanted = modalities(current)
    found = []
    for row in find_all(archive, settings, query, level="study", limit=MAX_STUDIES):
        study = {"study_uid": row["study_uid"], "patient_id": row["patient_id"], "issuer": row["issuer"] or None,
                 "study_date": row["study_date"], "study_time": row["study_time"],
                 "modality": row["modalities"], "body_part": None, "archive": archive.label}
        offered = modalities(study)
        if offered and not offered & wanted:
            continue  # another modality: not worth a series query
        series = [s for s in find_all(archive, settings, Query(study_uid=row["study_uid"]), level="series")
                  if s["modality"].upper() in wanted]
        if not series:
            continue
        study["modality"] = series[0]["modality"]
        study["body_part"] = next((s["body_part"] for s in series if s["body_part"]), None)
        found.append(study)
    return found


def find_priors(archives: list[Archive], settings: ClientSettings, current: dict[str, Any],
                count: int) -> list[dict[str, Any]]:
    """The relevant priors of ``current`` (study facts) across ``archives``, most recent first."""
    listed: list[dict[str, Any]] = []
    for archive in archives:
        if "find" in archive.services:
            listed += candidates(archive, settings, current)
    return choose_priors(current, listed, count)


def fetch_priors(engine: Any, ingestor: Ingestor, settings: ClientSettings, archives: list[Archive],
                 session_id: str, *, count: int | None = None) -> dict[str, Any]:
    """Find the session's priors in ``archives``, retrieve them (C-GET; resumable, duplicates
    store nothing), record them on the session; what was done, with timings."""
    started = time.perf_counter()
    current = engine.study_facts(session_id)
    count = engine.settings.prior_count if count is None else count
    chosen = find_priors(archives, settings, current, count)
    found_at = time.perf_counter()
    by_label = {archive.label: archive for archive in archives}
    priors = []
    for prior in chosen:
        archive = by_label[prior["archive"]]
        entry = {k: prior.get(k) for k in ("study_uid", "study_date", "study_time", "modality", "body_part")}
        entry["archive"] = archive.label
        try:
            result = Retriever(archive, settings, ingestor).get(prior["study_uid"])
            entry |= {"complete": result.complete, "stored": result.stored, "already_held": result.already_held}
        except MedVisionError as exc:
            entry |= {"complete": False, "error": f"{exc.code.value}: {exc.message}"}
        held = engine.store.session_of_study(prior["study_uid"])
        entry["session_id"] = held["id"] if held else None
        priors.append(entry)
    engine.record_priors(session_id, priors)
    finished = time.perf_counter()
    return {"session_id": session_id, "priors": priors,
            "timings_ms": {"find": round((found_at - started) * 1000, 1),
                           "retrieve": round((finished - found_at) * 1000, 1),
                           "total": round((finished - started) * 1000, 1)}}


def recorded(engine: Any, session_id: str) -> bool:
    """True once the session's priors were looked for and recorded (by any process, even none found)."""
    return "priors" in (engine.store.get_session(session_id)["metadata"] or {})


def priors_settings(engine: Any) -> ClientSettings:
    """The PACS settings (``MEDVISION_PACS_CONFIG`` or ``HOME/pacs.toml``) the priors are fetched with;
    a bad settings file gives none (logged): priors are then not fetched, nothing else stops."""
    from dicom_node.pacs.config import load

    try:
        return load(home=engine.settings.home)
    except MedVisionError as exc:
        log.warning("PACS settings unusable, priors are not fetched: %s", exc.code.value)
        return ClientSettings()


class PriorFetcher:
    """One background thread fetching the priors of the sessions the node hands it."""

    def __init__(self, engine: Any, ingestor: Ingestor, settings: ClientSettings) -> None:
        self.engine, self.ingestor, self.settings = engine, ingestor, settings
        self.archives = [a for a in settings.archives if a.priors]
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._seen: set[str] = set()  # sessions handed in already
        self._prior_studies: set[str] = set()  # studies fetched as priors: they look for none of their own
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.results: list[dict[str, Any]] = []

    @property
    def enabled(self) -> bool:
        return bool(self.archives)

    def start(self) -> PriorFetcher:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="dicom-priors", daemon=True)
            self._thread.start()
        return self

    def submit(self, session_id: str) -> None:
        """Look for this session's priors (once per session; a fetched prior is skipped)."""
        with self._lock:
            if not self.enabled or session_id in self._seen:
                return
            self._seen.add(session_id)
        self._queue.put(session_id)

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while (session_id := self._queue.get()) is not None:
            try:
                # one thread, in order: a prior's own job comes after the fetch that brought it
                session = self.engine.store.get_session(session_id)
                if recorded(self.engine, session_id) or session["study_instance_uid"] in self._prior_studies:
                    continue  # recorded already (another process, before a restart), or itself a prior
                outcome = fetch_priors(self.engine, self.ingestor, self.settings, self.archives, session_id)
                self._prior_studies.update(p["study_uid"] for p in outcome["priors"])
                self.results.append(outcome)
                log.info("priors of session %s: %d found in %.0f ms", session_id, len(outcome["priors"]),
                         outcome["timings_ms"]["total"])
            except MedVisionError as exc:
                log.info("priors of session %s not looked for: %s", session_id, exc.code.value)
            except Exception:  # noqa: BLE001 - the fetcher lives on; the node keeps receiving
                log.exception("looking for the priors of session %s failed", session_id)


def prior_fetcher(engine: Any, ingestor: Ingestor) -> PriorFetcher:
    """The node's fetcher over the PACS settings (:func:`priors_settings`): enabled when an
    archive there says ``priors = true``."""
    return PriorFetcher(engine, ingestor, priors_settings(engine))
