"""The Engine facade: the one entry point the CLI, desktop, DICOM node and MCP server use.

Method names and arguments follow the product spec's MCP tool list, so every
front-end calls the same thing. Results are plain JSON-ready dicts; failures are
:class:`engine.errors.MedVisionError` with a stable code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.analysis import region as region_facts
from engine.analysis.anatomy import locate, midline_x
from engine.analysis.classify import classify as run_classifier
from engine.analysis.embedding import embed_image
from engine.analysis.measurements import area as mask_area
from engine.analysis.measurements import measure_mask
from engine.analysis.quality import check_quality
from engine.analysis.segmentation import MASKS_KEY, segment_organs
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import DecodedImage, decode_image
from engine.imaging.masks import decode_rle, encode_rle, mask_bbox
from engine.imaging.regions import mirror_mask, parse_region, region_mask
from engine.inference.registry import ModelRegistry
from engine.rag.fusion import merge_labels, suggested_prompt
from engine.store import BlobStore, Store, new_id

log = logging.getLogger(__name__)

IMAGE_TYPES = ("CXR", "KUB", "CT", "MRI", "US", "EKG", "Other")
PRESETS: dict[str, dict[str, bool]] = {
    "quick": {"classify": True, "detect": False, "segment": False, "generate_report": False},
    "full": {"classify": True, "detect": True, "segment": True, "generate_report": True},
    "segment_only": {"classify": False, "detect": False, "segment": True, "generate_report": False},
    "report_only": {"classify": False, "detect": False, "segment": False, "generate_report": True},
}
#: Which pack task answers each analysis switch (None: not provided by any model yet).
SWITCH_TASKS = {"detect": "detect", "generate_report": "llm"}
RAG_MODES = ("quick", "full", "rag_only")
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
        self._library = None
        self._segmenter = None
        self._agent = None
        self._embedding_blobs = BlobStore(self.settings.home / "cache" / "embeddings", self.store.key)
        self._library_lock = threading.Lock()

    def close(self) -> None:
        """Release models, the reference library and database connections."""
        if self._library is not None:
            self._library.close()
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
        try:
            encoder = self.models.entry("sam_encoder")
        except MedVisionError:
            encoder = None  # no usable pack: no embeddings were cached with it either
        for image_id in removed["image_ids"]:
            if self._segmenter is not None:
                self._segmenter.clear(image_id)
            if encoder is not None:  # the derived embedding goes with the image
                key = f"{image_id}:{encoder.spec['sha256']}"
                self._embedding_blobs.delete(hashlib.sha256(key.encode()).hexdigest())
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
        quality = check_quality(decoded, image_type=image_type)
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
            "metadata": decoded.metadata | {"quality": quality, "type_reason": decoded.type_reason,
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
            "quality_warnings": quality["warnings"],
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
        effective = decoded if image["type"] == decoded.image_type else _retyped(decoded, image["type"])
        analysis_id, masks = new_id(), []
        if switches["classify"]:
            classification = run_classifier(effective, self.models, threshold=classification_threshold, force=force)
            result["classification"] = classification
            models_used.append(classification["model"])
        if switches["segment"]:
            if self.models.entry("organ_seg") is None:
                result["segmentation"] = _unavailable("the model pack has no organ_seg model")
            else:
                segmentation, masks = self._segment(effective, segment_organs, force)
                result["segmentation"] = segmentation
                models_used.append(segmentation["model"])
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

    # -- segmentation ------------------------------------------------------------------
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

    # -- annotations -------------------------------------------------------------------
    def add_annotation(self, session_id: str, image_id: str | None = None, annotation_type: str = "bbox",
                       coordinates: Any = None, label: str = "", notes: str | None = None,
                       source: str = "user", confidence: float | None = None, layer: str | None = None,
                       style: dict | None = None) -> dict:
        """Add an annotation (validated against the image; coordinates stored in pixels)."""
        image_id = image_id or self._current_image(session_id)
        row = self.store.add_annotation(session_id, image_id, annotation_type, coordinates, label=label,
                                        notes=notes, source=source, confidence=confidence, layer=layer, style=style)
        return {"annotation_id": row["id"], "annotation": _annotation(row)}

    def update_annotation(self, session_id: str, annotation_id: str, label: str | None = None,
                          notes: str | None = None, coordinates: Any = None, **extra: Any) -> dict:
        """Change an annotation's label, notes, coordinates (or confidence/layer/style)."""
        row = self.store.update_annotation(session_id, annotation_id, label=label, notes=notes,
                                           coordinates=coordinates, **extra)
        return {"annotation_id": annotation_id, "annotation": _annotation(row)}

    def delete_annotation(self, session_id: str, annotation_id: str) -> dict:
        """Delete an annotation."""
        return self.store.delete_annotation(session_id, annotation_id)

    def get_annotations(self, session_id: str, image_id: str | None = None, source: str = "all") -> dict:
        """Annotations of a session (or an image), optionally of one source."""
        rows = self.store.list_annotations(session_id, image_id, source or "all")
        return {"session_id": session_id, "image_id": image_id, "annotations": [_annotation(r) for r in rows],
                "count": len(rows)}

    def _current_image(self, session_id: str) -> str:
        image_id = self.store.get_session(session_id)["current_image_id"]
        if image_id is None:
            raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, "the session has no images yet")
        return image_id

    # -- region analysis ---------------------------------------------------------------
    def analyze_selected_region(self, session_id: str, region: dict, question: str | None = None,
                                actions: list[str] | tuple[str, ...] = ("describe",),
                                image_id: str | None = None, top_k: int = 5) -> dict:
        """Analyse a region the user (or an agent) selected, and keep it as an AI annotation.

        ``actions``: describe, segment, measure, classify, rag_search, compare. The
        result holds ``region_info`` (bounds, area, pixel statistics, anatomy), one
        section per action, a ``confidence_summary`` and the new ``annotation_id``.
        """
        started = time.perf_counter()
        actions = list(actions or ["describe"])
        unknown = [a for a in actions if a not in region_facts.ACTIONS]
        if unknown:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"unknown action(s) {', '.join(map(str, unknown))}; use {', '.join(region_facts.ACTIONS)}")
        image_id = image_id or self._current_image(session_id)
        image, decoded = self.decoded_image(session_id, image_id)
        parsed = parse_region(region, decoded.rows, decoded.columns)
        mask = region_mask(parsed, decoded.rows, decoded.columns)
        spacing, spacing_source = decoded.pixel_spacing_mm, decoded.spacing_source
        timings: dict[str, float] = {}

        def lap(name: str, since: float) -> float:
            now = time.perf_counter()
            timings[name] = round((now - since) * 1000, 2)
            return now

        wants_anatomy = {"describe", "compare"} & set(actions)
        organs = self.organ_masks(session_id, image_id, run=bool(wants_anatomy)) if wants_anatomy else None
        anatomy = locate(mask, organs)
        mark = lap("anatomy", started)
        info = {
            "region": parsed.to_dict(),
            "bbox": mask_bbox(mask),
            "area": mask_area(mask, spacing, spacing_source),
            "pixel_statistics": region_facts.pixel_statistics(decoded, mask),
            "anatomy": anatomy,
        }
        sections: dict[str, Any] = {}
        target, target_type = mask, parsed.type
        if "segment" in actions:
            segmentation = self.segment_interactive(session_id, image_id, region=parsed.to_dict(), store=False)
            best = segmentation["masks"][segmentation["best"]]
            target, target_type = decode_rle(best["rle"]), "mask"
            sections["segmentation"] = segmentation
            mark = lap("segment", mark)
        if "measure" in actions:
            sections["measurements"] = measure_mask(target, spacing, spacing_source)
            mark = lap("measure", mark)
        if "classify" in actions:
            box = _square_box(mask_bbox(target), decoded.rows, decoded.columns)
            crop = _crop(decoded, box)
            sections["classification"] = run_classifier(crop, self.models, force=True) | {"crop": box}
            mark = lap("classify", mark)
        if "rag_search" in actions:
            x1, y1, x2, y2 = mask_bbox(target)
            sections["similar_cases"] = self._similar(decoded, top_k, True, 0.0,
                                                      region=(slice(y1, y2 + 1), slice(x1, x2 + 1)))
            mark = lap("rag_search", mark)
        if "compare" in actions:
            axis, axis_source = midline_x(organs, decoded.columns)
            comparison = region_facts.compare_contralateral(decoded, target, mirror_mask(target, axis), axis)
            sections["comparison"] = comparison | {"midline_source": axis_source}
            mark = lap("compare", mark)
        if "describe" in actions:
            top = (sections.get("classification") or {}).get("findings", [None])[0]
            sections["description"] = region_facts.describe_region({
                "region_type": parsed.type, "anatomy": anatomy, "area": info["area"],
                "comparison": sections.get("comparison"), "top_finding": top,
            })
        summary = region_facts.confidence_summary({k: sections.get(k) for k in
                                                    ("classification", "segmentation", "similar_cases")})
        trained = [v["model_trained"] for k, v in summary.items() if k != "overall" and v.get("model_trained") is not None]
        result = {
            "session_id": session_id, "image_id": image_id, "question": question, "actions": actions,
            "region_info": info, **sections, "confidence_summary": summary,
            "model_trained": all(trained) if trained else None, "disclaimer": DISCLAIMER,
        }
        if trained and not all(trained):
            result["banner"] = UNTRAINED_BANNER
        analysis_id = new_id()
        coordinates = encode_rle(target) if target_type == "mask" else parsed.coordinates
        confidence = max((v.get("confidence") or 0.0 for k, v in summary.items() if k != "overall"), default=None)
        with self.store.db.transaction():
            annotation = self.store.add_annotation(
                session_id, image_id, target_type, coordinates, label=question or "region analysis",
                confidence=confidence or None, source="ai", notes=sections.get("description"),
                layer="ai_regions", analysis_id=analysis_id)
            result["annotation_id"] = annotation["id"]
            result["timings_ms"] = timings | {"total": round((time.perf_counter() - started) * 1000, 2)}
            stored = self.store.add_analysis(session_id, image_id, "region", _jsonable(result), analysis_id=analysis_id)
            self.store.add_interaction(session_id, "region_select",
                                       {"analysis_id": analysis_id, "region": parsed.to_dict(), "actions": actions},
                                       image_id)
        result["analysis_id"] = stored["id"]
        return _jsonable(result)

    # -- interactive segmentation --------------------------------------------------------
    def segment_interactive(self, session_id: str, image_id: str | None = None, *,
                            points: list[list[float]] | None = None, labels: list[int] | None = None,
                            box: list[float] | None = None, region: dict | None = None,
                            store: bool = True) -> dict:
        """Click-to-segment: points (fg 1 / bg 0), a box, or a region dict as the prompt.

        Returns candidate masks as RLE with scores and the backend that made them;
        with ``store`` the best mask is kept (source "interactive") for accepting later.
        """
        from engine.analysis.interactive import polygon_to_prompt

        image_id = image_id or self._current_image(session_id)
        image, decoded = self.decoded_image(session_id, image_id)
        if region is not None:
            parsed = parse_region(region, decoded.rows, decoded.columns)
            if parsed.type == "bbox":
                box = parsed.coordinates
            elif parsed.type == "point":
                points, labels = [parsed.coordinates], [1]
            elif parsed.type in ("polygon", "freehand"):
                box, points, labels = polygon_to_prompt(parsed.coordinates)
            else:
                raise MedVisionError(ErrorCode.INVALID_REGION, "a mask cannot be a segmentation prompt")
        result = self.segmenter.segment(image_id, decoded, points=points, labels=labels, box=box)
        candidates = []
        for candidate in result["masks"]:
            candidates.append({"rle": encode_rle(candidate["mask"]), "score": round(float(candidate["score"]), 4),
                               "area_px": int(candidate["area_px"]), "bbox": mask_bbox(candidate["mask"]),
                               "area": mask_area(candidate["mask"], decoded.pixel_spacing_mm, decoded.spacing_source)})
        out = {"session_id": session_id, "image_id": image_id, "backend": result["backend"],
               "model": result.get("model"), "model_trained": result.get("model_trained"),
               "masks": candidates, "best": int(result["best"]), "timings_ms": result.get("timings_ms", {})}
        if store:
            best = candidates[out["best"]]
            out["mask_id"] = self.store.add_masks(session_id, image_id, [{"label": "interactive", **best}],
                                                  source="interactive")[0]
        return out

    @property
    def segmenter(self):  # noqa: ANN201 - engine.analysis.interactive.InteractiveSegmenter
        """The interactive segmenter (backend chosen by the pack; embeddings cached)."""
        with self._library_lock:
            if self._segmenter is None:
                from engine.analysis.interactive import InteractiveSegmenter

                self._segmenter = InteractiveSegmenter(self.models, cache_get=self._embedding_cache_get,
                                                       cache_put=self._embedding_cache_put)
            return self._segmenter

    def _embedding_cache_get(self, key: str) -> bytes | None:
        """SAM image embeddings persisted encrypted, so a restart does not re-encode."""
        blob_id = hashlib.sha256(key.encode()).hexdigest()
        if not self._embedding_blobs.path_for(blob_id).exists():
            return None
        try:
            return self._embedding_blobs.read_bytes(blob_id)
        except MedVisionError:
            log.warning("a cached image embedding failed its integrity check; recomputing it")
            self._embedding_blobs.delete(blob_id)
            return None

    def _embedding_cache_put(self, key: str, data: bytes) -> None:
        try:
            self._embedding_blobs.write_bytes(hashlib.sha256(key.encode()).hexdigest(), data)
        except MedVisionError as exc:  # a cache: failing to keep it must not fail the click
            log.warning("could not persist an image embedding: %s", exc.code.value)

    def accept_mask(self, session_id: str, mask_id: str, label: str = "", notes: str | None = None) -> dict:
        """Turn a stored interactive mask into a user annotation."""
        mask = self.store.get_mask(session_id, mask_id)
        return self.add_annotation(session_id, mask["image_id"], "mask", mask["rle"], label=label,
                                   notes=notes, source="user", layer="user_masks")

    # -- visual RAG --------------------------------------------------------------------
    @property
    def library(self):  # noqa: ANN201 - engine.rag.ReferenceLibrary
        """The reference-case library, opened on first use with the pack's embedder."""
        with self._library_lock:
            if self._library is None:
                from engine.rag import ReferenceLibrary

                entry = self.models.require("embed")
                self._library = ReferenceLibrary(
                    self.settings.home, self.store.key,
                    embedder=lambda decoded: embed_image(decoded, self.models)["vector"],
                    embedder_id=f"{entry.id}+sha256:{entry.spec['sha256']}",
                    dimension=int(entry.spec.get("output", {}).get("dimension", 768)),
                )
            return self._library

    def build_rag_index(self, source: str = "custom", data_path: str | Path | None = None,
                        reports_csv: str | Path | None = None, rebuild: bool = False, progress=None) -> dict:  # noqa: ANN001
        """Build or extend the reference library from a CSV or a folder of images + reports CSV."""
        if data_path is None:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "data_path is required (a CSV or a folder)")
        return self.library.build(source=source, data_path=Path(data_path),
                                  reports_csv=Path(reports_csv) if reports_csv else None,
                                  progress=progress, rebuild=rebuild)

    def _similar(self, decoded: DecodedImage, top_k: int, include_reports: bool, min_similarity: float,
                 region: tuple[slice, slice] | None = None) -> dict:
        embedding = embed_image(decoded, self.models, region=region)
        found = self.library.search(embedding["vector"], top_k=top_k, include_reports=include_reports,
                                    min_similarity=min_similarity)
        found["search_metadata"]["embedding_ms"] = round(sum(embedding["timings_ms"].values()), 2)
        return found | {"status": "ok", "model": embedding["model"], "model_trained": embedding["model_trained"]}

    def similar_case_thumbnails(self, case_ids: list[str]) -> dict[str, bytes]:
        """PNG previews of reference cases (longest side 160 px) by case id; cases added
        before previews were kept have none."""
        return self.library.thumbnails(case_ids)

    def search_similar_cases(self, session_id: str, image_id: str | None = None, top_k: int = 5,
                             include_reports: bool = True, min_similarity: float = 0.0) -> dict:
        """The reference cases most similar to an image, with similarity-weighted labels."""
        image_id = image_id or self._current_image(session_id)
        _, decoded = self.decoded_image(session_id, image_id)
        return {"session_id": session_id, "image_id": image_id} | self._similar(
            decoded, top_k, include_reports, min_similarity)

    def analyze_with_rag(self, session_id: str, image_id: str | None = None, mode: str = "quick",
                         top_k: int = 5) -> dict:
        """Classifier + similar cases (+ segmentation in ``full``) merged, with an LLM prompt.

        Modes: ``quick`` (classify + similar cases), ``full`` (adds organ segmentation),
        ``rag_only`` (similar cases only). Each stage's milliseconds are in ``metadata``.
        """
        if mode not in RAG_MODES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"mode must be one of {', '.join(RAG_MODES)}")
        started = time.perf_counter()
        image_id = image_id or self._current_image(session_id)
        image, decoded = self.decoded_image(session_id, image_id)
        stages: dict[str, float] = {}
        classification = segmentation = None
        if mode in ("quick", "full"):
            mark = time.perf_counter()
            analysis = self.analyze_image(session_id, image_id, classify=True, detect=False,
                                          segment=mode == "full", generate_report=False)
            classification, segmentation = analysis.get("classification"), analysis.get("segmentation")
            stages["classify"] = analysis["timings_ms"].get("preprocess", 0) + analysis["timings_ms"].get("inference", 0)
            if segmentation:
                stages["segment"] = analysis["timings_ms"].get("segmentation", 0)
            stages["analyze_total"] = round((time.perf_counter() - mark) * 1000, 2)
        mark = time.perf_counter()
        similar = self._similar(decoded, top_k, True, 0.0)
        stages["rag_search"] = round((time.perf_counter() - mark) * 1000, 2)
        merged = merge_labels(classification, similar, top_k)
        used = [s for s in (classification, segmentation, similar) if s and s.get("status") == "ok"]
        trained = all(s["model_trained"] for s in used) if used else None
        result = {
            "session_id": session_id, "image_id": image_id, "mode": mode,
            "classification": classification, "segmentation": segmentation, "similar_cases": similar,
            "merged_labels": merged,
            "suggested_prompt": suggested_prompt(merged, segmentation, similar, self._image_summary(image), trained),
            "model_trained": trained, "disclaimer": DISCLAIMER,
        }
        if trained is False:
            result["banner"] = UNTRAINED_BANNER
        stages["total"] = round((time.perf_counter() - started) * 1000, 2)
        result["metadata"] = {"stages_ms": stages, "top_k": top_k}
        stored = self.store.add_analysis(session_id, image_id, "rag", _jsonable(result))
        result["analysis_id"] = stored["id"]
        return _jsonable(result)

    # -- the medical agent ---------------------------------------------------------------
    # Thin delegations to engine.agent (workflow as YAML data, traced tool calls, guarded
    # reports, conversation memory); see engine.agent.service.MedicalAgent.
    @property
    def agent(self):  # noqa: ANN201 - engine.agent.service.MedicalAgent
        """The medical agent over this engine (created on first use)."""
        with self._library_lock:
            if self._agent is None:
                from engine.agent.service import MedicalAgent

                self._agent = MedicalAgent(self)
            return self._agent

    def invoke_medical_agent(self, session_id: str, task: str, context: dict[str, Any] | None = None,
                             mode: str = "auto", handoff: dict[str, Any] | None = None) -> dict:
        """Delegate an analysis task to the built-in medical agent (A2A).

        Parameters
        ----------
        task:
            What to do, in words (recorded in the conversation memory and the trace).
        context:
            ``user_selection`` (a region dict), ``clinical_history`` (free text, names and
            ids scrubbed), ``image_id`` (default: the session's current image),
            ``pipeline`` (a pipeline id), ``run_id`` (resume that run), ``seed``,
            ``auto_suggest`` (bool, or ``{"min_confidence", "max_suggestions"}``).
        mode:
            ``auto`` (the whole pipeline; the language model may order a step's tools),
            ``interactive`` (pauses with ``need_input`` and a user-input request where the
            pipeline asks), ``step_by_step`` (returns ``in_progress`` after each step; the
            next call resumes).
        handoff:
            ``{"return_on": ["user_confirmation", "analysis_complete"], "max_turns": n,
            "preserve_context": bool}``.

        Returns
        -------
        dict
            ``status`` (completed / need_input / in_progress / failed), ``run_id``,
            ``result`` (``summary``, ``findings``, ``annotations``, ``report``),
            ``actions_taken``, ``follow_up_suggestions``, ``trace_summary``, ``flags``
            and, by status, ``request``, ``next_step`` or ``error``.
        """
        return self.agent.invoke(session_id, task, context, mode, handoff)

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
        from engine.canvas import sync_canvas_state

        return sync_canvas_state(self, session_id, canvas_state)

    def push_to_canvas(self, session_id: str, action: str, payload: dict[str, Any]) -> dict:
        """Push to the canvas: add/update/remove_layer, highlight, animate, add_annotations."""
        from engine.canvas import push_to_canvas

        return push_to_canvas(self, session_id, action, payload)

    def get_canvas_state(self, session_id: str) -> dict:
        """The canvas state last synced (or the defaults) with the session's canvas layers."""
        from engine.canvas import get_canvas_state

        return get_canvas_state(self, session_id)

    # -- export ------------------------------------------------------------------------
    def export_study(self, session_id: str, format: str = "pdf", include_images: list[str] | None = None,  # noqa: A002
                     include_report: bool = True, include_annotations: bool = True,
                     include_measurements: bool = True, template: str | None = None,
                     output_path: str | Path | None = None, include_identifiers: bool = False,
                     institution: str = "") -> dict:
        """Export a session's results as a file (or a folder of files) people and PACS use.

        Parameters
        ----------
        format:
            ``pdf``, ``dicom_sr`` (TID 1500), ``dicom_seg``, ``dicom_sc`` (overlay burned
            in), ``dicom_pdf`` (encapsulated PDF), ``dicom`` (all four), ``json`` (report +
            trace), ``png_annotated`` or ``html`` (one self-contained file).
        include_images:
            Image ids to export; empty means all.
        template:
            PDF/HTML template: ``default``, ``clinical`` or ``research``.
        output_path:
            A file (one-file formats) or folder; default: a new folder under
            ``Settings.export_root``. Nothing is left there when the export fails.
        include_identifiers:
            Print the patient's identifiers in PDF/HTML/JSON (de-identified by default;
            DICOM objects always carry the source study's patient module).

        Returns ``export_path``, ``format``, ``size``, ``sha256``, ``files`` and what the
        session lacked (``missing``). Errors: ``EXPORT_FAILED`` with the reason.
        """
        from engine.export.service import export_study

        return export_study(self, session_id, format, include_images, include_report, include_annotations,
                            include_measurements, template, output_path, include_identifiers, institution)

    def get_visualization(self, session_id: str, image_id: str | None = None, include_annotations: bool = True,
                          include_segmentation: bool = True, include_measurements: bool = True,
                          output_path: str | Path | None = None, max_side: int | None = None) -> dict:
        """The composited view (image + chosen layers) as a PNG, with the list of layers."""
        from engine.export.service import get_visualization

        return get_visualization(self, session_id, image_id, include_annotations, include_segmentation,
                                 include_measurements, output_path, max_side)

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


