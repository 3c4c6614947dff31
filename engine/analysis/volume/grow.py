"""3D click-to-segment: seeded region growing inside an HU window, bounded in size.

:func:`grow_region` keeps the voxels connected to the seed (6- or 26-connectivity) whose
HU lies in ``[lo, hi]``. It labels a box around the seed that doubles until the region
no longer touches the box's inner faces, so a small lesion costs a small box, and the
whole volume is never labelled for it. When the region would pass ``max_voxels`` it is
cut to the largest box around the seed that keeps it within the bound (``truncated``),
so a click in the air around the patient cannot take the whole volume.

Results are immutable values (:class:`GrowResult`, the mask read-only and cropped to its
box); undo is the caller dropping the last one, and :class:`GrowStack` is such a stack.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from engine.analysis.volume.roi import RoiStats, check_volume, masked_stats
from engine.errors import ErrorCode, MedVisionError

METHOD = "seeded_region_growing_hu_window"
#: Default bound on a grown region (voxels): 512 x 512 x 40, about a tenth of a clinical CT.
DEFAULT_MAX_VOXELS = 10_000_000
#: Half-side of the first box labelled around the seed (voxels).
FIRST_BOX_RADIUS = 16


@dataclass(frozen=True)
class GrowResult:
    """One grown region: the mask cropped to its box (read-only), where that box sits, and its statistics."""

    method: str
    seed_xyz: tuple[int, int, int]
    window_hu: tuple[float, float]
    connectivity: int
    max_voxels: int
    truncated: bool
    offset_zyx: tuple[int, int, int]
    mask: np.ndarray = field(repr=False)   # bool, the region's bounding box
    volume_shape: tuple[int, int, int]
    stats: RoiStats

    def full_mask(self) -> np.ndarray:
        """The region as a bool mask of the whole volume."""
        out = np.zeros(self.volume_shape, dtype=bool)
        z, y, x = self.offset_zyx
        dz, dy, dx = self.mask.shape
        out[z: z + dz, y: y + dy, x: x + dx] = self.mask
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (the box, not the voxels)."""
        z, y, x = self.offset_zyx
        dz, dy, dx = self.mask.shape
        return {"method": self.method, "seed": list(self.seed_xyz), "window_hu": list(self.window_hu),
                "connectivity": self.connectivity, "max_voxels": self.max_voxels, "truncated": self.truncated,
                "box": [x, y, z, x + dx - 1, y + dy - 1, z + dz - 1], "stats": self.stats.to_dict()}


@dataclass(frozen=True)
class GrowStack:
    """Grown regions in the order they were made; :meth:`undo` drops the last (a new stack)."""

    results: tuple[GrowResult, ...] = ()

    def push(self, result: GrowResult) -> GrowStack:
        return GrowStack((*self.results, result))

    def undo(self) -> GrowStack:
        return GrowStack(self.results[:-1])

    def union(self, shape: tuple[int, int, int]) -> np.ndarray:
        """Every region of the stack as one bool mask of ``shape``."""
        out = np.zeros(shape, dtype=bool)
        for result in self.results:
            out |= result.full_mask()
        return out


def _bad(message: str, **details: Any) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_ARGUMENT, message, **details)


