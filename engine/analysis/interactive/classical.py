"""The classical backend: flood the equalised image from the clicks, keep the stable levels.

No learned weights: the display image, downsampled to :data:`WORK_LONG_SIDE` pixels,
smoothed and adaptively equalised (CLAHE), is flooded from the clicked points by grey
level (dark and bright structures alike); the levels at which the region's area is
stable (MSER's criterion) are the candidates, up to three nested ones (a part, the
structure, a larger whole) as SAM's multimask output gives. Air and the image frame are
walls, and a region pressed against them scores lower (it leaked out of its structure).
Background points and, for a box, the outside of the box stop the flood; a box alone is
split by Otsu's threshold inside it. See :func:`classical_candidates` for the scores.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import exposure, filters, morphology, segmentation

from engine.analysis.interactive.prompt import Prompt, invalid_region

#: Classical backend: long side of the working image (pixels) and Gaussian sigma there.
WORK_LONG_SIDE = 384
SMOOTHING_SIGMA = 1.5
#: Adaptive equalisation (CLAHE): kernel as a fraction of the long side, clip limit.
CLAHE_KERNEL_FRACTION = 0.25
CLAHE_CLIP_LIMIT = 0.01
#: Grey levels of the flood and the level step of the stability measure (MSER's delta).
LEVELS = 256
STABILITY_DELTA = 8
#: A click moves to the darkest (brightest) pixel within this many working pixels.
SEED_RADIUS = 8
#: Outer band of the working image (fraction of the long side) that floods may not cross.
FRAME_FRACTION = 0.03
#: Working pixels around the barrier within which a mask edge "touches" it.
BARRIER_REACH = 2
CLOSING_DISK = morphology.disk(2).astype(bool)
#: Holes smaller than this fraction of a candidate's area are filled.
HOLE_FRACTION = 0.25
#: Candidate regions: at least this many working pixels, at most this fraction of the
#: allowed area, at most CANDIDATES of them.
MIN_REGION_PIXELS = 30
MAX_REGION_FRACTION = 0.5
CANDIDATES = 3
#: Once one polarity gives CANDIDATES candidates, the best scoring at least this, the
#: other polarity is not flooded (it would cost a second reconstruction, ~20 ms).
CONFIDENT_SCORE = 0.85
#: Candidates overlapping a better-scored one by more than this IoU are dropped.
DUPLICATE_IOU = 0.9
#: Air (direct exposure): hysteresis thresholds as fractions of the grey range above its
#: 0.5th percentile; components smaller than MIN_AIR_FRACTION of the image are ignored.
AIR_STRONG = 0.12
AIR_WEAK = 0.30
MIN_AIR_FRACTION = 0.002


@dataclass
class ImageContext:
    """Per-image working data of the classical backend and of the background check.

    ``smoothed`` is the downsampled, Gaussian-smoothed display (float32 grey levels);
    ``levels`` its contrast-limited adaptive equalisation (CLAHE) quantised to
    :data:`LEVELS` grey levels, on which regions are flooded; ``air`` the direct
    exposure around the body; ``frame`` the outer band of :data:`FRAME_FRACTION` of
    the long side (collimator edges, labels and detector borders live there).
    """

    rows: int
    columns: int
    smoothed: np.ndarray
    levels: np.ndarray
    air: np.ndarray
    frame: np.ndarray

    @property
    def scale(self) -> tuple[float, float]:
        """Working pixels per image pixel, (rows, columns)."""
        return self.smoothed.shape[0] / self.rows, self.smoothed.shape[1] / self.columns

    def to_work(self, points: np.ndarray) -> np.ndarray:
        """``[x, y]`` image pixels -> ``(row, column)`` integer working pixels."""
        scale_rows, scale_columns = self.scale
        work_rows, work_columns = self.smoothed.shape
        rows = np.clip(((points[:, 1] + 0.5) * scale_rows).astype(np.int64), 0, work_rows - 1)
        columns = np.clip(((points[:, 0] + 0.5) * scale_columns).astype(np.int64), 0, work_columns - 1)
        return np.stack([rows, columns], axis=1)

    def box_to_work(self, box: np.ndarray) -> tuple[slice, slice]:
        """An image-pixel box as working-image ``(rows, columns)`` slices (at least one pixel)."""
        scale_rows, scale_columns = self.scale
        x1, y1, x2, y2 = box
        top, left = int(math.floor(y1 * scale_rows)), int(math.floor(x1 * scale_columns))
        bottom = max(int(math.ceil(y2 * scale_rows)), top + 1)
        right = max(int(math.ceil(x2 * scale_columns)), left + 1)
        return slice(top, bottom), slice(left, right)

    def to_image(self, mask: np.ndarray) -> np.ndarray:
        """A working mask upsampled (bilinear, threshold 0.5) to the image size."""
        upsampled = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (self.columns, self.rows), resample=Image.Resampling.BILINEAR)
        return np.asarray(upsampled) >= 128


def image_context(display: np.ndarray) -> ImageContext:
    """Downsample, smooth, equalise and find the air and the frame of one display image."""
    grey = display if display.ndim == 2 else np.asarray(Image.fromarray(display[:, :, :3]).convert("L"))
    rows, columns = grey.shape
    scale = min(1.0, WORK_LONG_SIDE / max(rows, columns))
    work_size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    work = np.asarray(Image.fromarray(np.ascontiguousarray(grey)).resize(work_size, Image.Resampling.BILINEAR))
    smoothed = ndimage.gaussian_filter(work.astype(np.float32), SMOOTHING_SIGMA)
    frame = frame_band(smoothed.shape)
    air = air_mask(smoothed, frame)
    return ImageContext(rows, columns, smoothed, equalised_levels(smoothed, air), air, frame)


def frame_band(shape: tuple[int, ...]) -> np.ndarray:
    """The outer band of the working image, :data:`FRAME_FRACTION` of the long side wide."""
    width = max(2, int(FRAME_FRACTION * max(shape)))
    band = np.zeros(shape, dtype=bool)
    band[:width], band[-width:], band[:, :width], band[:, -width:] = True, True, True, True
    return band


def _grey_range(smoothed: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(smoothed, [0.5, 99.5])
    return float(low), max(float(high - low), 1e-6)


def air_mask(smoothed: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """The direct-exposure background: dark regions reaching the frame band.

    Hysteresis on the grey range ``[p0.5, p99.5]``: a component darker than
    :data:`AIR_WEAK` of the range counts as air when it holds pixels darker than
    :data:`AIR_STRONG` and reaches the frame band (on RG1 the top-right air touches the
    image edge only through a bright 5-pixel strip, hence the band rather than the
    border). Components smaller than :data:`MIN_AIR_FRACTION` of the image are ignored.
    The lungs, dark but well above the direct exposure, stay outside it on chest films.
    """
    low, grey_range = _grey_range(smoothed)
    labelled, count = ndimage.label(smoothed <= low + AIR_WEAK * grey_range)
    if count == 0:
        return np.zeros(smoothed.shape, dtype=bool)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.intersect1d(labelled[frame], labelled[smoothed <= low + AIR_STRONG * grey_range])] = True
    keep[0] = False
    keep &= np.bincount(labelled.ravel(), minlength=count + 1) >= MIN_AIR_FRACTION * smoothed.size
    return keep[labelled]


def equalised_levels(smoothed: np.ndarray, air: np.ndarray) -> np.ndarray:
    """CLAHE of the working image, quantised to :data:`LEVELS` levels over the body's range.

    Adaptive equalisation evens out the slow exposure gradients of a radiograph (the
    lung apices are brighter than the bases) that otherwise make a flood leak at one
    end of a structure before it fills the other.
    """
    low, grey_range = _grey_range(smoothed)
    unit = np.clip((smoothed - low) / grey_range, 0.0, 1.0)
    kernel = max(8, int(CLAHE_KERNEL_FRACTION * max(smoothed.shape)))
    equalised = exposure.equalize_adapthist(unit, kernel_size=kernel, clip_limit=CLAHE_CLIP_LIMIT)
    body = equalised[~air] if (~air).any() else equalised.ravel()
    body_low, body_high = np.percentile(body, [0.5, 99.5])
    span = max(float(body_high - body_low), 1e-6)
    return np.clip((equalised - body_low) / span * (LEVELS - 1), 0, LEVELS - 1).astype(np.int32)


@dataclass
class _Flood:
    """The minimax level from the seeds to every pixel, for one polarity."""

    polarity: str
    reach: np.ndarray
    seeds: np.ndarray


def _flood(context: ImageContext, seeds: np.ndarray, barrier: np.ndarray, polarity: str) -> _Flood:
    """Reconstruction by erosion: each pixel's lowest possible highest level on a path to a seed.

    ``reach <= t`` is then the region grown from the seeds through pixels at level
    ``<= t`` (dark polarity; the bright polarity floods the inverted levels), for every
    ``t`` at once. Each seed first moves to the most extreme pixel within
    :data:`SEED_RADIUS` working pixels, so a click on a vessel or a rib edge inside a
    lung still starts from the lung.
    """
    levels = context.levels if polarity == "dark" else (LEVELS - 1) - context.levels
    image = levels.astype(np.float32)
    image[barrier] = LEVELS
    moved = []
    for row, column in seeds:
        top, left = max(0, row - SEED_RADIUS), max(0, column - SEED_RADIUS)
        window = image[top:row + SEED_RADIUS + 1, left:column + SEED_RADIUS + 1]
        offset_row, offset_column = np.unravel_index(int(np.argmin(window)), window.shape)
        moved.append((top + offset_row, left + offset_column))
    moved_seeds = np.asarray(moved, dtype=np.int64).reshape(-1, 2)
    marker = np.full(image.shape, LEVELS + 1, dtype=np.float32)
    marker[moved_seeds[:, 0], moved_seeds[:, 1]] = image[moved_seeds[:, 0], moved_seeds[:, 1]]
    reach = morphology.reconstruction(marker, image, method="erosion").astype(np.int32)
    return _Flood(polarity, reach, moved_seeds)


def _touch(mask: np.ndarray, near_barrier: np.ndarray) -> float:
    """Fraction of a mask's edge pixels lying next to the barrier (air, frame, box edge)."""
    edge = mask & ~ndimage.binary_erosion(mask)
    return float((edge & near_barrier).sum()) / max(int(edge.sum()), 1)


