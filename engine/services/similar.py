"""Similar cases: the encrypted reference library, searched by image embedding, merged with the classifier."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from engine.analysis.embedding import embed_image
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import DecodedImage
from engine.inference.registry import ModelRegistry
from engine.rag.fusion import merge_labels, suggested_prompt
from engine.services.analysis import AnalysisService
from engine.services.images import ImageService, image_summary
from engine.services.results import jsonable
from engine.store import Store
from engine.vocabulary import DISCLAIMER, UNTRAINED_BANNER

RAG_MODES = ("quick", "full", "rag_only")


class SimilarCaseService:
    """The reference library (opened on first use with the pack's embedder) and its searches."""

    def __init__(self, settings: Settings, store: Store, models: ModelRegistry, images: ImageService,
                 analysis: AnalysisService) -> None:
        self.settings, self.store, self.models = settings, store, models
        self.images, self.analysis = images, analysis
        self._library = None
        self._lock = threading.Lock()

    @property
    def library(self):  # noqa: ANN201 - engine.rag.ReferenceLibrary
        """The reference-case library, opened on first use with the pack's embedder."""
        with self._lock:
            if self._library is None:
                from engine.rag import ReferenceLibrary

                entry = self.models.require("embed")
                self._library = ReferenceLibrary(
                    self.settings.home, self.store.key, blob_key=self.store.data_key,
                    embedder=lambda decoded: embed_image(decoded, self.models)["vector"],
                    embedder_id=f"{entry.id}+sha256:{entry.spec['sha256']}",
                    dimension=int(entry.spec.get("output", {}).get("dimension", 768)),
                )
            return self._library

    def close(self) -> None:
        if self._library is not None:
            self._library.close()

    def build_rag_index(self, source: str = "custom", data_path: str | Path | None = None,
                        reports_csv: str | Path | None = None, rebuild: bool = False, progress=None) -> dict:  # noqa: ANN001
        """Build or extend the reference library from a CSV or a folder of images + reports CSV."""
        if data_path is None:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "data_path is required (a CSV or a folder)")
        return self.library.build(source=source, data_path=Path(data_path),
                                  reports_csv=Path(reports_csv) if reports_csv else None,
                                  progress=progress, rebuild=rebuild)

    def similar(self, decoded: DecodedImage, top_k: int, include_reports: bool, min_similarity: float,
                region: tuple[slice, slice] | None = None) -> dict:
        """The library's nearest cases to an image (or a region of it)."""
        embedding = embed_image(decoded, self.models, region=region)
        found = self.library.search(embedding["vector"], top_k=top_k, include_reports=include_reports,
                                    min_similarity=min_similarity)
        found["search_metadata"]["embedding_ms"] = round(sum(embedding["timings_ms"].values()), 2)
        return found | {"status": "ok", "model": embedding["model"], "model_trained": embedding["model_trained"]}

    def thumbnails(self, case_ids: list[str]) -> dict[str, bytes]:
        """PNG previews of reference cases by case id."""
        return self.library.thumbnails(case_ids)

    def search_similar_cases(self, session_id: str, image_id: str | None = None, top_k: int = 5,
                             include_reports: bool = True, min_similarity: float = 0.0) -> dict:
        """The reference cases most similar to an image, with similarity-weighted labels."""
        image_id = image_id or self.images.current_image_id(session_id)
        _, decoded = self.images.decoded_image(session_id, image_id)
        return {"session_id": session_id, "image_id": image_id} | self.similar(
            decoded, top_k, include_reports, min_similarity)

    def analyze_with_rag(self, session_id: str, image_id: str | None = None, mode: str = "quick",
                         top_k: int = 5) -> dict:
        """Classifier + similar cases (+ segmentation in ``full``) merged, with an LLM prompt."""
        if mode not in RAG_MODES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"mode must be one of {', '.join(RAG_MODES)}")
        started = time.perf_counter()
        image_id = image_id or self.images.current_image_id(session_id)
        image, decoded = self.images.decoded_image(session_id, image_id)
        stages: dict[str, float] = {}
        classification = segmentation = None
        if mode in ("quick", "full"):
            mark = time.perf_counter()
            analysis = self.analysis.analyze_image(session_id, image_id, classify=True, detect=False,
                                                   segment=mode == "full", generate_report=False)
            classification, segmentation = analysis.get("classification"), analysis.get("segmentation")
            stages["classify"] = analysis["timings_ms"].get("preprocess", 0) + analysis["timings_ms"].get("inference", 0)
            if segmentation:
                stages["segment"] = analysis["timings_ms"].get("segmentation", 0)
            stages["analyze_total"] = round((time.perf_counter() - mark) * 1000, 2)
        mark = time.perf_counter()
        similar = self.similar(decoded, top_k, True, 0.0)
        stages["rag_search"] = round((time.perf_counter() - mark) * 1000, 2)
        merged = merge_labels(classification, similar, top_k)
        used = [s for s in (classification, segmentation, similar) if s and s.get("status") == "ok"]
        trained = all(s["model_trained"] for s in used) if used else None
        result = {
            "session_id": session_id, "image_id": image_id, "mode": mode,
            "classification": classification, "segmentation": segmentation, "similar_cases": similar,
            "merged_labels": merged,
            "suggested_prompt": suggested_prompt(merged, segmentation, similar, image_summary(image), trained),
            "model_trained": trained, "disclaimer": DISCLAIMER,
        }
        if trained is False:
            result["banner"] = UNTRAINED_BANNER
        stages["total"] = round((time.perf_counter() - started) * 1000, 2)
        result["metadata"] = {"stages_ms": stages, "top_k": top_k}
        stored = self.store.add_analysis(session_id, image_id, "rag", jsonable(result))
        result["analysis_id"] = stored["id"]
        return jsonable(result)
