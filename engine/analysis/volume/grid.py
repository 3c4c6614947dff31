"""A coarse working grid for connectivity on large volumes, and the way back to full resolution.

Connected-component labelling, hole filling and morphology cost time in proportion to
the voxels they visit, so :mod:`engine.analysis.volume.anatomy` runs them on a grid
pooled by whole-voxel block factors (about :data:`TARGET_VOXEL_MM` voxels, at most
:data:`MAX_COARSE_VOXELS`), then paints each mask back into one full-resolution label
volume with :func:`paint`: a mask's eroded inside is painted whole (holes filled), and
only the band around its boundary is decided by a full-resolution threshold, so edges
stay sharp.

Everything at full resolution runs one slab (one coarse slice) at a time: no temporary
the size of the volume is ever allocated, so memory stays near the input plus the
uint8 label volume, and the work stays in cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

#: Side of a coarse voxel to aim for (mm): finer than any structure segmented here.
TARGET_VOXEL_MM = 2.0
#: Most voxels the coarse grid may hold (bounds the labelling's time and memory).
MAX_COARSE_VOXELS = 4_000_000

#: 6-connectivity in 3D, and the in-plane (per slice) cross used for 2D hole filling.
CONNECT_6 = ndi.generate_binary_structure(3, 1)
SLICE_CROSS = np.zeros((3, 3, 3), dtype=bool)
SLICE_CROSS[1] = ndi.generate_binary_structure(2, 1)


def block_factors(shape: tuple[int, int, int], spacing_zyx: tuple[float, float, float]) -> tuple[int, int, int]:
    """Whole-voxel pooling factors ``(fz, fy, fx)`` giving about :data:`TARGET_VOXEL_MM` voxels."""
    physical = float(np.prod(shape)) * float(np.prod(spacing_zyx))
    target = max(TARGET_VOXEL_MM, (physical / MAX_COARSE_VOXELS) ** (1.0 / 3.0))
    factors = [max(1, min(size, round(target / step))) for size, step in zip(shape, spacing_zyx, strict=True)]
    # Rounding may leave the grid a little over the bound: coarsen the finest axis until it fits.
    while math.prod(s // f for s, f in zip(shape, factors, strict=True)) > MAX_COARSE_VOXELS:
        axis = min(range(3), key=lambda a: factors[a] * spacing_zyx[a] if factors[a] < shape[a] else math.inf)
        factors[axis] += 1
    return factors[0], factors[1], factors[2]


def coarse_shape(shape: tuple[int, int, int], factors: tuple[int, int, int]) -> tuple[int, int, int]:
    """The coarse grid's shape: whole blocks only (a remainder joins the last block, see :func:`slab`)."""
    z, y, x = (s // f for s, f in zip(shape, factors, strict=True))
    return z, y, x


def slab(k: int, depth: int, fz: int, coarse_depth: int) -> slice:
    """Full-resolution slices of coarse slice ``k`` (the last one takes the remainder)."""
    return slice(k * fz, depth if k == coarse_depth - 1 else (k + 1) * fz)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice] | None:
    """The box holding every set voxel of ``mask``, grown by ``margin`` (clipped); None when empty."""
    boxes = ndi.find_objects(mask.view(np.uint8) if mask.dtype == np.bool_ else mask.astype(np.uint8))
    if not boxes:
        return None
    return tuple(slice(max(0, b.start - margin), min(n, b.stop + margin))  # type: ignore[return-value]
                 for b, n in zip(boxes[0], mask.shape, strict=True))


def within_box(mask: np.ndarray, operation: Callable[[np.ndarray], np.ndarray], margin: int = 2) -> np.ndarray:
    """``operation(mask)`` computed on the mask's bounding box only (grown by ``margin``)."""
    box = bounding_box(mask, margin)
    out = np.zeros(mask.shape, dtype=bool)
    if box is not None:
        out[box] = operation(mask[box])
    return out


def pool(hu: np.ndarray, factors: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Block means and block maxima (float32) of ``hu``, one slab at a time.

    A remainder short of a whole block is left out of the pooling (it follows its
    neighbouring block when painted back).
    """
    fz, fy, fx = factors
    z, y, x = coarse_shape(hu.shape, factors)
    mean = np.empty((z, y, x), dtype=np.float32)
    peak = np.empty((z, y, x), dtype=np.float32)
    scale = np.float32(1.0 / math.prod(factors))
    for k in range(z):
        # Slices first (contiguous planes), then rows, then the short column blocks.
        block = np.asarray(hu[k * fz: (k + 1) * fz, : y * fy, : x * fx], dtype=np.float32)
        total = block.sum(axis=0, dtype=np.float32).reshape(y, fy, x * fx).sum(axis=1)
        mean[k] = total.reshape(y, x, fx).sum(axis=2) * scale
        peak[k] = block.max(axis=0).reshape(y, fy, x * fx).max(axis=1).reshape(y, x, fx).max(axis=2)
    return mean, peak


def _upsample_plane(plane: np.ndarray, fy: int, fx: int, rows: int, cols: int) -> np.ndarray:
    """A coarse 2D array at full in-plane size (nearest; the remainder copies the edge)."""
    out = np.repeat(np.repeat(plane, fy, axis=0), fx, axis=1)
    return np.pad(out, ((0, rows - out.shape[0]), (0, cols - out.shape[1])), mode="edge")


def paint(labels: np.ndarray, coarse: np.ndarray, factors: tuple[int, int, int], hu: np.ndarray,
          threshold: Callable[[np.ndarray], np.ndarray], value: int) -> None:
    """Paint ``value`` into ``labels`` (uint8, full resolution) where the coarse mask is.

    The coarse mask's eroded inside is painted whole; in the band around its boundary
    (one coarse voxel either side) only the voxels passing ``threshold(hu)`` are.
    With factors (1, 1, 1) the mask is painted as it is.
    """
    depth, rows, cols = hu.shape
    fz, fy, fx = factors
    if factors == (1, 1, 1):
        labels[coarse] = value
        return
    box = bounding_box(coarse, margin=2)
    if box is None:
        return
    # Three states per coarse voxel: 0 outside, 1 boundary band, 2 inside.
    state = np.zeros(coarse.shape, dtype=np.uint8)
    state[box] = ndi.binary_dilation(coarse[box], CONNECT_6)
    state[box] += ndi.binary_erosion(coarse[box], CONNECT_6)
    zs, ys, xs = bounding_box(state)  # type: ignore[misc]
    # The in-plane box at full resolution (to the volume's edge when the box reaches the last block).
    row_stop = rows if ys.stop == coarse.shape[1] else ys.stop * fy
    col_stop = cols if xs.stop == coarse.shape[2] else xs.stop * fx
    for k in range(zs.start, zs.stop):
        plane = state[k, ys, xs]
        if not plane.any():
            continue
        full = _upsample_plane(plane, fy, fx, row_stop - ys.start * fy, col_stop - xs.start * fx)
        window = (slab(k, depth, fz, coarse.shape[0]), slice(ys.start * fy, row_stop),
                  slice(xs.start * fx, col_stop))
        inside = (full == 2) | ((full == 1) & threshold(hu[window]))
        np.copyto(labels[window], np.uint8(value), where=inside)