def _level_candidates(flood: _Flood, stops: np.ndarray, near_barrier: np.ndarray,
                      allowed_pixels: int) -> list[tuple[float, np.ndarray]]:
    """The stable levels of one flood as ``(score, raw mask)`` (see classical_candidates)."""
    reach = flood.reach
    lowest = int(reach[flood.seeds[:, 0], flood.seeds[:, 1]].max())
    highest = LEVELS - 1
    if len(stops):
        highest = min(highest, int(reach[stops[:, 0], stops[:, 1]].min()) - 1)
    if highest < lowest:
        return []
    area = np.cumsum(np.bincount(reach.ravel(), minlength=LEVELS + 2)[:LEVELS]).astype(np.float64)
    levels = np.arange(LEVELS)
    stability = area[np.clip(levels - STABILITY_DELTA, 0, LEVELS - 1)] / np.maximum(
        area[np.clip(levels + STABILITY_DELTA, 0, LEVELS - 1)], 1.0)
    valid = ((levels >= lowest) & (levels <= highest) & (area >= MIN_REGION_PIXELS)
             & (area <= MAX_REGION_FRACTION * allowed_pixels))
    stability[~valid] = 0.0
    neighbourhood = ndimage.maximum_filter1d(stability, size=2 * STABILITY_DELTA + 1, mode="constant")
    peaks = np.flatnonzero(valid & (stability >= neighbourhood))
    if peaks.size == 0:
        # Bounded by a background point before anything stable formed: the largest allowed region.
        peaks = np.flatnonzero(valid)[-1:]
    candidates = []
    for level in peaks:
        mask = reach <= level
        candidates.append((float(stability[level]) * (1.0 - _touch(mask, near_barrier)), mask))
    return candidates


def _finish(mask: np.ndarray, seeds: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Close one-pixel gaps, fill the holes, keep the components holding a seed.

    Only holes smaller than :data:`HOLE_FRACTION` of the mask are filled (vessels and
    nodules in a lung): a ring around a large structure (the body around both lungs,
    found on the bright side) keeps its inside out.
    """
    closed = ndimage.binary_closing(mask, structure=CLOSING_DISK) | mask
    holes, count = ndimage.label(~closed)
    if count:
        sizes = np.bincount(holes.ravel(), minlength=count + 1)
        fill = sizes <= HOLE_FRACTION * int(closed.sum())
        fill[0] = False
        fill[np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))] = False
        closed |= fill[holes]
    labelled, _ = ndimage.label(closed & allowed)
    keep = {int(labelled[r, c]) for r, c in seeds} - {0}
    return np.isin(labelled, list(keep)) if keep else mask


def _polarities(context: ImageContext, seeds: np.ndarray) -> tuple[str, str]:
    """Both flood polarities, the likelier first: dark when the points lie below their surroundings."""
    radius = 4 * SEED_RADIUS
    surroundings = []
    for row, column in seeds:
        window = context.levels[max(0, row - radius):row + radius + 1, max(0, column - radius):column + radius + 1]
        surroundings.append(float(np.median(window)))
    dark_first = float(np.median(context.levels[seeds[:, 0], seeds[:, 1]])) <= float(np.median(surroundings))
    return ("dark", "bright") if dark_first else ("bright", "dark")


def _flood_candidates(context: ImageContext, prompt: Prompt, allowed: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Flood both polarities from the foreground points, score the stable levels (see classical_candidates)."""
    seeds = context.to_work(prompt.foreground)
    stops = context.to_work(prompt.background) if len(prompt.background) else np.zeros((0, 2), dtype=np.int64)
    barrier = ~allowed
    if not context.frame[seeds[:, 0], seeds[:, 1]].any():
        barrier |= context.frame
    barrier[seeds[:, 0], seeds[:, 1]] = False
    # Running off the image counts like touching the barrier (the frame is off when clicked in).
    border = np.ones(barrier.shape, dtype=bool)
    border[1:-1, 1:-1] = False
    near_barrier = ndimage.binary_dilation(barrier | border, iterations=BARRIER_REACH)
    allowed_pixels = int((~barrier).sum())
    scored: list[tuple[float, np.ndarray, np.ndarray]] = []
    for polarity in _polarities(context, seeds):
        flood = _flood(context, seeds, barrier, polarity)
        scored += [(score, mask, flood.seeds)
                   for score, mask in _level_candidates(flood, stops, near_barrier, allowed_pixels)]
        if len(scored) >= CANDIDATES and max(score for score, _, _ in scored) >= CONFIDENT_SCORE:
            break  # a sharply bounded structure on the likelier side: skip the other flood
    if not scored:
        # Nothing stable below the background points: split between them; without any,
        # the points lie in a region larger than MAX_REGION_FRACTION (nothing to select).
        return _split_with_background(context, seeds, stops, allowed) if len(stops) else []
    scored.sort(key=lambda item: item[0], reverse=True)
    chosen: list[tuple[float, np.ndarray, np.ndarray]] = []
    for score, mask, moved in scored:
        if any(_iou(mask, kept) > DUPLICATE_IOU for _, kept, _ in chosen):
            continue
        chosen.append((score, mask, moved))
        if len(chosen) == CANDIDATES:
            break
    finished = [(_finish(mask, np.concatenate([seeds, moved]), ~barrier), score) for score, mask, moved in chosen]
    # Smallest first, like SAM's multimask output (a part, the structure, a larger whole).
    return sorted(finished, key=lambda item: int(item[0].sum()))


def _split_with_background(context: ImageContext, seeds: np.ndarray, stops: np.ndarray,
                           allowed: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Foreground and background points in one homogeneous region: watershed between them."""
    markers = np.zeros(context.smoothed.shape, dtype=np.int32)
    markers[stops[:, 0], stops[:, 1]] = 2
    markers[seeds[:, 0], seeds[:, 1]] = 1
    gradient = filters.sobel(context.smoothed)
    labelled = segmentation.watershed(gradient, markers, mask=allowed)
    return [(_finish(labelled == 1, seeds, allowed), 0.0)]


def _box_candidates(context: ImageContext, prompt: Prompt, allowed: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """The dominant structure inside a box: Otsu's split, the class touching the box edge less."""
    rows, columns = context.box_to_work(prompt.box)
    inside = context.smoothed[rows, columns]
    valid = allowed[rows, columns]
    values = inside[valid]
    if values.size < MIN_REGION_PIXELS or float(values.max() - values.min()) < 1.0:
        return []
    threshold = filters.threshold_otsu(values)
    bright = (inside > threshold) & valid
    edge = np.zeros(inside.shape, dtype=bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    bright_on_edge = bright[edge].mean()
    dark_on_edge = ((~bright) & valid)[edge].mean()
    objects = bright if bright_on_edge <= dark_on_edge else (~bright) & valid
    # Otsu's separability: between-class variance over total variance, 0..1.
    upper, lower = values[values > threshold], values[values <= threshold]
    total = float(values.var())
    separability = (upper.size * lower.size / values.size ** 2 * (upper.mean() - lower.mean()) ** 2 / total
                    if total > 0 and upper.size and lower.size else 0.0)
    opened = ndimage.binary_fill_holes(ndimage.binary_opening(objects, structure=np.ones((3, 3), dtype=bool)))
    labelled, count = ndimage.label(opened)
    if count == 0:
        return []
    stops = context.to_work(prompt.background) if len(prompt.background) else np.zeros((0, 2), dtype=np.int64)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    sizes[0] = 0
    for row, column in stops:
        if rows.start <= row < rows.stop and columns.start <= column < columns.stop:
            sizes[labelled[row - rows.start, column - columns.start]] = 0
    if not sizes.any():
        return []
    largest = labelled == int(sizes.argmax())
    full = np.zeros(context.smoothed.shape, dtype=bool)
    full[rows, columns] = largest
    candidates = [(full, float(separability))]
    union = np.isin(labelled, np.flatnonzero(sizes)) & (labelled > 0)
    if union.sum() > largest.sum() * 1.1:
        all_parts = np.zeros(context.smoothed.shape, dtype=bool)
        all_parts[rows, columns] = union
        candidates.append((all_parts, float(separability) * largest.sum() / union.sum()))
    return candidates


def classical_candidates(context: ImageContext, prompt: Prompt) -> list[tuple[np.ndarray, float]]:
    """Candidate masks (working resolution) and scores in [0, 1] for one prompt.

    With foreground points: the points flood the equalised image (:class:`ImageContext`)
    by reconstruction, which gives for every grey level ``t`` the region connected to
    them through pixels at level ``<= t`` (dark structures such as the lungs), and, on
    the inverted levels, through brighter pixels (bone, the heart, contrast). A structure
    is a *stable* level: its area barely changes between ``t - delta`` and ``t + delta``
    (MSER's criterion; stability = area(t - delta) / area(t + delta)). Levels after a
    background point joins the region are excluded. Air, the frame band (unless a point
    lies in it) and, with a box, the outside of the box are walls the flood cannot
    cross; a region pressed against them has leaked out of its structure (over the
    shoulder, into the soft tissue next to the air), so the score is stability x (1 -
    share of the region's edge touching a wall or the image border). The three best
    distinct levels are the candidates, smallest first, closed, hole-filled and cut to
    the components holding a point. The polarity the points' surroundings suggest is
    flooded first; the other only when the first gives no candidate scoring
    :data:`CONFIDENT_SCORE`.

    With foreground and background points in one flat region (no level separates them):
    a watershed between the two sets of points on the gradient, score 0.

    With a box and no foreground point: Otsu's threshold inside the box, the class that
    touches the box edge less is the structure; the largest component is the first
    candidate (score = Otsu separability, between-class over total variance), all its
    components the second.
    """
    allowed = ~context.air
    if prompt.box is not None:
        rows, columns = context.box_to_work(prompt.box)
        inside_box = np.zeros(allowed.shape, dtype=bool)
        inside_box[rows, columns] = True
        allowed &= inside_box
    if len(prompt.foreground):
        candidates = _flood_candidates(context, prompt, allowed)
    else:
        candidates = _box_candidates(context, prompt, allowed)
    unique: list[tuple[np.ndarray, float]] = []
    for mask, score in candidates:
        if mask.sum() == 0:
            continue
        if any(_iou(mask, kept) > DUPLICATE_IOU for kept, _ in unique):
            continue
        unique.append((mask, score))
    return unique


def _iou(first: np.ndarray, second: np.ndarray) -> float:
    union = np.logical_or(first, second).sum()
    return float(np.logical_and(first, second).sum() / union) if union else 1.0



def segment_classical(context: ImageContext, prompt: Prompt, multimask: bool,
                      timings: dict[str, float]) -> dict[str, Any]:
    """The classical candidates as image-size masks: the segmenter's result for this backend."""
    started = time.perf_counter()
    candidates = classical_candidates(context, prompt)
    grown = time.perf_counter()
    if not candidates:
        raise invalid_region("the prompt selects nothing (empty mask); click inside the structure",
                             backend="classical")
    best = int(np.argmax([score for _, score in candidates]))
    if not multimask:
        candidates, best = [candidates[best]], 0
    masks = []
    for work_mask, score in candidates:
        mask = context.to_image(work_mask)
        masks.append({"mask": mask, "score": round(float(score), 4), "area_px": int(mask.sum())})
    timings["segment"] = round((grown - started) * 1000, 2)
    timings["upsample"] = round((time.perf_counter() - grown) * 1000, 2)
    if not all(m["area_px"] for m in masks):
        masks = [m for m in masks if m["area_px"]]
        if not masks:
            raise invalid_region("the prompt selects nothing (empty mask); click inside the structure",
                                 backend="classical")
        best = int(np.argmax([m["score"] for m in masks]))
    return {
        "status": "ok",
        "backend": "classical",
        "model": None,
        "model_trained": None,
        "masks": masks,
        "best": best,
        "low_res_logits": None,
        "embedding_source": None,
    }
