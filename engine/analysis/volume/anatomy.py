"""Anatomy segmentation of a CT volume that needs no training: body, lungs, airways, bone.

Method ``classical_hu_connectivity``: HU thresholds and 3D connectivity, run on a coarse
grid (:mod:`engine.analysis.volume.grid`, about 2 mm voxels) and refined at full
resolution along each boundary.

- **body**: HU > -500, opened once (detaches the table), the largest 3D component, holes
  filled slice by slice (so the lungs and bowel gas are inside the body).
- **airways**: a seed in the superior slices (an air tube of trachea size near the body's
  left-right centre), grown in 3D under a tight HU threshold; the loosest threshold of
  :data:`AIRWAY_THRESHOLDS` whose result neither exceeds :data:`AIRWAY_MAX_ML` nor more
  than doubles the previous one is kept (the leak check: parenchyma floods a loose grow).
  No seed (a scan below the thoracic inlet) gives an empty mask and says so.
- **lungs**: air (HU < -400) inside the body minus the airways, in components that touch
  neither side nor the front or back of the field of view; a component is lung when it holds
  at least :data:`LUNG_MIN_ML`, its median HU is in :data:`LUNG_MEDIAN_HU` and at most
  :data:`LUNG_MAX_GAS_SHARE` of it is below :data:`GAS_HU` (bowel gas is nearly pure air); vessels are filled in slice by slice. Left and right come from
  the patient's left-right axis of the affine (LPS: +x is the patient's left), never the
  array's direction: each component goes to the side holding most of it, and a component
  spanning the midline (lungs joined at the front) is cut at the midline plane.
- **bone**: HU > :data:`BONE_HU` inside the body, components under :data:`BONE_MIN_ML`
  removed, closed once and the marrow filled in slice by slice (cancellous bone is often below the cortex
  threshold).

Known limits: contrast-filled vessels and dense calcifications pass as bone; a
severely emphysematous lung (over a quarter below -950 HU) is taken for gas; the airway tree is the
trachea and the large bronchi the coarse grid resolves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from engine.analysis.volume import grid
from engine.errors import ErrorCode, MedVisionError

METHOD = "classical_hu_connectivity"
STRUCTURES = ("body", "lungs", "airways", "bone")
#: Label values, painted in this order (a later one wins where two meet).
LABELS = {"body": 1, "bone": 2, "lung_left": 3, "lung_right": 4, "airways": 5}

BODY_HU = -500.0
AIR_HU = -400.0
#: Median HU range of a lung component (normal lung is about -850; gas in bowel about -1000).
LUNG_MEDIAN_HU = (-950.0, -600.0)
LUNG_MIN_ML = 10.0
#: Share of a lung component's voxels that may be nearly pure gas (below GAS_HU): bowel gas is
#: mostly that, aerated lung hardly (a lung with more is severely emphysematous: a known limit).
GAS_HU = -950.0
LUNG_MAX_GAS_SHARE = 0.25
#: Airway grow thresholds, tightest first; the loosest that does not leak is kept.
AIRWAY_THRESHOLDS = (-975.0, -950.0, -925.0, -900.0)
AIRWAY_MAX_ML = 300.0
#: Trachea cross-section accepted for a seed (cm^2) and how far from the superior end to look (mm).
TRACHEA_AREA_CM2 = (1.0, 8.0)
SEED_SEARCH_MM = 40.0
#: The trachea runs at least this far down from its seed (mm).
AIRWAY_MIN_LENGTH_MM = 30.0
#: Bone threshold: the conventional lower bound of cancellous bone; 200-250 misses the marrow of
#: 3 mm slices (Dice 0.67 at 200 against 0.81 at 150 on the shared CT).
BONE_HU = 150.0
BONE_MIN_ML = 1.0


@dataclass(frozen=True)
class StructureResult:
    """One segmented structure: its size and whether the method found it."""

    name: str
    found: bool
    voxel_count: int
    volume_ml: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "found": self.found, "voxel_count": self.voxel_count,
                "volume_ml": self.volume_ml, "note": self.note}


@dataclass(frozen=True)
class AnatomyResult:
    """One uint8 label volume (read-only, the volume's shape) and each structure's size.

    Each voxel holds the most specific structure it belongs to (:data:`LABELS`: body 1,
    bone 2, lung_left 3, lung_right 4, airways 5; 0 outside); every structure lies inside
    the body, so :meth:`mask` ``("body")`` is every labelled voxel. Only the structures
    asked for are painted and listed.
    """

    method: str
    labels: np.ndarray = field(repr=False)
    structures: tuple[StructureResult, ...]
    spacing_zyx: tuple[float, float, float]
    grid_factors: tuple[int, int, int]
    elapsed_s: float

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.structures)

    def mask(self, name: str) -> np.ndarray:
        """The bool mask of one structure listed in :attr:`structures`."""
        if name not in self.names:
            raise _bad(f"{name!r} was not segmented; segmented: {', '.join(self.names)}")
        return self.labels != 0 if name == "body" else self.labels == LABELS[name]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no voxels)."""
        return {"method": self.method, "structures": [s.to_dict() for s in self.structures],
                "labels": {name: LABELS[name] for name in self.names},
                "spacing_zyx": list(self.spacing_zyx), "grid_factors": list(self.grid_factors),
                "elapsed_s": self.elapsed_s}


@dataclass(frozen=True)
class _Frame:
    """What the steps share: the coarse grid, its patient-axis geometry, the full volume."""

    hu: np.ndarray
    coarse: np.ndarray     # block means
    peak: np.ndarray       # block maxima (thin cortical bone survives the pooling)
    factors: tuple[int, int, int]
    coarse_voxel_ml: float
    coarse_spacing: tuple[float, float, float]
    x_lps: np.ndarray      # patient left-right position of each coarse voxel (mm), broadcastable
    superior_first: bool   # slice 0 is the most superior one
    axial: bool            # slices run along the patient's head-foot axis (the trachea search needs it)


def _bad(message: str) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_ARGUMENT, message)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """``spacing_zyx`` (mm): the lengths of the affine's z, y and x columns."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return float(norms[2]), float(norms[1]), float(norms[0])


def _frame(hu: np.ndarray, affine: np.ndarray) -> _Frame:
    spacing = spacing_from_affine(affine)
    factors = grid.block_factors(hu.shape, spacing)
    coarse, peak = grid.pool(hu, factors)
    if not np.isfinite(coarse).all():     # a NaN or inf anywhere makes its block's mean non-finite
        raise _bad("hu holds non-finite values")
    coarse_spacing = tuple(s * f for s, f in zip(spacing, factors, strict=True))
    # Coarse voxel (k, j, i) covers full voxels k*f .. k*f+f-1: its centre index is k*f + (f-1)/2.
    centres = [np.arange(n) * f + (f - 1) / 2.0 for n, f in zip(coarse.shape, factors, strict=True)]
    zc, yc, xc = np.meshgrid(*centres, indexing="ij", sparse=True)
    x_lps = affine[0, 0] * xc + affine[0, 1] * yc + affine[0, 2] * zc + affine[0, 3]
    # Superior is +z in LPS: which end of the stack is higher up.
    superior_first = float(affine[2, 2]) < 0.0
    axial = abs(float(affine[2, 2])) > 0.7 * spacing[0]     # within about 45 degrees of axial
    return _Frame(hu, coarse, peak, factors, float(np.prod(coarse_spacing)) / 1000.0,
                  coarse_spacing, x_lps.astype(np.float32), superior_first, axial)  # type: ignore[arg-type]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(mask, grid.CONNECT_6)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _body(frame: _Frame) -> np.ndarray:
    """Coarse body mask (holes filled slice by slice)."""
    # Opened in-plane (a 3D opening would erase a stack only a slice or two thick).
    tissue = ndi.binary_opening(frame.coarse > BODY_HU, grid.SLICE_CROSS)
    body = _largest_component(tissue)
    return ndi.binary_fill_holes(body, grid.SLICE_CROSS)


def _superior_order(frame: _Frame) -> np.ndarray:
    depth = frame.coarse.shape[0]
    return np.arange(depth) if frame.superior_first else np.arange(depth)[::-1]


def _trachea_seed(frame: _Frame, body: np.ndarray) -> tuple[int, int, int] | None:
    """A coarse voxel inside the trachea, looked for in the superior :data:`SEED_SEARCH_MM`."""
    dz, dy, dx = frame.coarse_spacing
    pixel_cm2 = dy * dx / 100.0
    lo, hi = TRACHEA_AREA_CM2
    n_slices = max(1, int(round(SEED_SEARCH_MM / dz)))
    for z in _superior_order(frame)[:n_slices]:
        inside = body[z]
        if not inside.any():
            continue
        rows, cols = np.nonzero(inside)
        cy, cx = rows.mean(), cols.mean()
        width = cols.max() - cols.min() + 1
        depth = rows.max() - rows.min() + 1
        labels, count = ndi.label((frame.coarse[z] < AIRWAY_THRESHOLDS[-1]) & inside)
        best = None
        for index, region in enumerate(ndi.find_objects(labels), start=1):
            part = labels[region] == index
            area = part.sum() * pixel_cm2
            if not lo <= area <= hi:
                continue
            ry, rx = (float(np.mean(a)) + s.start for a, s in zip(np.nonzero(part), region, strict=True))
            # Near the left-right centre, in the middle half front to back, and roundish.
            h, w = part.shape
            if abs(rx - cx) > 0.15 * width or abs(ry - cy) > 0.25 * depth or max(h, w) > 2.5 * min(h, w):
                continue
            offset = abs(rx - cx) / width
            if best is None or offset < best[0]:
                best = (offset, (int(z), int(round(ry)), int(round(rx))), labels == index)
        if best is not None:
            seed = best[1]
            if labels[seed[1], seed[2]] == 0:   # centroid outside a curved lumen: any lumen voxel
                yy, xx = np.nonzero(best[2])
                seed = (int(z), int(yy[0]), int(xx[0]))
            return seed
    return None


def _airways(frame: _Frame, body: np.ndarray) -> tuple[np.ndarray, str]:
    """Coarse airway mask and a note."""
    empty = np.zeros(frame.coarse.shape, dtype=bool)
    if not frame.axial:
        return empty, "not an axial stack: the trachea is looked for in the superior slices"
    seed = _trachea_seed(frame, body)
    if seed is None:
        return empty, "no trachea-sized air tube near the midline in the superior slices"
    kept, kept_ml, note = empty, 0.0, ""
    for threshold in AIRWAY_THRESHOLDS:
        labels, _ = ndi.label((frame.coarse < threshold) & body, grid.CONNECT_6)
        if labels[seed] == 0:
            continue
        grown = labels == labels[seed]
        ml = grown.sum() * frame.coarse_voxel_ml
        if ml > AIRWAY_MAX_ML or (kept_ml > 0 and ml > 2.0 * kept_ml):
            note = f"grow stopped at {threshold:g} HU: it leaked ({ml:.0f} mL)"
            break
        kept, kept_ml = grown, ml
    if not kept.any():
        return empty, note or "the seed's air tube could not be grown"
    slices = np.flatnonzero(kept.any(axis=(1, 2)))
    length_mm = (slices[-1] - slices[0] + 1) * frame.coarse_spacing[0]
    if length_mm < AIRWAY_MIN_LENGTH_MM:
        return empty, f"the air tube found ends after {length_mm:.0f} mm: not a trachea"
    return kept, note


def _lung_components(frame: _Frame, airways: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Coarse lung mask: enclosed air components of lung size and lung density."""
    # Air inside the (slice-filled) body only: an airway open to the room through the mouth
    # would otherwise join the lungs to the air outside.
    air = (frame.coarse < AIR_HU) & body
    air &= ~grid.within_box(airways, partial(ndi.binary_dilation, structure=grid.CONNECT_6))
    labels, count = ndi.label(air, grid.CONNECT_6)
    if count == 0:
        return air
    # Air reaching the field of view's sides, front or back is outside the patient.
    outside = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                        labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * frame.coarse_voxel_ml
    big = sizes >= LUNG_MIN_ML
    big[0] = False
    big[outside] = False
    keep = np.zeros(count + 1, dtype=bool)
    lo, hi = LUNG_MEDIAN_HU
    regions = ndi.find_objects(labels)
    for index in np.flatnonzero(big):
        region = regions[index - 1]
        values = frame.coarse[region][labels[region] == index]
        keep[index] = lo <= float(np.median(values)) <= hi \
            and float(np.mean(values < GAS_HU)) <= LUNG_MAX_GAS_SHARE
    lungs = keep[labels]
    # Vessels and nodules inside the lung are lung: fill them in, slice by slice.
    return grid.within_box(lungs, partial(ndi.binary_fill_holes, structure=grid.SLICE_CROSS)) & ~airways


