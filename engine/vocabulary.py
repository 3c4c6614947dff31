"""Words every layer shares, each defined once: image types, the disclaimer, the untrained banner."""

from __future__ import annotations

#: The image types a session image can have (detected from the file, or set by the user).
IMAGE_TYPES = ("CXR", "KUB", "CT", "MRI", "US", "EKG", "Other")

#: Said by every result, export and screen.
DISCLAIMER = "For research and education, not for diagnostic use."

#: Said by every result made with a model whose manifest entry has ``trained: false``.
UNTRAINED_BANNER = "Development models: untrained weights, output not meaningful."

#: Why masks, boxes and heatmaps of untrained models start hidden (desktop layers, exports).
UNTRAINED_OVERLAYS_HIDDEN = ("Masks, boxes and heatmaps from untrained development models are hidden: "
                             "they are not meaningful.")

#: The first sentence of every text made from untrained models' outputs (report sections,
#: narrative, chat answers), so that no paragraph copied out of it can pass for a reading.
UNTRAINED_OUTPUTS = "These are outputs of untrained development models, not findings."


def qualified(text: str, trained: bool | None) -> str:
    """``text`` led by :data:`UNTRAINED_OUTPUTS` when its models are untrained (``trained is False``)."""
    if trained is not False or text.startswith(UNTRAINED_OUTPUTS):
        return text
    return f"{UNTRAINED_OUTPUTS} {text}".rstrip()
