"""Real images for the region tests: pydicom-data's CR chest PA and pydicom's CT slice."""

from __future__ import annotations

import pytest
from pydicom.data import get_testdata_file

from engine.imaging import DecodedImage, decode_image


@pytest.fixture(scope="session")
def rg1() -> DecodedImage:
    """RG1_UNCR.dcm: a real CR chest PA (1955 x 1841, MONOCHROME1, no usable spacing)."""
    return decode_image(get_testdata_file("RG1_UNCR.dcm"))


@pytest.fixture(scope="session")
def ct_small() -> DecodedImage:
    """CT_small.dcm: a 128 x 128 CT slice in HU with PixelSpacing 0.661468 mm."""
    return decode_image(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="session")
def rg1_lung_masks(rg1: DecodedImage) -> dict:
    """Lung and mediastinum masks of the real RG1 film, from a threshold (no model needed).

    The smoothed display is split at Otsu's threshold; the two largest dark components
    are the lungs (the one on the image's left is the patient's right lung); the
    mediastinum is the strip between their medial edges over their common rows.
    """
    import numpy as np
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(rg1.display().astype(np.float32), 8)
    labels, _ = ndimage.label(smooth < threshold_otsu(smooth[::4, ::4]))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    first, second = (labels == k for k in np.argsort(sizes)[::-1][:2])
    right, left = (first, second) if np.nonzero(first)[1].mean() < np.nonzero(second)[1].mean() else (second, first)
    mediastinum = np.zeros_like(right)
    inner = slice(np.flatnonzero(right.any(axis=0))[-1] + 1, np.flatnonzero(left.any(axis=0))[0])
    rows = right.any(axis=1) & left.any(axis=1)
    mediastinum[np.ix_(rows, np.arange(rg1.columns)[inner])] = True
    return {"Right Lung": right, "Left Lung": left, "Mediastinum": mediastinum}