def _annotation(row: dict) -> dict:
    """The public form of an annotation row."""
    return {"annotation_id": row["id"], "image_id": row["image_id"], "type": row["type"],
            "coordinates": row["coordinates"], "label": row["label"], "confidence": row["confidence"],
            "source": row["source"], "notes": row["notes"], "layer": row["layer"], "style": row["style"],
            "analysis_id": row["analysis_id"], "created_at": row["created_at"], "updated_at": row["updated_at"]}


def _square_box(bounds: list[int], rows: int, columns: int) -> list[int]:
    """The smallest square around ``bounds`` (inclusive), moved/clipped into the image."""
    x1, y1, x2, y2 = bounds
    side = min(max(x2 - x1, y2 - y1) + 1, rows, columns)
    cx, cy = (x1 + x2 + 1) / 2, (y1 + y2 + 1) / 2
    left = int(min(max(round(cx - side / 2), 0), columns - side))
    top = int(min(max(round(cy - side / 2), 0), rows - side))
    return [left, top, left + side - 1, top + side - 1]


def _crop(decoded: DecodedImage, box: list[int]) -> DecodedImage:
    """A decoded image restricted to ``box`` (inclusive), for analyses of a region."""
    x1, y1, x2, y2 = box
    window = (slice(y1, y2 + 1), slice(x1, x2 + 1))
    return replace(decoded, raw=decoded.raw[window], pixels=decoded.pixels[window],
                   rows=y2 - y1 + 1, columns=x2 - x1 + 1)


def _jsonable(value: Any) -> Any:
    """Numpy scalars/arrays to plain JSON types (results cross process boundaries)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
