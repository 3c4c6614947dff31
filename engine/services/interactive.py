"""Click-to-segment: prompts to candidate masks, the SAM image embedding cached encrypted."""

from __future__ import annotations

import logging
import threading
from typing import Any

from engine.analysis.measurements import area as mask_area
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.masks import encode_rle, mask_bbox
from engine.imaging.regions import parse_region
from engine.inference.registry import ModelRegistry
from engine.services.annotations import AnnotationService
from engine.services.images import ImageService
from engine.store import BlobStore, Store
from engine.store.blobs import scoped_blob_id

log = logging.getLogger(__name__)


class InteractiveService:
    """Interactive segmentation of session images; the segmenter is made on first use."""

    def __init__(self, store: Store, models: ModelRegistry, images: ImageService, annotations: AnnotationService,
                 embedding_blobs: BlobStore) -> None:
        self.store, self.models, self.images, self.annotations = store, models, images, annotations
        self.embedding_blobs = embedding_blobs
        self._segmenter = None
        self._lock = threading.Lock()

    @property
    def segmenter(self):  # noqa: ANN201 - engine.analysis.interactive.InteractiveSegmenter
        """The interactive segmenter (backend chosen by the pack; embeddings cached)."""
        with self._lock:
            if self._segmenter is None:
                from engine.analysis.interactive import InteractiveSegmenter

                self._segmenter = InteractiveSegmenter(self.models, cache_get=self.cached_embedding,
                                                       cache_put=self.keep_embedding)
            return self._segmenter

    def segment_interactive(self, session_id: str, image_id: str | None = None, *,
                            points: list[list[float]] | None = None, labels: list[int] | None = None,
                            box: list[float] | None = None, region: dict | None = None,
                            store: bool = True) -> dict:
        """Candidate masks for a prompt (see ``Engine.segment_interactive``)."""
        from engine.analysis.interactive import polygon_to_prompt

        image_id = image_id or self.images.current_image_id(session_id)
        _, decoded = self.images.decoded_image(session_id, image_id)
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
        out: dict[str, Any] = {"session_id": session_id, "image_id": image_id, "backend": result["backend"],
                               "model": result.get("model"), "model_trained": result.get("model_trained"),
                               "masks": candidates, "best": int(result["best"]),
                               "timings_ms": result.get("timings_ms", {})}
        if store:
            best = candidates[out["best"]]
            out["mask_id"] = self.store.add_masks(session_id, image_id, [{"label": "interactive", **best}],
                                                  source="interactive",
                                                  model_id=(out["model"] or {}).get("id"))[0]  # SAM's; classical: None
        return out

    def accept_mask(self, session_id: str, mask_id: str, label: str = "", notes: str | None = None) -> dict:
        """Turn a stored interactive mask into a user annotation."""
        mask = self.store.get_mask(session_id, mask_id)
        return self.annotations.add(session_id, mask["image_id"], "mask", mask["rle"], label=label,
                                    notes=notes, source="user", layer="user_masks")

    def forget(self, image_ids: list[str]) -> None:
        """Drop what this process holds in memory of deleted images. Their encrypted embeddings
        on disk are erased with the session (the store's erasure journal), under any encoder."""
        for image_id in image_ids:
            if self._segmenter is not None:
                self._segmenter.clear(image_id)

    def cached_embedding(self, key: str) -> bytes | None:
        """A SAM image embedding persisted encrypted, so a restart does not re-encode."""
        blob_id = _blob_id(key)
        if not self.embedding_blobs.path_for(blob_id).exists():
            return None
        try:
            return self.embedding_blobs.read_bytes(blob_id)
        except MedVisionError:
            log.warning("a cached image embedding failed its integrity check; recomputing it")
            self.embedding_blobs.delete(blob_id)
            return None

    def keep_embedding(self, key: str, data: bytes) -> None:
        """Persist an embedding; a cache, so failing to keep it must not fail the click."""
        try:
            self.embedding_blobs.write_bytes(_blob_id(key), data)
        except MedVisionError as exc:
            log.warning("could not persist an image embedding: %s", exc.code.value)


def _blob_id(key: str) -> str:
    """``image_id:encoder_sha256`` -> a blob id scoped to the image, so erasing the image finds it."""
    image_id, _, encoder = key.rpartition(":")
    return scoped_blob_id(image_id, encoder)
