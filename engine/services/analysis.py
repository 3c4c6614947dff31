"""Whole-image analysis: classification and organ segmentation, persisted per image."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import numpy as np

from engine.analysis.classify import classify as run_classifier
from engine.analysis.lung_fields import LungFields, find_lung_fields
from engine.analysis.quality import check_quality
from engine.analysis.segmentation import MASKS_KEY, segment_organs
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import DecodedImage
from engine.imaging.masks import decode_rle
from engine.inference.registry import ModelRegistry
from engine.services.images import ImageService, image_summary
from engine.services.results import unavailable
from engine.store import Store, new_id
from engine.vocabulary import DISCLAIMER, UNTRAINED_BANNER

PRESETS: dict[str, dict[str, bool]] = {
    "quick": {"classify": True, "detect": False, "segment": False, "generate_report": False},
    "full": {"classify": True, "detect": True, "segment": True, "generate_report": True},
    "segment_only": {"classify": False, "detect": False, "segment": True, "generate_report": False},
    "report_only": {"classify": False, "detect": False, "segment": False, "generate_report": True},
}
#: Which pack task answers each analysis switch (None: not provided by any model yet).
SWITCH_TASKS = {"detect": "detect", "generate_report": "llm"}
RESULT_KEYS = {"detect": "detections", "segment": "segmentation", "generate_report": "report"}
#: Images whose training-free lung fields are kept in memory (about 2 x 3.6 MB each for RG1).
LUNG_FIELDS_KEPT = 4


def retyped(decoded: DecodedImage, image_type: str) -> DecodedImage:
    """A shallow copy of ``decoded`` carrying the user's image type override."""
    return replace(decoded, image_type=image_type, type_reason="set by the user", type_confidence=1.0)


