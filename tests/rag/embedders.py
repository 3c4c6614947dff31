"""A real, deterministic image embedder for the reference-library tests (no model needed).

The vector is the displayed image (window, MONOCHROME1 inversion and all) shrunk to a
24x32 thumbnail by area averaging, centred and L2-normalised: 768 values, like
RAD-DINO's. Lossless twins of one radiograph embed identically, lossy twins almost so,
and different anatomy far apart - which is what the tests need to be honest.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.imaging import DecodedImage

THUMBNAIL_ROWS, THUMBNAIL_COLUMNS = 24, 32
DIMENSION = THUMBNAIL_ROWS * THUMBNAIL_COLUMNS
EMBEDDER_ID = "test-thumbnail-24x32-v1"


def thumbnail_embedder(image: DecodedImage) -> np.ndarray:
    """``(768,)`` float32 unit vector from the displayed frame (zeros for a flat image)."""
    display = image.display()
    if display.ndim == 3:
        display = display.mean(axis=2)
    thumbnail = Image.fromarray(np.asarray(display, dtype=np.uint8)).resize(
        (THUMBNAIL_COLUMNS, THUMBNAIL_ROWS), Image.Resampling.BOX
    )
    vector = np.asarray(thumbnail, dtype=np.float32).reshape(-1)
    vector -= vector.mean()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector
