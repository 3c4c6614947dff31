"""Compare a study with a prior: registration of the radiographs, their difference, and
the change in findings and measurements (the analysis layer's :mod:`engine.analysis.compare`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.analysis.compare import (
    compare_findings,
    compare_measurements,
    normalised,
    register_radiographs,
)
from engine.analysis.priors import same_patient, study_facts
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.records import has_auto_analysis, is_document
from engine.services.analysis import AnalysisService
from engine.services.images import ImageService
from engine.services.priors import resolve_prior
from engine.services.tracking import TrackingService
from engine.store import Store
from engine.vocabulary import DISCLAIMER

ANALYSIS_KINDS = ("analyze_image",)


class CompareService:
    """Current against prior, for two sessions of the store."""

    def __init__(self, store: Store, images: ImageService, analysis: AnalysisService,
                 tracking: TrackingService) -> None:
        self.store, self.images, self.analysis, self.tracking = store, images, analysis, tracking

    def resolve(self, prior: str) -> str:
        """A session id, or the Study Instance UID of a study already in the store: its session id."""
        return resolve_prior(self.store, prior)

    def _image(self, session_id: str, image_id: str | None) -> dict:
        if image_id is not None:
            return self.store.get_image(image_id, session_id=session_id)
        session = self.store.get_session(session_id)
        images = [row for row in self.store.list_images(session_id) if not is_document(row)]
        if not images:
            raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, "the session has no images yet", session_id=session_id)
        current = session["current_image_id"]
        return next((i for i in images if i["id"] == current), images[0])

    def _analyses(self, session_id: str, image: dict, analyze: bool) -> tuple[dict | None, dict | None]:
        """The image's latest analysis with a classification and latest with a segmentation (a
        segment-only run must not hide the findings); classified first when ``analyze`` and none is."""
        rows = [r for r in self.store.list_analyses(session_id, image["id"]) if r["kind"] in ANALYSIS_KINDS]

        def latest(key: str) -> dict | None:
            row = next((r for r in reversed(rows) if (r["result"].get(key) or {}).get("status") == "ok"), None)
            return None if row is None else row["result"] | {"analysis_id": row["id"]}

        classified = latest("classification")
        if classified is None and analyze and has_auto_analysis(image["type"]):
            classified = self.analysis.analyze_image(session_id, image["id"], preset="quick")
        return classified, latest("segmentation")

    def arrays(self, session_id: str, prior: str, *, image_id: str | None = None,
               prior_image_id: str | None = None) -> dict[str, Any]:
        """The registration with its images (``aligned``, ``difference``, ``valid`` arrays on the
        current's grid, and the normalised ``current`` and ``prior``): for the desktop and PNG output."""
        prior_session = self.resolve(prior)
        image, decoded = self.images.decoded_image(session_id, self._image(session_id, image_id)["id"])
        prior_row, prior_decoded = self.images.decoded_image(prior_session,
                                                             self._image(prior_session, prior_image_id)["id"])
        if image["frame_count"] > 1 or prior_row["frame_count"] > 1 or decoded.is_color or prior_decoded.is_color:
            raise MedVisionError(ErrorCode.INVALID_IMAGE_TYPE, "registration is for single-frame greyscale"
                                 " radiographs; volumes are compared in patient coordinates (not yet)")
        current = normalised(decoded.pixels, invert=decoded.invert)
        before = normalised(prior_decoded.pixels, invert=prior_decoded.invert)
        return register_radiographs(current, before) | {"current": current, "prior": before}

    def compare(self, session_id: str, prior: str, *, image_id: str | None = None,
                prior_image_id: str | None = None, register: bool = True, analyze: bool = True) -> dict[str, Any]:
        """Findings, measurements and (radiographs) the registration of ``session_id`` against ``prior``
        (a session id or a Study Instance UID held in the store)."""
        started = time.perf_counter()
        prior_session = self.resolve(prior)
        if prior_session == session_id:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "the prior is the current session itself")
        image = self._image(session_id, image_id)
        prior_image = self._image(prior_session, prior_image_id)
        now, then = study_facts([image]), study_facts([prior_image])
        patient = bool(now and then and same_patient(now, then))
        result: dict[str, Any] = {
            "session_id": session_id, "image_id": image["id"],
            "prior_session_id": prior_session, "prior_image_id": prior_image["id"],
            "current_study": {k: (now or {}).get(k) for k in ("study_uid", "study_date", "modality", "body_part")},
            "prior_study": {k: (then or {}).get(k) for k in ("study_uid", "study_date", "modality", "body_part")},
            "same_patient": patient,
            "warnings": [] if patient else ["the two studies do not share Patient ID and issuer (or lack one):"
                                            " compare with care"],
            "disclaimer": DISCLAIMER,
        }
        current_classified, current_segmented = self._analyses(session_id, image, analyze)
        prior_classified, prior_segmented = self._analyses(prior_session, prior_image, analyze)
        result["findings"] = compare_findings(current_classified, prior_classified)
        result["measurements"] = compare_measurements(current_segmented, prior_segmented)
        result["analysis_ids"] = {"current": (current_classified or {}).get("analysis_id"),
                                  "prior": (prior_classified or {}).get("analysis_id"),
                                  "current_segmentation": (current_segmented or {}).get("analysis_id"),
                                  "prior_segmentation": (prior_segmented or {}).get("analysis_id")}
        result["lesions"] = self.tracking.changes(session_id, prior_session)
        analysed = time.perf_counter()
        if register:
            try:
                registration = self.arrays(session_id, prior_session, image_id=image["id"],
                                           prior_image_id=prior_image["id"])
            except MedVisionError as exc:
                result["registration"] = {"status": "unavailable", "reason": exc.message}
            else:
                difference, valid = registration["difference"], registration["valid"]
                result["registration"] = {
                    "status": "ok", "method": registration["method"],
                    "matrix_current_to_prior": np.round(registration["matrix"], 6).tolist(),
                    "transform": registration["transform"], "refined": registration["refined"],
                    "quality": registration["quality"],
                    "difference": {"mean_abs": round(float(np.abs(difference[valid]).mean()), 4) if valid.any()
                                   else None, "scale": "0..1 normalised intensity"},
                }
        result["timings_ms"] = {"analysis": round((analysed - started) * 1000, 1),
                                "registration": round((time.perf_counter() - analysed) * 1000, 1)}
        return result
