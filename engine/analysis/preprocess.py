"""torchxrayvision's preprocessing, reimplemented in numpy (the runtime has no torch).

The reference chain is ``xrv.utils.read_xray_dcm`` (or ``xrv.utils.normalize`` for
8/16-bit PNG/JPEG) -> ``XRayCenterCrop`` -> ``XRayResizer(224)``; the tests compare
this module with it value for value.

``XRayResizer`` calls ``skimage.transform.resize(mode="constant",
preserve_range=True)``: a Gaussian anti-aliasing blur (sigma = (s - 1) / 2 for a
downscale factor s, truncated at 4 sigma, zeros outside) followed by a linear
``ndimage.zoom`` sampling pixel centres (``grid_mode``), then a clip to the input range.
Both steps are linear and separable, so the whole resize of a square image X is
``A @ X @ A.T`` with one precomputed (out x in) matrix ``A = zoom @ blur``: two BLAS
calls instead of a 2-D filter over the full-resolution image.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from engine.imaging import DecodedImage

log = logging.getLogger(__name__)

XRV_RANGE = 1024.0
_TRUNCATE = 4.0


def xrv_normalize(image: np.ndarray, max_value: float) -> np.ndarray:
    """Scale ``[0, max_value]`` to ``[-1024, 1024]`` (``xrv.utils.normalize``), as float32."""
    return (2.0 * (image.astype(np.float32) / np.float32(max_value)) - 1.0) * np.float32(XRV_RANGE)


def xrv_input(decoded: DecodedImage) -> np.ndarray:
    """The 2-D float32 image torchxrayvision models expect, before crop and resize.

    DICOM follows ``read_xray_dcm`` (no VOI LUT): stored values, MONOCHROME1 inverted
    against ``2**BitsStored - 1``, normalised by that maximum. PNG/JPEG follow the
    torchxrayvision README: the mean of the colour channels, normalised by 255 (or
    65535 for 16-bit PNG).
    """
    return _normalised(decoded)


def _normalised(decoded: DecodedImage, region: slice | tuple = ()) -> np.ndarray:
    """``xrv_input`` of ``decoded`` (or of a crop of it), in one fused affine pass."""
    if decoded.is_color:
        # RGB scaled to 0..255 (palette images keep indices in ``raw``, RGB in ``pixels``).
        return xrv_normalize(decoded.pixels[region].mean(axis=2, dtype=np.float32), 255.0)
    raw = decoded.raw[region]
    max_value = float(decoded.max_value)
    peak = float(decoded.raw.max())
    if peak > max_value:
        # xrv raises here; a header that understates BitsStored should not block a read.
        log.warning("stored values exceed BitsStored; normalising by the image maximum")
        max_value = peak
    # normalize(v) = (2 v / max - 1) * 1024, with v = max - raw for MONOCHROME1.
    scale = np.float32(2.0 * XRV_RANGE / max_value)
    out = np.multiply(raw, -scale if decoded.invert else scale, dtype=np.float32)
    out += np.float32(XRV_RANGE if decoded.invert else -XRV_RANGE)
    return out


def crop_box(rows: int, columns: int) -> tuple[slice, slice]:
    """The square centre crop of ``XRayCenterCrop`` (offsets computed as it does)."""
    size = min(rows, columns)
    top = rows // 2 - size // 2
    left = columns // 2 - size // 2
    return slice(top, top + size), slice(left, left + size)


def center_crop(image: np.ndarray) -> np.ndarray:
    """Square crop of rows x columns (a trailing channel axis is kept), as ``XRayCenterCrop``."""
    return image[crop_box(*image.shape[:2])]


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 / (sigma * sigma) * x * x)
    return kernel / kernel.sum()


@lru_cache(maxsize=16)
def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The (out x in) matrix of skimage's anti-aliased linear resize along one axis.

    Row ``i`` samples the blurred signal at ``(i + 0.5) * factor - 0.5`` by linear
    interpolation; the blurred value at ``k`` is the Gaussian-weighted sum of the
    inputs around ``k``. Inputs outside ``[0, in_size)`` count as 0, as skimage's
    ``constant`` mode does.
    """
    factor = in_size / out_size
    sigma = max(0.0, (factor - 1.0) / 2.0)
    kernel = _gaussian_kernel(sigma) if sigma > 1e-15 else np.ones(1)
    radius = kernel.size // 2
    matrix = np.zeros((out_size, in_size))
    source = (np.arange(out_size) + 0.5) * factor - 0.5
    below = np.floor(source).astype(int)
    for row, (index, t) in enumerate(zip(below, source - below, strict=True)):
        for centre, weight in ((index, 1.0 - t), (index + 1, t)):
            if not 0 <= centre < in_size or weight == 0.0:
                continue
            lo, hi = centre - radius, centre + radius + 1
            k_lo, k_hi = max(0, -lo), kernel.size - max(0, hi - in_size)
            matrix[row, max(lo, 0) : min(hi, in_size)] += weight * kernel[k_lo:k_hi]
    return np.ascontiguousarray(matrix.astype(np.float32))


@lru_cache(maxsize=16)
def _sparse_resize_matrix(in_size: int, out_size: int) -> sparse.csr_matrix:
    """:func:`resize_matrix` in CSR form: each row holds only its Gaussian window's inputs."""
    return sparse.csr_matrix(resize_matrix(in_size, out_size))


def xrv_resize(square: np.ndarray, size: int) -> np.ndarray:
    """``XRayResizer(size)`` for a square 2-D float32 image.

    ``M @ square @ M.T`` with the banded resize matrix ``M`` kept sparse: a few dozen
    multiply-adds per output value instead of a dense product over the whole image.
    """
    matrix = _sparse_resize_matrix(square.shape[0], size)
    rows = matrix @ np.asarray(square, dtype=np.float32)
    out = np.ascontiguousarray((matrix @ rows.T).T, dtype=np.float32)
    low, high = float(square.min()), float(square.max())
    if not low <= 0.0 <= high and float(out.min()) <= 0.0 <= float(out.max()):
        low, high = min(low, 0.0), max(high, 0.0)
    return np.clip(out, low, high, out=out)


def classifier_tensor(decoded: DecodedImage, resolution: int = 224) -> np.ndarray:
    """The ``(1, 1, resolution, resolution)`` float32 input of an xrv classifier."""
    square = _normalised(decoded, crop_box(decoded.rows, decoded.columns))
    return xrv_resize(square, resolution)[None, None]


def xrv_tensor(decoded: DecodedImage, resolution: int) -> np.ndarray:
    """The ``(1, 1, resolution, resolution)`` float32 input of any torchxrayvision model.

    ``read_xray_dcm``/``normalize`` -> ``XRayCenterCrop`` -> ``XRayResizer(resolution)``,
    the same chain as :func:`classifier_tensor` at another resolution (the ChestX-Det
    PSPNet works at 512). The crop it sees is :func:`crop_box` of the image.
    """
    square = _normalised(decoded, crop_box(decoded.rows, decoded.columns))
    return xrv_resize(square, resolution)[None, None]
