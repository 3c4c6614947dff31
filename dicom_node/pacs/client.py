"""The PACS operations a front-end of the engine calls with an ``Engine`` and an archive spec
(the MCP tools ``query_pacs``, ``retrieve_study``, ``list_priors``; the desktop's look for the
priors of a study it opens, :func:`fetch_configured_priors`): settings from the data
directory's ``pacs.toml`` (or ``MEDVISION_PACS_CONFIG``), the archive by name or ``AE@HOST:PORT``,
retrieved instances through the node's ingest. Plain JSON-ready dicts in, out."""

from __future__ import annotations

from typing import Any

from dicom_node.ingest import Ingestor
from dicom_node.pacs.config import Archive, ClientSettings, load
from dicom_node.pacs.priors import fetch_priors, find_priors, priors_settings, recorded
from dicom_node.pacs.query import Query, find
from dicom_node.pacs.retrieve import Retriever


def archive_of(engine: Any, pacs: str) -> tuple[ClientSettings, Archive]:
    """(client settings, the archive ``pacs`` names: a configured name or ``AE@HOST:PORT``)."""
    settings = load(home=engine.settings.home)
    return settings, settings.archive(pacs)


def query(engine: Any, pacs: str, *, level: str = "study", limit: int = 100, **keys: Any) -> dict[str, Any]:
    """C-FIND (study or series level) with the matching ``keys`` of :class:`Query`; at most ``limit`` rows."""
    settings, archive = archive_of(engine, pacs)
    rows, truncated = [], False
    for page in find(archive, settings, Query(**keys), level=level, limit=limit):
        rows += page
        truncated = truncated or page.truncated
    return {"archive": archive.label, "level": level, "results": rows, "count": len(rows), "truncated": truncated}


def retrieve(engine: Any, pacs: str, study_uid: str, series_uid: str | None = None) -> dict[str, Any]:
    """C-GET of a study (or series) into the store, resumable; the session that holds it."""
    settings, archive = archive_of(engine, pacs)
    ingestor = Ingestor(engine.store, limits=engine.settings.limits)
    try:
        result = Retriever(archive, settings, ingestor).get(study_uid, series_uid)
    finally:
        ingestor.close()
    held = engine.store.session_of_study(study_uid)
    return result.to_dict() | {"session_id": held["id"] if held else None}


def priors(engine: Any, session_id: str, pacs: str | None, *, fetch: bool = False,
           count: int | None = None) -> dict[str, Any]:
    """The session's priors held in the store; with ``pacs``, those in the archive too (and
    retrieved and recorded when ``fetch``)."""
    listed = engine.list_priors(session_id, count)
    if pacs is None:
        return listed
    settings, archive = archive_of(engine, pacs)
    count = engine.settings.prior_count if count is None else count
    if fetch:
        ingestor = Ingestor(engine.store, limits=engine.settings.limits)
        try:
            outcome = fetch_priors(engine, ingestor, settings, [archive], session_id, count=count)
        finally:
            ingestor.close()
        return engine.list_priors(session_id, count) | {"fetched": outcome["priors"], "timings_ms": outcome["timings_ms"]}
    remote = find_priors([archive], settings, engine.study_facts(session_id), count)
    keys = ("study_uid", "study_date", "study_time", "modality", "body_part", "archive")
    return listed | {"in_archive": [{k: p.get(k) for k in keys} for p in remote]}


def fetch_configured_priors(engine: Any, session_id: str) -> dict[str, Any] | None:
    """The priors of an opened session, fetched from the archives whose settings say ``priors = true``
    as the node fetches those of a received study (:func:`fetch_priors`); None when no archive
    has priors on or the session's priors were recorded already (by the node, or an earlier open).

    Retrieved priors are stored without queueing an analysis: the desktop analyses a prior when
    it is compared. Raises what the look-up raises (no Patient ID: ``INVALID_ARGUMENT``; an
    archive that cannot be reached: its PACS code)."""
    settings = priors_settings(engine)
    archives = [archive for archive in settings.archives if archive.priors]
    if not archives or recorded(engine, session_id):
        return None
    ingestor = Ingestor(engine.store, analyze=False, limits=engine.settings.limits)
    try:
        return fetch_priors(engine, ingestor, settings, archives, session_id)
    finally:
        ingestor.close()
