"""Lesions tracked across studies: links on annotations, lesions read from stored SR documents,
and each lesion's change against a prior (the rules in :mod:`engine.analysis.tracking`).

A session's lesions are its tracked annotations plus the tracked groups of the TID 1500 SR
documents held with its study (another workstation's report, retrieved from the archive with
the images). The lesions of the session's priors *seed* it: a new measurement linked to a
seed's UID is that lesion, measured again.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pydicom

from engine.analysis import tracking as rules
from engine.analysis.priors import study_facts
from engine.analysis.sr_read import read_tracked_measurements
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.records import is_document
from engine.services.priors import PriorService, resolve_prior
from engine.store import Store

log = logging.getLogger(__name__)

#: Measurement kinds as the measured quantity's name (the SR's concept meaning).
QUANTITY = {"distance": "Length", "polyline": "Length", "area": "Area", "angle": "Angle"}


def annotation_lesion(row: dict[str, Any]) -> dict[str, Any]:
    """A tracked annotation row as a lesion (its measurement's value and unit when it is one)."""
    coordinates = row["coordinates"] if isinstance(row["coordinates"], dict) else {}
    result = (coordinates.get("result") or {}) if row["type"] == "measurement" else {}
    return {"identifier": row["tracking"]["identifier"], "uid": row["tracking"]["uid"],
            "name": QUANTITY.get(coordinates.get("kind", ""), None) if result else None,
            "value": result.get("value"), "unit": result.get("unit"), "annotation_id": row["id"],
            "image_id": row["image_id"], "type": row["type"], "label": row["label"], "source": "annotation"}


class TrackingService:
    """Links annotations to lesions and reports lesions' changes between a study and a prior."""

    def __init__(self, store: Store, priors: PriorService) -> None:
        self.store, self.priors = store, priors

    # -- links -------------------------------------------------------------------------
    def track(self, session_id: str, annotation_id: str, identifier: str | None = None,
              uid: str | None = None) -> dict[str, Any]:
        """Link an annotation to a lesion: the given UID (a prior's lesion: its identifier is reused
        unless one is given) or a new one. ``INVALID_ARGUMENT`` for text, or a UID another
        annotation of the session already carries."""
        row = self.store.annotations.get(session_id, annotation_id)
        if row["type"] not in rules.TRACKABLE_TYPES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"a {row['type']} annotation cannot be a lesion")
        if uid is not None and identifier is None:
            seed = next((s for s in self.seeds(session_id) if s["uid"] == uid), None)
            identifier = seed["identifier"] if seed else None
        with self.store.db.transaction():
            row = self.store.annotations.get(session_id, annotation_id)
            rows = [r for r in self.store.list_annotations(session_id) if r.get("tracking")]
            link = rules.new_link(identifier, uid, row["label"] or f"lesion {len(rows) + 1}")
            if any(r["tracking"]["uid"] == link["uid"] and r["id"] != annotation_id for r in rows):
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "another annotation of this session is already"
                                     " linked to that lesion", uid=link["uid"])
            stored = self.store.annotations.update(session_id, row, {"tracking": link})
        return {"annotation_id": annotation_id, "tracking": stored["tracking"], "lesion": annotation_lesion(stored)}

    def untrack(self, session_id: str, annotation_id: str) -> dict[str, Any]:
        """Remove an annotation's lesion link (the annotation stays)."""
        with self.store.db.transaction():
            row = self.store.annotations.get(session_id, annotation_id)
            self.store.annotations.update(session_id, row, {"tracking": None} if row.get("tracking") else {})
        return {"annotation_id": annotation_id, "tracking": None, "was": row.get("tracking")}

    # -- lesions -----------------------------------------------------------------------
    def documented(self, session_id: str) -> list[dict[str, Any]]:
        """The tracked lesions of the TID 1500 SR documents held in the session (any producer's): the
        groups with a region (TID 1410/1411), not whole-image findings."""
        lesions = []
        for row in self.store.list_images(session_id):
            if not is_document(row):
                continue
            try:
                report = read_tracked_measurements(pydicom.dcmread(io.BytesIO(self.store.image_bytes(row))))
            except (MedVisionError, pydicom.errors.InvalidDicomError, ValueError, KeyError) as exc:
                log.info("document %s holds no readable measurement report (%s)", row["id"], type(exc).__name__)
                continue
            for lesion in report["lesions"]:
                if not lesion["regions"]:  # a whole-image finding or mask area: no lesion to follow
                    continue
                lesions.append(lesion | {"source": "sr", "document_id": row["id"], "study_date": report["study_date"],
                                         "sr_sop_instance_uid": report["sop_instance_uid"],
                                         "manufacturer": report["manufacturer"]})
        return lesions

    def lesions(self, session_id: str) -> list[dict[str, Any]]:
        """The session's lesions: its tracked annotations, then its SR documents' lesions not among them."""
        own = [annotation_lesion(r) for r in self.store.list_annotations(session_id) if r.get("tracking")]
        known = {lesion["uid"] for lesion in own}
        return own + [lesion for lesion in self.documented(session_id) if lesion["uid"] not in known]

    def seeds(self, session_id: str) -> list[dict[str, Any]]:
        """The lesions of the session's priors held in the store, most recent prior first, one per UID."""
        try:
            priors = self.priors.held(self.priors.facts(session_id))
        except MedVisionError as exc:
            if exc.code != ErrorCode.INVALID_ARGUMENT:  # no Patient ID: no priors to seed from
                raise
            return []
        seen: dict[str, dict[str, Any]] = {}
        for prior in priors:
            for lesion in self.lesions(prior["session_id"]):
                seen.setdefault(lesion["uid"], lesion | {"prior_session_id": prior["session_id"],
                                                         "prior_study_date": prior.get("study_date")})
        return list(seen.values())

    def tracked(self, session_id: str) -> dict[str, Any]:
        """The session's lesions and the priors' lesions not yet linked here (to link with ``track``)."""
        lesions = self.lesions(session_id)
        linked = {lesion["uid"] for lesion in lesions}
        return {"session_id": session_id, "lesions": lesions,
                "seeds": [s for s in self.seeds(session_id) if s["uid"] not in linked]}

    def changes(self, session_id: str, prior: str | None = None) -> dict[str, Any]:
        """Each lesion's change against ``prior`` (a session id or a Study Instance UID held; default:
        the most recent held prior with lesions): values, change in the unit and %, days between."""
        current = self.lesions(session_id)
        if prior is not None:
            prior_session: str | None = resolve_prior(self.store, prior)
            if prior_session == session_id:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "the prior is the current session itself")
        else:
            prior_session = next((s["prior_session_id"] for s in self.seeds(session_id)), None)
        before = self.lesions(prior_session) if prior_session else []
        now = study_facts(self.store.list_images(session_id)) or {}
        then = study_facts(self.store.list_images(prior_session)) if prior_session else None
        prior_date = (then or {}).get("study_date") or next(
            (lesion.get("study_date") for lesion in before if lesion.get("study_date")), None)
        return rules.pair_lesions(current, before, current_date=now.get("study_date"), prior_date=prior_date) \
            | {"session_id": session_id, "prior_session_id": prior_session}