def _seed(seed_xyz: Sequence[Any], shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if not isinstance(seed_xyz, Sequence) or isinstance(seed_xyz, str) or len(seed_xyz) != 3:
        raise MedVisionError(ErrorCode.INVALID_REGION, f"seed must be [x, y, z] voxel indices, not {seed_xyz!r}")
    out = []
    for value, size, name in zip(reversed(seed_xyz), shape, ("z", "y", "x"), strict=True):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(float(value)) or not 0 <= round(float(value)) < size:
            raise MedVisionError(ErrorCode.INVALID_REGION,
                                 f"seed {name}={value!r} is outside the volume (0..{size - 1})")
        out.append(int(round(float(value))))
    return out[0], out[1], out[2]


def _box(seed: tuple[int, int, int], radius: int, shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    return tuple(slice(max(0, c - radius), min(n, c + radius + 1))  # type: ignore[return-value]
                 for c, n in zip(seed, shape, strict=True))


def _component(inside: np.ndarray, seed: tuple[int, int, int], box: tuple[slice, slice, slice],
               structure: np.ndarray) -> np.ndarray:
    """The seed's connected component within ``box`` (a bool array of the box)."""
    labels, _ = ndi.label(inside[box], structure)
    local = tuple(c - b.start for c, b in zip(seed, box, strict=True))
    return labels == labels[local]


def _touches_inner_face(region: np.ndarray, box: tuple[slice, slice, slice], shape: tuple[int, int, int]) -> bool:
    for axis, (b, n) in enumerate(zip(box, shape, strict=True)):
        if b.start > 0 and np.take(region, 0, axis=axis).any():
            return True
        if b.stop < n and np.take(region, -1, axis=axis).any():
            return True
    return False


def grow_region(hu: np.ndarray, spacing_zyx: Sequence[float], seed_xyz: Sequence[Any], lo: float, hi: float,
                connectivity: int = 6, max_voxels: int = DEFAULT_MAX_VOXELS) -> GrowResult:
    """Grow from ``seed_xyz`` (voxel ``x, y, z``) through voxels with ``lo <= HU <= hi``.

    Errors: ``INVALID_REGION`` for a seed off the volume; ``INVALID_ARGUMENT`` for a bad
    window, connectivity or bound, or a seed whose own HU is outside the window.
    """
    hu, spacing = check_volume(hu, spacing_zyx)
    seed = _seed(seed_xyz, hu.shape)
    if not (isinstance(lo, numbers.Real) and isinstance(hi, numbers.Real) and not isinstance(lo, bool)
            and not isinstance(hi, bool) and math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise _bad(f"the HU window must be two finite numbers lo <= hi, not [{lo!r}, {hi!r}]")
    if connectivity not in (6, 26):
        raise _bad(f"connectivity must be 6 or 26, not {connectivity!r}")
    if isinstance(max_voxels, bool) or not isinstance(max_voxels, numbers.Integral) or max_voxels < 1:
        raise _bad(f"max_voxels must be a positive whole number, not {max_voxels!r}")
    seed_hu = float(hu[seed])
    if not lo <= seed_hu <= hi:
        raise _bad(f"the seed's HU {seed_hu:g} is outside the window [{lo:g}, {hi:g}]", seed_hu=seed_hu)
    structure = ndi.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    inside = np.zeros(hu.shape, dtype=bool)   # filled lazily, box by box (never thresholds the whole volume twice)
    done = np.zeros(hu.shape, dtype=bool)

    def region_in(radius: int) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        box = _box(seed, radius, hu.shape)
        todo = ~done[box]
        if todo.any():
            values = hu[box]
            inside[box] = np.where(todo, (values >= lo) & (values <= hi), inside[box])
            done[box] = True
        return box, _component(inside, seed, box, structure)

    radius, truncated = FIRST_BOX_RADIUS, False
    last_ok = 0
    while True:
        box, region = region_in(radius)
        count = int(np.count_nonzero(region))
        if count > max_voxels:
            truncated = True
            break
        complete = not _touches_inner_face(region, box, hu.shape)
        if complete:
            break
        last_ok = radius
        radius *= 2
    if truncated:
        # The largest box around the seed whose region keeps within the bound (binary search on its radius).
        low, high = last_ok, radius
        box, region = region_in(low)
        while high - low > 1:
            middle = (low + high) // 2
            candidate_box, candidate = region_in(middle)
            if np.count_nonzero(candidate) <= max_voxels:
                low, box, region = middle, candidate_box, candidate
            else:
                high = middle
    # Crop to the region's own bounding box.
    nz = [np.flatnonzero(region.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    crop = tuple(slice(int(n[0]), int(n[-1]) + 1) for n in nz)
    mask = np.ascontiguousarray(region[crop])
    mask.flags.writeable = False
    offset = tuple(b.start + c.start for b, c in zip(box, crop, strict=True))
    block = hu[tuple(slice(o, o + s) for o, s in zip(offset, mask.shape, strict=True))]
    stats = masked_stats(block, mask, "grown_region", spacing, offset[0])
    return GrowResult(METHOD, (seed[2], seed[1], seed[0]), (float(lo), float(hi)), connectivity, int(max_voxels),
                      truncated, offset, mask, hu.shape, stats)  # type: ignore[arg-type]
