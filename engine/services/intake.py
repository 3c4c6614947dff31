"""A file into a session: stored through the image service, analysed on arrival when its type has a pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.imaging.records import has_auto_analysis
from engine.services.analysis import AnalysisService
from engine.services.images import ImageService, image_summary


class ImageIntake:
    """``add_image_to_session``: the same arrival rule as the DICOM node's (:func:`has_auto_analysis`)."""

    def __init__(self, images: ImageService, analysis: AnalysisService) -> None:
        self.images, self.analysis = images, analysis

    def add_image_to_session(self, session_id: str, image_path: str | Path, image_type: str | None = None,
                             auto_analyze: bool = True, analysis_config: dict[str, Any] | None = None,
                             frame: int = 0) -> dict:
        """Decode an image file, store it encrypted in the session, optionally analyse it."""
        added = self.images.add_file(session_id, image_path, image_type, frame)
        image, decoded = added["image"], added["decoded"]
        result = {
            "session_id": session_id,
            "image_id": image["id"],
            "type": image["type"],
            "type_source": image["type_source"],
            "type_reason": decoded.type_reason,
            "image": image_summary(image),
            "quality_warnings": added["quality"]["warnings"],
            "timings_ms": added["timings_ms"],
            "auto_analysis": None,
        }
        if auto_analyze:
            config = dict(analysis_config or {"preset": "quick"})
            if has_auto_analysis(image["type"]) or config.get("force"):
                result["auto_analysis"] = self.analysis.analyze_image(session_id, image["id"], **config)
            else:
                result["auto_analysis"] = {
                    "status": "skipped",
                    "reason": f"no automatic analysis for {image['type']} images in this model pack",
                }
        return result
