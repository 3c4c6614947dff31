"""Region analysis: what is in the area a user or an agent selected, kept as an AI annotation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engine.analysis import region as region_facts
from engine.analysis.anatomy import locate, midline_x
from engine.analysis.classify import classify as run_classifier
from engine.analysis.lung_fields import locate_in_fields
from engine.analysis.measurements import area as mask_area
from engine.analysis.measurements import measure_mask
from engine.analysis.questions import compose_answer, guarded, parse_question
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.crops import crop, square_box
from engine.imaging.masks import decode_rle, encode_rle, mask_bbox
from engine.imaging.regions import mirror_mask, parse_region, region_mask
from engine.inference.registry import ModelRegistry
from engine.services.analysis import AnalysisService
from engine.services.annotations import AnnotationService
from engine.services.images import ImageService
from engine.services.interactive import InteractiveService
from engine.services.results import jsonable
from engine.services.similar import SimilarCaseService
from engine.store import Store, new_id
from engine.vocabulary import DISCLAIMER, UNTRAINED_BANNER, qualified


class RegionService:
    """Analyses a selected region with the actions asked for."""

    def __init__(self, store: Store, models: ModelRegistry, images: ImageService, analysis: AnalysisService,
                 interactive: InteractiveService, similar: SimilarCaseService, annotations: AnnotationService) -> None:
        self.store, self.models, self.images = store, models, images
        self.analysis, self.interactive, self.similar = analysis, interactive, similar
        self.annotations = annotations

    def analyze_selected_region(self, session_id: str, region: dict, question: str | None = None,
                                actions: list[str] | tuple[str, ...] = ("describe",),
                                image_id: str | None = None, top_k: int = 5, *, answer: bool = True,
                                check: Callable[[str, dict], list] | None = None) -> dict:
        """See ``Engine.analyze_selected_region``.

        ``answer``: answer the question (False where ``question`` is only a label for the
        annotation); ``check``: the narrative guard the answer goes through.
        """
        started = time.perf_counter()
        actions = list(actions or ["describe"])
        unknown = [a for a in actions if a not in region_facts.ACTIONS]
        if unknown:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"unknown action(s) {', '.join(map(str, unknown))}; use {', '.join(region_facts.ACTIONS)}")
        asked = parse_question(question) if answer and isinstance(question, str) and question.strip() else None
        actions += self._actions_for(asked, actions)
        image_id = image_id or self.images.current_image_id(session_id)
        image, decoded = self.images.decoded_image(session_id, image_id)
        parsed = parse_region(region, decoded.rows, decoded.columns)
        mask = region_mask(parsed, decoded.rows, decoded.columns)
        spacing, spacing_source = decoded.pixel_spacing_mm, decoded.spacing_source
        timings: dict[str, float] = {}

        def lap(name: str, since: float) -> float:
            now = time.perf_counter()
            timings[name] = round((now - since) * 1000, 2)
            return now

        wants_anatomy = {"describe", "compare"} & set(actions)
        organs, fields = None, None
        if wants_anatomy and self.analysis.organ_model_trained():
            organs = self.analysis.organ_masks(session_id, image_id, run=True)
        elif wants_anatomy and image["type"] == "CXR":
            fields = self.analysis.lung_fields(session_id, image_id)  # untrained organ masks are noise: unread
        if fields is not None:
            reason = ("the organ model is untrained" if self.models.entry("organ_seg") is not None
                      else "the model pack has no organ model")
            anatomy = locate_in_fields(mask, fields, reason=reason)
        else:
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
            segmentation = self.interactive.segment_interactive(session_id, image_id, region=parsed.to_dict(),
                                                                store=False)
            best = segmentation["masks"][segmentation["best"]]
            target, target_type = decode_rle(best["rle"]), "mask"
            sections["segmentation"] = segmentation
            mark = lap("segment", mark)
        if "measure" in actions:
            sections["measurements"] = measure_mask(target, spacing, spacing_source)
            mark = lap("measure", mark)
        if "classify" in actions:
            box = square_box(mask_bbox(target), decoded.rows, decoded.columns)
            sections["classification"] = run_classifier(crop(decoded, box), self.models, force=True) | {"crop": box}
            mark = lap("classify", mark)
        if "rag_search" in actions:
            x1, y1, x2, y2 = mask_bbox(target)
            sections["similar_cases"] = self.similar.similar(decoded, top_k, True, 0.0,
                                                             region=(slice(y1, y2 + 1), slice(x1, x2 + 1)))
            mark = lap("rag_search", mark)
        if "compare" in actions:
            axis, axis_source = ((fields.midline_x, fields.midline_source) if fields is not None
                                 else midline_x(organs, decoded.columns))
            comparison = region_facts.compare_contralateral(decoded, target, mirror_mask(target, axis), axis)
            sections["comparison"] = comparison | {"midline_source": axis_source}
            mark = lap("compare", mark)
        if "describe" in actions:
            top = (sections.get("classification") or {}).get("findings", [None])[0]
            sections["description"] = qualified(region_facts.describe_region({
                "region_type": parsed.type, "anatomy": anatomy, "area": info["area"],
                "comparison": sections.get("comparison"), "top_finding": top,
            }), (sections.get("classification") or {}).get("model_trained"))
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
        if asked is not None and asked["kind"] != "unknown":
            result.update(self._answer(session_id, image_id, decoded, asked, sections, analysis_id, check))
        coordinates = encode_rle(target) if target_type == "mask" else parsed.coordinates
        confidence = max((v.get("confidence") or 0.0 for k, v in summary.items() if k != "overall"), default=None)
        notes = "\n".join(filter(None, [sections.get("description"), (result.get("answer") or {}).get("text")]))
        with self.store.db.transaction():
            annotation = self.annotations.add_row(  # its notes carry the answer too
                session_id, image_id, target_type, coordinates, label=question or "region analysis",
                confidence=confidence or None, source="ai", notes=notes or None,
                layer="ai_regions", analysis_id=analysis_id)
            result["annotation_id"] = annotation["id"]
            result["timings_ms"] = timings | {"total": round((time.perf_counter() - started) * 1000, 2)}
            stored = self.store.add_analysis(session_id, image_id, "region", jsonable(result), analysis_id=analysis_id)
            self.store.add_interaction(session_id, "region_select",
                                       {"analysis_id": analysis_id, "region": parsed.to_dict(), "actions": actions},
                                       image_id)
        result["analysis_id"] = stored["id"]
        return jsonable(result)

    # -- questions ---------------------------------------------------------------------------------
    @staticmethod
    def _actions_for(parsed: dict | None, actions: list[str]) -> list[str]:
        """The actions a question needs beyond those asked: classify for a finding, measure for a size."""
        if parsed is None:
            return []
        needed = (["classify"] if parsed["labels"] else []) + (["measure"] if parsed["measurement"] else [])
        return [a for a in needed if a not in actions]

    def image_classification(self, session_id: str, image_id: str, decoded: Any = None,
                             threshold: float = 0.5) -> dict:
        """The classifier's output on the whole image: the latest stored one of the current classifier at
        ``threshold`` (``analysis_id`` names it), else computed now (``analysis_id`` None, not stored)."""
        entry = self.models.require("classify")
        stored = self.analysis.latest_result(session_id, image_id, ("analyze_image",)) or {}
        classification = stored.get("classification") or {}
        if classification.get("status") == "ok" and (classification.get("model") or {}).get("id") == entry.id \
                and classification.get("threshold") == threshold:
            return classification | {"analysis_id": stored["analysis_id"]}
        if decoded is None:
            _, decoded = self.images.decoded_image(session_id, image_id)
        return run_classifier(decoded, self.models, threshold=threshold, force=True) | {"analysis_id": None}

    def crop_classification(self, session_id: str, image_id: str, region: dict) -> dict:
        """The classifier's output on a region's square crop (as ``classify`` computes it; not stored)."""
        _, decoded = self.images.decoded_image(session_id, image_id)
        parsed = parse_region(region, decoded.rows, decoded.columns)
        box = square_box(mask_bbox(region_mask(parsed, decoded.rows, decoded.columns)), decoded.rows, decoded.columns)
        return run_classifier(crop(decoded, box), self.models, force=True) | {"crop": box}

    def _answer(self, session_id: str, image_id: str, decoded: Any, parsed: dict, sections: dict,
                analysis_id: str, check: Callable[[str, dict], list] | None) -> dict:
        """The ``answer`` section (and the whole image's ``image_classification`` it used)."""
        out: dict[str, Any] = {}
        crop_result, whole = sections.get("classification"), None
        if parsed["labels"] and crop_result is not None:
            whole = out["image_classification"] = self.image_classification(
                session_id, image_id, decoded, crop_result["threshold"])
        image_ref = (f"analyze_image analysis {whole['analysis_id']}" if whole and whole["analysis_id"]
                     else f"classify on the whole image, region analysis {analysis_id}")
        composed = compose_answer(
            parsed, crop=crop_result, image=whole,
            crop_ref=f"classify on the region crop {crop_result['crop']}, region analysis {analysis_id}"
            if crop_result else None, image_ref=image_ref,
            measurements=sections.get("measurements"), measurements_ref=f"measure, region analysis {analysis_id}",
            spacing_known=decoded.pixel_spacing_mm is not None, image_format=decoded.format)
        out["answer"] = guarded(composed, check)
        return out
