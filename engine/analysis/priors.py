"""Which earlier studies of the same patient are relevant priors: one pure rule, no I/O.

A study is described by a plain dict (:func:`study_facts` builds it from image rows, and
the PACS query answers carry the same keys): ``study_uid``, ``patient_id``, ``issuer``,
``study_date`` (YYYYMMDD), ``study_time`` (HHMMSS[.ffffff]), ``modality`` (one code, or
several separated by ``\\`` as ModalitiesInStudy holds them) and ``body_part``.

The rule (:func:`choose_priors`): the same Patient ID *and* the same Issuer of Patient ID
(an absent issuer matches only an absent issuer: two issuers are two patients, and a name
is never looked at); a modality in common; the same body part when both studies name one;
strictly earlier (date, then time); not the same Study Instance UID; most recent first;
at most ``count``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.config import DEFAULT_PRIOR_COUNT
from engine.imaging.records import is_document


def _text(value: Any) -> str:
    return str(value).strip() if value not in (None, "") else ""


def modalities(study: dict[str, Any]) -> frozenset[str]:
    """The study's modality codes (``CR``, ``CR\\DX`` -> {CR, DX}), upper case."""
    raw = study.get("modality") or study.get("modalities") or ""
    parts = raw if isinstance(raw, list | tuple | set | frozenset) else str(raw).split("\\")
    return frozenset(p.strip().upper() for p in parts if str(p).strip())


def _when(study: dict[str, Any]) -> tuple[str, str]:
    """(date, time) comparable as text: YYYYMMDD and HHMMSS padded, fractions kept."""
    date = _text(study.get("study_date"))
    time = _text(study.get("study_time")).replace(":", "")
    head, _, fraction = time.partition(".")
    return date, head.ljust(6, "0") + (f".{fraction}" if fraction else "")


def same_patient(current: dict[str, Any], other: dict[str, Any]) -> bool:
    """Patient ID and Issuer of Patient ID both equal (absent only equals absent); an empty ID matches nothing."""
    patient_id = _text(current.get("patient_id"))
    return bool(patient_id) and patient_id == _text(other.get("patient_id")) \
        and _text(current.get("issuer")) == _text(other.get("issuer"))


def why_not(current: dict[str, Any], candidate: dict[str, Any]) -> str | None:
    """Why ``candidate`` is not a relevant prior of ``current`` (None: it is)."""
    if not same_patient(current, candidate):
        return "another patient (Patient ID or issuer differ)"
    if _text(candidate.get("study_uid")) and _text(candidate.get("study_uid")) == _text(current.get("study_uid")):
        return "the same study"
    wanted, offered = modalities(current), modalities(candidate)
    if not wanted or not (wanted & offered):
        return "another modality"
    part, other_part = _text(current.get("body_part")).upper(), _text(candidate.get("body_part")).upper()
    if part and other_part and part != other_part:
        return "another body part"
    now, then = _when(current), _when(candidate)
    if not now[0] or not then[0]:
        return "no study date"
    if then >= now:
        return "not earlier"
    return None


def choose_priors(current: dict[str, Any], candidates: Iterable[dict[str, Any]],
                  count: int = DEFAULT_PRIOR_COUNT) -> list[dict[str, Any]]:
    """The relevant priors of ``current`` among ``candidates``, most recent first, at most ``count``.

    A study listed twice (two archives, or a series-level answer per series) counts once.
    """
    if count < 0:
        raise ValueError('Argument "count" must be at least 0.')
    chosen: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        if why_not(current, candidate) is None:
            chosen.setdefault(_text(candidate.get("study_uid")) or str(id(candidate)), candidate)
    return sorted(chosen.values(), key=_when, reverse=True)[:count]


def study_facts(images: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The facts of the study the image rows (the store's ``images``) belong to, from the
    first row with a Patient ID that is an image (a document's modality, SR, says nothing of
    the study's); None when none has one."""
    for image in images:
        patient = image.get("patient") or {}
        metadata = image.get("metadata") or {}
        if not _text(patient.get("PatientID")) or is_document(image):
            continue
        return {"study_uid": image.get("study_instance_uid"), "patient_id": _text(patient.get("PatientID")),
                "issuer": _text(patient.get("IssuerOfPatientID")) or None,
                "study_date": _text(patient.get("StudyDate")), "study_time": _text(patient.get("StudyTime")),
                "modality": _text(image.get("modality") or metadata.get("Modality")),
                "body_part": _text(metadata.get("BodyPartExamined")) or None}
    return None