class AnalysisService:
    """Runs and keeps whole-image analyses (classifier, organ segmentation)."""

    def __init__(self, store: Store, models: ModelRegistry, images: ImageService) -> None:
        self.store, self.models, self.images = store, models, images
        self._lung_fields: OrderedDict[str, LungFields] = OrderedDict()
        self._lung_fields_lock = threading.Lock()

    def organ_model_trained(self) -> bool:
        """Whether the pack's organ model holds trained weights (only then are its masks read for anatomy)."""
        entry = self.models.entry("organ_seg")
        return entry is not None and entry.trained

    def lung_fields(self, session_id: str, image_id: str) -> LungFields:
        """The image's lung fields found by image processing (no model), kept for a few images."""
        with self._lung_fields_lock:
            if image_id in self._lung_fields:
                self._lung_fields.move_to_end(image_id)
                return self._lung_fields[image_id]
        _, decoded = self.images.decoded_image(session_id, image_id)
        fields = find_lung_fields(decoded)
        with self._lung_fields_lock:
            self._lung_fields[image_id] = fields
            while len(self._lung_fields) > LUNG_FIELDS_KEPT:
                self._lung_fields.popitem(last=False)
        return fields

    def analyze_image(self, session_id: str, image_id: str | None = None, classify: bool = True,
                      detect: bool = True, segment: bool = False, generate_report: bool = True,
                      classification_threshold: float = 0.5, detection_mode: str = "auto",
                      detection_phrases: list[str] | None = None, segment_organs: list[str] | None = None,
                      preset: str | None = None, force: bool = False) -> dict:
        """Run the requested analyses on one image and persist the result (see ``Engine.analyze_image``)."""
        started = time.perf_counter()
        if preset is not None:
            if preset not in PRESETS:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"preset must be one of {', '.join(PRESETS)}")
            switches = PRESETS[preset]
        else:
            switches = {"classify": classify, "detect": detect, "segment": segment, "generate_report": generate_report}
        session = self.store.get_session(session_id)
        image_id = image_id or session["current_image_id"]
        if image_id is None:
            raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, "the session has no images yet")
        image, decoded = self.images.decoded_image(session_id, image_id)
        decoded_at = time.perf_counter()

        result: dict[str, Any] = {
            "session_id": session_id,
            "image_id": image_id,
            "image": image_summary(image),
            "preset": preset,
            "disclaimer": DISCLAIMER,
        }
        models_used: list[dict] = []
        effective = decoded if image["type"] == decoded.image_type else retyped(decoded, image["type"])
        analysis_id, masks = new_id(), []
        if switches["classify"]:
            classification = run_classifier(effective, self.models, threshold=classification_threshold, force=force)
            result["classification"] = classification
            models_used.append(classification["model"])
        if switches["segment"]:
            if self.models.entry("organ_seg") is None:
                result["segmentation"] = unavailable("the model pack has no organ_seg model")
            else:
                segmentation, masks = self._segment(effective, segment_organs, force)
                result["segmentation"] = segmentation
                models_used.append(segmentation["model"])
        for switch, task in SWITCH_TASKS.items():
            if switches[switch]:
                result[RESULT_KEYS[switch]] = unavailable(f"the model pack has no {task} model")
        analysed_at = time.perf_counter()

        trained = [m["trained"] for m in models_used]
        result["model_trained"] = all(trained) if trained else None
        result["models"] = models_used
        if trained and not all(trained):
            result["banner"] = UNTRAINED_BANNER
        if not models_used:
            result["note"] = "no analysis ran: every requested switch is unavailable in this model pack"
        with self.store.db.transaction():
            stored = self.store.add_analysis(session_id, image_id, "analyze_image", result, analysis_id=analysis_id)
            if masks:
                self.store.add_masks(session_id, image_id, masks, source="organ_seg", analysis_id=analysis_id,
                                     model_id=result["segmentation"]["model"]["id"])
        result["analysis_id"] = stored["id"]
        result["created_at"] = stored["created_at"]
        finished = time.perf_counter()
        inner = dict(result.get("classification", {}).get("timings_ms", {}))
        if result.get("segmentation", {}).get("status") == "ok":
            inner["segmentation"] = round(sum(result["segmentation"]["timings_ms"].values()), 2)
        result["timings_ms"] = {
            "decode": round((decoded_at - started) * 1000, 2),
            **inner,
            "analysis": round((analysed_at - decoded_at) * 1000, 2),
            "persist": round((finished - analysed_at) * 1000, 2),
            "total": round((finished - started) * 1000, 2),
        }
        return result

    def get_analysis_summary(self, session_id: str, image_id: str | None = None) -> dict:
        """The latest analysis of each image (or of one image) in short form."""
        self.store.get_session(session_id)
        if image_id is not None:
            self.store.get_image(image_id, session_id=session_id)
        latest: dict[str, dict] = {}
        for row in self.store.list_analyses(session_id, image_id):
            latest[row["image_id"]] = row
        images = []
        for image in self.store.list_images(session_id):
            if image_id is not None and image["id"] != image_id:
                continue
            row = latest.get(image["id"])
            entry: dict[str, Any] = {"image_id": image["id"], "type": image["type"], "analyzed": row is not None}
            if row is not None:
                result = row["result"]
                classification = result.get("classification") or {}
                entry |= {
                    "analysis_id": row["id"],
                    "created_at": row["created_at"],
                    "model_trained": result.get("model_trained"),
                    "positive_findings": classification.get("positive", []),
                    "top_findings": [
                        {"label": f["label"], "probability": f["probability"]}
                        for f in classification.get("findings", [])[:5]
                    ],
                }
            images.append(entry)
        trained = [i["model_trained"] for i in images if i.get("model_trained") is not None]
        return {
            "session_id": session_id,
            "images": images,
            "model_trained": all(trained) if trained else None,
            "disclaimer": DISCLAIMER,
        }

    def latest_result(self, session_id: str, image_id: str, kinds: tuple[str, ...]) -> dict | None:
        """The newest stored analysis of an image among ``kinds`` (its result, id and kind), or None."""
        for row in reversed(self.store.list_analyses(session_id, image_id)):
            if row["kind"] in kinds:
                return row["result"] | {"analysis_id": row["id"], "kind": row["kind"]}
        return None

    def _segment(self, decoded: DecodedImage, organs: list[str] | None, force: bool) -> tuple[dict, list[dict]]:
        """Run organ segmentation; returns the JSON result (masks by id) and the mask rows."""
        segmentation = segment_organs(decoded, self.models, organs=organs, force=force)
        boolean_masks = segmentation.pop(MASKS_KEY)
        rows = []
        for organ in segmentation["organs"]:
            mask_id = new_id()
            rows.append({"id": mask_id, "label": organ["label"], "rle": organ.pop("mask_rle"),
                         "area_px": organ["area_px"]})
            organ["mask_id"] = mask_id
        # With anatomy known, the ingest checks can also judge rotation and the view.
        segmentation["quality"] = check_quality(decoded, boolean_masks)
        return segmentation, rows

    def organ_masks(self, session_id: str, image_id: str, *, run: bool = True) -> dict[str, np.ndarray] | None:
        """The latest stored organ masks of an image; segments it first when ``run`` and possible."""
        stored = self.store.list_masks(session_id, image_id, source="organ_seg")
        if stored:
            latest = stored[-1]["analysis_id"]
            return {m["label"]: decode_rle(m["rle"]) for m in stored if m["analysis_id"] == latest}
        image = self.store.get_image(image_id, session_id=session_id)
        if not run or image["type"] != "CXR" or self.models.entry("organ_seg") is None:
            return None
        self.analyze_image(session_id, image_id, classify=False, detect=False, segment=True, generate_report=False)
        return self.organ_masks(session_id, image_id, run=False)
