"""Interactive (click-to-segment) segmentation: a SAM-family model, or a classical fallback.

Two backends answer the same prompts (points labelled foreground/background, a box,
the previous click's low-resolution logits) in image pixel coordinates (origin top-left,
x right, y down) and return candidate masks of the image's size: ``sam``
(:mod:`~engine.analysis.interactive.sam`) and ``classical``
(:mod:`~engine.analysis.interactive.classical`). :mod:`~engine.analysis.interactive.prompt`
validates prompts; :mod:`~engine.analysis.interactive.segmenter` chooses the backend
and caches per-image work.

Both backends refuse a foreground point on the air around the body (``INVALID_REGION``,
"point on background"): the region would be the whole exposed field, or nothing.
"""

from __future__ import annotations

from engine.analysis.interactive.prompt import Prompt, polygon_to_prompt, validate_prompt
from engine.analysis.interactive.sam import decoder_prompt, rgb_display, sam_image_tensor
from engine.analysis.interactive.segmenter import BACKEND_ENV, BACKENDS, InteractiveSegmenter

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "InteractiveSegmenter",
    "Prompt",
    "decoder_prompt",
    "polygon_to_prompt",
    "rgb_display",
    "sam_image_tensor",
    "validate_prompt",
]
