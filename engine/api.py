"""The Engine facade: the one entry point the CLI, desktop, DICOM node and MCP server use.

Method names and arguments follow the product spec's MCP tool list, so every
front-end calls the same thing. Results are plain JSON-ready dicts; failures are
:class:`engine.errors.MedVisionError` with a stable code.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.analysis.classify import classify as run_classifier
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import DecodedImage, decode_image
from engine.inference.registry import ModelRegistry
from engine.store import Store

log = logging.getLogger(__name__)

IMAGE_TYPES = ("CXR", "KUB", "CT", "MRI", "US", "EKG", "Other")
PRESETS: dict[str, dict[str, bool]] = {
    "quick": {"classify": True, "detect": False, "segment": False, "generate_report": False},
    "full": {"classify": True, "detect": True, "segment": True, "generate_report": True},
    "segment_only": {"classify": False, "detect": False, "segment": True, "generate_report": False},
    "report_only": {"classify": False, "detect": False, "segment": False, "generate_report": True},
}
#: Which pack task answers each analysis switch (None: not provided by any model yet).
SWITCH_TASKS = {"detect": "detect", "segment": "organ_seg", "generate_report": "llm"}
DISCLAIMER = "For research and education, not for diagnostic use."
UNTRAINED_BANNER = "Development models: untrained weights, output not meaningful."
_DECODE_CACHE_SIZE = 4


def _unavailable(reason: str) -> dict[str, str]:
    return {"status": "unavailable", "reason": reason}


class Engine:
    """One engine per process, over one data directory and one model pack."""

    def __init__(self, settings: Settings | None = None, *, home: str | Path | None = None,
                 model_pack: str | Path | None = None) -> None:
        self.settings = settings or Settings.from_env(home, model_pack)
        self.store = Store.open(self.settings.home, use_keyring=self.settings.use_keyring)
        self.models = ModelRegistry(self.settings)
        self._decoded: OrderedDict[tuple[str, int], DecodedImage] = OrderedDict()
        self._cache_lock = threading.Lock()

    def close(self) -> None:
        """Release models and database connections."""
        self.models.unload()
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sessions ----------------------------------------------------------------------
    def create_study_session(self, name: str | None = None, metadata: dict[str, Any] | None = None) -> dict:
        """Create a new analysis session."""
        if metadata is not None and not isinstance(metadata, dict):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "metadata must be an object")
        session = self.store.create_session(name, metadata)
        return {"session_id": session["id"], "name": session["name"], "created_at": session["created_at"]}

    def list_sessions(self, limit: int = 100) -> list[dict]:
        """Sessions, newest first."""
        return [
            {"session_id": s["id"], "name": s["name"], "images": s["image_count"],
             "created_at": s["created_at"], "updated_at": s["updated_at"]}
            for s in self.store.list_sessions(limit)
        ]

    def get_session_status(self, session_id: str) -> dict:
        """Summary of a session: its images, the current one, annotation and analysis counts."""
        session = self.store.get_session(session_id)
        analysed = {a["image_id"] for a in self.store.list_analyses(session_id)}
        images = [self._image_summary(i) | {"analyzed": i["id"] in analysed} for i in self.store.list_images(session_id)]
        return {
            "session_id": session_id,
            "name": session["name"],
            "created_at": session["created_at"],
            "updated_at": session["updated_at"],
            "images": images,
            "current_image": session["current_image_id"],
            "total_annotations": self.store.count("annotations", session_id),
            "total_analyses": self.store.count("analyses", session_id),
        }

    def delete_session(self, session_id: str) -> dict:
        """Delete a session with its images, analyses and annotations (blobs no longer used go too)."""
        removed = self.store.delete_session(session_id)
        with self._cache_lock:
            for key in [k for k in self._decoded if k[0] in removed["image_ids"]]:
                del self._decoded[key]
        return {"session_id": session_id, "deleted": True, "images": len(removed["image_ids"])}

    def switch_image(self, session_id: str, image_id: str) -> dict:
        """Move the session's focus to another of its images."""
        self.store.get_session(session_id)
        self.store.set_current_image(session_id, image_id)
        return {"session_id": session_id, "current_image": image_id,
                "image": self._image_summary(self.store.get_image(image_id))}

    # -- images ------------------------------------------------------------------------
    def add_image_to_session(self, session_id: str, image_path: str | Path, image_type: str | None = None,
                             auto_analyze: bool = True, analysis_config: dict[str, Any] | None = None,
                             frame: int = 0) -> dict:
        """Decode an image file, store it encrypted in the session, optionally analyse it."""
        started = time.perf_counter()
        self.store.get_session(session_id)
        if image_type is not None and image_type not in IMAGE_TYPES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"image_type must be one of {', '.join(IMAGE_TYPES)}")
        path = Path(image_path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"no such file: {path.name}") from exc
        except IsADirectoryError as exc:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{path.name} is a directory, not an image") from exc
        except PermissionError as exc:
            raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"cannot read {path.name}: permission denied") from exc
        decoded = decode_image(data, frame=frame, filename=path.name)
        decoded_at = time.perf_counter()
        record = {
            "source_path": str(path.resolve()),
            "source_name": path.name,
            "type": image_type or decoded.image_type,
            "type_source": "user" if image_type else "detected",
            "modality": decoded.modality,
            "format": decoded.format,
            "rows": decoded.rows,
            "columns": decoded.columns,
            "frame_count": decoded.frame_count,
            "sop_class_uid": decoded.sop_class_uid,
            "sop_instance_uid": decoded.sop_instance_uid,
            "series_instance_uid": decoded.series_instance_uid,
            "study_instance_uid": decoded.study_instance_uid,
            "metadata": decoded.metadata | {"type_reason": decoded.type_reason,
                                            "type_confidence": decoded.type_confidence,
                                            "detected_type": decoded.image_type},
            "patient": decoded.patient,
        }
        image = self.store.add_image(session_id, blob_data=data, record=record)
        self.store.add_interaction(session_id, "upload", {"image_id": image["id"], "source_name": path.name}, image["id"])
        self._remember(image["id"], frame, decoded)
        stored_at = time.perf_counter()
        result = {
            "session_id": session_id,
            "image_id": image["id"],
            "type": image["type"],
            "type_source": image["type_source"],
            "type_reason": decoded.type_reason,
            "image": self._image_summary(image),
            "timings_ms": {"decode": round((decoded_at - started) * 1000, 2),
                           "store": round((stored_at - decoded_at) * 1000, 2)},
            "auto_analysis": None,
        }
        if auto_analyze:
            config = dict(analysis_config or {"preset": "quick"})
            if image["type"] == "CXR" or config.get("force"):
                result["auto_analysis"] = self.analyze_image(session_id, image["id"], **config)
            else:
                result["auto_analysis"] = {
                    "status": "skipped",
                    "reason": f"no automatic analysis for {image['type']} images in this model pack",
                }
        return result

    def _remember(self, image_id: str, frame: int, decoded: DecodedImage) -> None:
        with self._cache_lock:
            self._decoded[(image_id, frame)] = decoded
            self._decoded.move_to_end((image_id, frame))
            while len(self._decoded) > _DECODE_CACHE_SIZE:
                self._decoded.popitem(last=False)

    def decoded_image(self, session_id: str, image_id: str) -> tuple[dict, DecodedImage]:
        """The image row and its decoded pixels (from the per-process cache when possible)."""
        image = self.store.get_image(image_id, session_id=session_id)
        frame = int(image["metadata"].get("frame_index", 0))
        with self._cache_lock:
            cached = self._decoded.get((image_id, frame))
        if cached is None:
            cached = decode_image(self.store.image_bytes(image), frame=frame, filename=image["source_name"])
            self._remember(image_id, frame, cached)
        return image, cached

    @staticmethod
    def _image_summary(image: dict) -> dict:
        spacing = image["metadata"].get("pixel_spacing") or {}
        return {
            "image_id": image["id"],
            "type": image["type"],
            "type_source": image["type_source"],
            "modality": image["modality"],
            "format": image["format"],
            "source_name": image["source_name"],
            "rows": image["rows"],
            "columns": image["columns"],
            "frame_count": image["frame_count"],
            "pixel_spacing_mm": spacing.get("pixel_spacing_mm"),
            "spacing_source": spacing.get("source", "none"),
            "created_at": image["created_at"],
        }

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
        image, decoded = self.decoded_image(session_id, image_id)
        decoded_at = time.perf_counter()

        result: dict[str, Any] = {
            "session_id": session_id,
            "image_id": image_id,
            "image": self._image_summary(image),
            "preset": preset,
            "disclaimer": DISCLAIMER,
        }
        models_used: list[dict] = []
        if switches["classify"]:
            effective = decoded if image["type"] == decoded.image_type else _retyped(decoded, image["type"])
            classification = run_classifier(effective, self.models, threshold=classification_threshold, force=force)
            result["classification"] = classification
            models_used.append(classification["model"])
        for switch, task in SWITCH_TASKS.items():
            if switches[switch]:
                result[_result_key(switch)] = _unavailable(f"the model pack has no {task} model")
        analysed_at = time.perf_counter()

        trained = [m["trained"] for m in models_used]
        result["model_trained"] = all(trained) if trained else None
        result["models"] = models_used
        if trained and not all(trained):
            result["banner"] = UNTRAINED_BANNER
        if not models_used:
            result["note"] = "no analysis ran: every requested switch is unavailable in this model pack"
        stored = self.store.add_analysis(session_id, image_id, "analyze_image", result)
        result["analysis_id"] = stored["id"]
        result["created_at"] = stored["created_at"]
        finished = time.perf_counter()
        inner = result.get("classification", {}).get("timings_ms", {})
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

    # -- models ------------------------------------------------------------------------
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


def _result_key(switch: str) -> str:
    return {"detect": "detections", "segment": "segmentation", "generate_report": "report"}[switch]


def _retyped(decoded: DecodedImage, image_type: str) -> DecodedImage:
    """A shallow copy of ``decoded`` carrying the user's image type override."""
    return replace(decoded, image_type=image_type, type_reason="set by the user", type_confidence=1.0)
