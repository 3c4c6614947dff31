"""Region analysis: what is in the area a user or an agent selected, kept as an AI annotation."""

from __future__ import annotations

import time
from typing import Any

from engine.analysis import region as region_facts
from engine.analysis.anatomy import locate, midline_x
from engine.analysis.classify import classify as run_classifier
from engine.analysis.measurements import area as mask_area
from engine.analysis.measurements import measure_mask
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
from engine.vocabulary import DISCLAIMER, UNTRAINED_BANNER


class RegionService:
    """Analyses a selected region with the actions asked for."""

    def __init__(self, store: Store, models: ModelRegistry, images: ImageService, analysis: AnalysisService,
                 interactive: InteractiveService, similar: SimilarCaseService, annotations: AnnotationService) -> None:
        self.store, self.models, self.images = store, models, images
        self.analysis, self.interactive, self.similar = analysis, interactive, similar
        self.annotations = annotations

    def analyze_selected_region(self, session_id: str, region: dict, question: str | None = None,
                                actions: list[str] | tuple[str, ...] = ("describe",),
                                image_id: str | None = None, top_k: int = 5) -> dict:
        """See ``Engine.analyze_selected_region``."""
        started = time.perf_counter()
        actions = list(actions or ["describe"])
        unknown = [a for a in actions if a not in region_facts.ACTIONS]
        if unknown:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"unknown action(s) {', '.join(map(str, unknown))}; use {', '.join(region_facts.ACTIONS)}")
        image_id = image_id or self.images.current_image_id(session_id)
        _, decoded = self.images.decoded_image(session_id, image_id)
        parsed = parse_region(region, decoded.rows, decoded.columns)
        mask = region_mask(parsed, decoded.rows, decoded.columns)
        spacing, spacing_source = decoded.pixel_spacing_mm, decoded.spacing_source
        timings: dict[str, float] = {}

        def lap(name: str, since: float) -> float:
            now = time.perf_counter()
            timings[name] = round((now - since) * 1000, 2)
            return now

        wants_anatomy = {"describe", "compare"} & set(actions)
        organs = self.analysis.organ_masks(session_id, image_id, run=bool(wants_anatomy)) if wants_anatomy else None
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
            annotation = self.annotations.add_row(
                session_id, image_id, target_type, coordinates, label=question or "region analysis",
                confidence=confidence or None, source="ai", notes=sections.get("description"),
                layer="ai_regions", analysis_id=analysis_id)
            result["annotation_id"] = annotation["id"]
            result["timings_ms"] = timings | {"total": round((time.perf_counter() - started) * 1000, 2)}
            stored = self.store.add_analysis(session_id, image_id, "region", jsonable(result), analysis_id=analysis_id)
            self.store.add_interaction(session_id, "region_select",
                                       {"analysis_id": analysis_id, "region": parsed.to_dict(), "actions": actions},
                                       image_id)
        result["analysis_id"] = stored["id"]
        return jsonable(result)