def _split_sides(frame: _Frame, lungs: np.ndarray, body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coarse (left, right) lungs: by component, a component spanning the midline cut there."""
    midline = float(np.mean(np.broadcast_to(frame.x_lps, body.shape)[body])) if body.any() else 0.0
    is_left = np.broadcast_to(frame.x_lps > midline, lungs.shape)   # LPS: +x is the patient's left
    labels, count = ndi.label(lungs, grid.CONNECT_6)
    flat = labels.ravel()
    left_share = np.bincount(flat, weights=is_left.ravel(), minlength=count + 1) \
        / np.maximum(np.bincount(flat, minlength=count + 1), 1)
    side = np.where(left_share >= 0.8, 1, np.where(left_share <= 0.2, 2, 3)).astype(np.int8)
    side[0] = 0   # 1 left, 2 right, 3 cut at the midline
    per_voxel = side[labels]
    left = (per_voxel == 1) | ((per_voxel == 3) & is_left)
    right = (per_voxel == 2) | ((per_voxel == 3) & ~is_left)
    return left, right


def _bone(frame: _Frame, body: np.ndarray) -> np.ndarray:
    """Coarse bone mask, marrow filled."""
    dense = (frame.peak > BONE_HU) & body
    labels, count = ndi.label(dense, grid.CONNECT_6)
    if count == 0:
        return dense
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * frame.coarse_voxel_ml
    keep = sizes >= BONE_MIN_ML
    keep[0] = False
    # Closing once joins a cortex broken by partial volume, so the marrow inside can be filled.
    return grid.within_box(keep[labels], _close_and_fill)


def _close_and_fill(mask: np.ndarray) -> np.ndarray:
    closed = ndi.binary_closing(np.pad(mask, 1), grid.CONNECT_6)[1:-1, 1:-1, 1:-1]
    return ndi.binary_fill_holes(closed, grid.SLICE_CROSS)


def _above(level: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda values: values > level


def _below(level: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda values: values < level


def _check(hu: Any, affine: Any, structures: Iterable[str]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    if not isinstance(hu, np.ndarray) or hu.ndim != 3 or min(hu.shape) < 1 \
            or not np.issubdtype(hu.dtype, np.number):
        raise _bad("hu must be a 3D numeric array (z, y, x)")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise _bad("affine must be a finite, invertible 4x4 matrix")
    if isinstance(structures, str):
        structures = structures.split(",")
    wanted = tuple(dict.fromkeys(s.strip() for s in structures))
    unknown = [s for s in wanted if s not in STRUCTURES]
    if unknown or not wanted:
        raise _bad(f"unknown structures {unknown}; expected some of {', '.join(STRUCTURES)}")
    return hu, affine, wanted


def segment_anatomy(hu: np.ndarray, affine: np.ndarray,
                    structures: Sequence[str] | str = STRUCTURES) -> AnatomyResult:
    """Segment ``structures`` (some of :data:`STRUCTURES`) of a CT ``hu`` (z, y, x) with its LPS ``affine``.

    Raises ``INVALID_ARGUMENT`` for a bad array, affine or structure name.
    """
    started = time.perf_counter()
    hu, affine, wanted = _check(hu, affine, structures)
    frame = _frame(hu, affine)
    body = _body(frame)
    coarse: dict[str, np.ndarray] = {}
    thresholds: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    airways, airway_note = np.zeros(body.shape, dtype=bool), ""
    if "airways" in wanted or "lungs" in wanted:
        airways, airway_note = _airways(frame, body)
    if "body" in wanted:
        coarse["body"], thresholds["body"] = body, _above(BODY_HU)
    if "bone" in wanted:
        coarse["bone"], thresholds["bone"] = _bone(frame, body), _above(BONE_HU)
    if "lungs" in wanted:
        coarse["lung_left"], coarse["lung_right"] = _split_sides(frame, _lung_components(frame, airways, body), body)
        thresholds["lung_left"] = thresholds["lung_right"] = _below(AIR_HU)
    if "airways" in wanted:
        coarse["airways"], thresholds["airways"] = airways, _below(AIRWAY_THRESHOLDS[-1])
    labels = np.zeros(hu.shape, dtype=np.uint8)
    for name, mask in coarse.items():
        grid.paint(labels, mask, frame.factors, hu, thresholds[name], LABELS[name])
    labels.flags.writeable = False
    counts = sum(np.bincount(plane.ravel(), minlength=len(LABELS) + 1) for plane in labels)
    spacing = spacing_from_affine(affine)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    results = []
    for name in coarse:
        count = int(counts[1:].sum()) if name == "body" else int(counts[LABELS[name]])
        results.append(StructureResult(name, count > 0, count, count * voxel_ml,
                                       airway_note if name == "airways" else ""))
    return AnatomyResult(METHOD, labels, tuple(results), spacing, frame.factors,
                         time.perf_counter() - started)
