"""Words every layer shares, each defined once: image types, the disclaimer, the untrained banner."""

from __future__ import annotations

#: The image types a session image can have (detected from the file, or set by the user).
IMAGE_TYPES = ("CXR", "KUB", "CT", "MRI", "US", "EKG", "Other")

#: Said by every result, export and screen.
DISCLAIMER = "For research and education, not for diagnostic use."

#: Said by every result made with a model whose manifest entry has ``trained: false``.
UNTRAINED_BANNER = "Development models: untrained weights, output not meaningful."
