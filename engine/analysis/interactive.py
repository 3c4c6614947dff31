"""Interactive (click-to-segment) segmentation: a SAM-family model, or a classical fallback.

Two backends answer the same prompts (points labelled foreground/background, a box,
the previous click's low-resolution logits) in image pixel coordinates (origin top-left,
x right, y down) and return candidate masks of the image's size:

``sam``
    MobileSAM exported to two ONNX graphs (``models/sam.py``). The image encoder runs
    once per image (about a second on a CPU) and its embedding is cached in memory (LRU)
    and, through optional ``cache_get`` / ``cache_put`` callables, in the engine's
    encrypted store; each click only runs the prompt decoder. Preprocessing and the
    prompt coordinate transform reimplement ``SamPredictor`` (``ResizeLongestSide``,
    ``Sam.preprocess``) in numpy + Pillow, with the sizes and statistics read from the
    manifest entries.
``classical``
    No learned weights: the display image, downsampled to :data:`WORK_LONG_SIDE`
    pixels, smoothed and adaptively equalised (CLAHE), is flooded from the clicked
    points by grey level (dark and bright structures alike); the levels at which the
    region's area is stable (MSER's criterion) are the candidates, up to three nested
    ones (a part, the structure, a larger whole) as SAM's multimask output gives. Air
    and the image frame are walls, and a region pressed against them scores lower (it
    leaked out of its structure). Background points and, for a box, the outside of the
    box stop the flood; a box alone is split by Otsu's threshold inside it. See
    :func:`classical_candidates` for the scores.

The manifest decides the default: SAM serves only when the pack holds ``sam_encoder``
and ``sam_decoder`` entries with trained weights; a development pack (``trained:
false``) or a pack without SAM gets the classical backend. ``backend=`` or the
environment variable ``MEDVISION_INTERACTIVE_BACKEND`` (``sam`` / ``classical``)
override it, and every result names the backend that made it.

Both backends refuse a foreground point on the air around the body (``INVALID_REGION``,
"point on background"): the region would be the whole exposed field, or nothing.
"""

from __future__ import annotations

import io
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage import exposure, filters, morphology, segmentation

from engine.errors import ErrorCode, MedVisionError

if TYPE_CHECKING:
    from engine.imaging import DecodedImage
    from engine.inference.modelpack import ModelEntry
    from engine.inference.registry import ModelRegistry

log = logging.getLogger(__name__)

#: Environment variable overriding the manifest's choice of backend.
BACKEND_ENV = "MEDVISION_INTERACTIVE_BACKEND"
BACKENDS = ("sam", "classical")
#: Image embeddings kept in memory (4 MiB each for MobileSAM).
EMBEDDING_CACHE_SIZE = 4
#: Per-image working data of the classical backend and of the background check.
CONTEXT_CACHE_SIZE = 8

#: SAM defaults, used only when a manifest entry omits them (MobileSAM's values).
SAM_LONG_SIDE = 1024
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
SAM_LOW_RES = 256

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
#: Interior points returned by polygon_to_prompt.
POLYGON_POINTS = 3


@dataclass(frozen=True)
class Prompt:
    """A validated prompt in image pixel coordinates.

    ``points`` is ``(N, 2)`` float64 ``[x, y]``, ``labels`` ``(N,)`` int64 (1 foreground,
    0 background), ``box`` ``[x1, y1, x2, y2]`` or None, ``mask_input`` ``(1, 1, 256,
    256)`` float32 logits of a previous SAM prediction or None.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None
    mask_input: np.ndarray | None

    @property
    def foreground(self) -> np.ndarray:  # noqa: D102
        return self.points[self.labels == 1]

    @property
    def background(self) -> np.ndarray:  # noqa: D102
        return self.points[self.labels == 0]


def _invalid(message: str, **details: Any) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_REGION, message, **details)


def validate_prompt(
    rows: int,
    columns: int,
    *,
    points: Sequence[Sequence[float]] | None = None,
    labels: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
    mask_input: np.ndarray | None = None,
) -> Prompt:
    """Check a prompt against an image of ``rows`` x ``columns`` pixels.

    Points must lie inside the image (``0 <= x < columns``, ``0 <= y < rows``); a box
    ``[x1, y1, x2, y2]`` may reach the image edge (``x2 <= columns``) and needs
    ``x2 > x1`` and ``y2 > y1``. ``labels`` default to all foreground; when given they
    must match the points one to one and be 0 or 1. A prompt needs a foreground point
    or a box. Violations are ``INVALID_REGION`` naming the offending argument;
    a malformed ``mask_input`` is ``INVALID_ARGUMENT``.
    """
    point_list = [] if points is None else list(points)
    try:
        coords = np.asarray(point_list, dtype=np.float64).reshape(-1, 2) if point_list else np.zeros((0, 2))
    except (TypeError, ValueError) as exc:
        raise _invalid("points must be a list of [x, y] pairs", argument="points") from exc
    if not np.isfinite(coords).all():
        raise _invalid("points must be finite numbers (no NaN or infinity)", argument="points")
    outside = (coords[:, 0] < 0) | (coords[:, 0] >= columns) | (coords[:, 1] < 0) | (coords[:, 1] >= rows)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise _invalid(f"point {index} {coords[index].tolist()} lies outside the image "
                       f"({columns} x {rows} pixels)", argument="points", index=index)
    if labels is None:
        label_array = np.ones(len(coords), dtype=np.int64)
    else:
        try:
            label_array = np.asarray(list(labels), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise _invalid("labels must be a list of 0/1 integers", argument="labels") from exc
        if len(label_array) != len(coords):
            raise _invalid(f"{len(label_array)} labels for {len(coords)} points: give one label per point",
                           argument="labels")
        if not np.isin(label_array, (0, 1)).all():
            raise _invalid("labels must be 1 (foreground) or 0 (background)", argument="labels")
        label_array = label_array.astype(np.int64)

    box_array = None
    if box is not None:
        try:
            box_array = np.asarray(list(box), dtype=np.float64).reshape(4)
        except (TypeError, ValueError) as exc:
            raise _invalid("box must be [x1, y1, x2, y2]", argument="box") from exc
        if not np.isfinite(box_array).all():
            raise _invalid("box must be finite numbers (no NaN or infinity)", argument="box")
        x1, y1, x2, y2 = box_array
        if x2 <= x1 or y2 <= y1:
            raise _invalid("box needs x2 > x1 and y2 > y1", argument="box", box=box_array.tolist())
        if x1 < 0 or y1 < 0 or x2 > columns or y2 > rows:
            raise _invalid(f"box {box_array.tolist()} reaches outside the image ({columns} x {rows} pixels)",
                           argument="box")
        inside = ((coords[:, 0] >= x1) & (coords[:, 0] <= x2) & (coords[:, 1] >= y1) & (coords[:, 1] <= y2))
        if ((label_array == 1) & ~inside).any():
            raise _invalid("a foreground point lies outside the box", argument="points")
    if box_array is None and not (label_array == 1).any():
        raise _invalid("the prompt needs at least one foreground point or a box", argument="points")

    mask = None
    if mask_input is not None:
        mask = np.asarray(mask_input, dtype=np.float32)
        if mask.size != SAM_LOW_RES * SAM_LOW_RES or mask.shape[-2:] != (SAM_LOW_RES, SAM_LOW_RES):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"mask_input must be the {SAM_LOW_RES} x {SAM_LOW_RES} low_res_logits "
                                 "of a previous result", argument="mask_input")
        if not np.isfinite(mask).all():
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "mask_input must be finite",
                                 argument="mask_input")
        mask = mask.reshape(1, 1, SAM_LOW_RES, SAM_LOW_RES)
    return Prompt(coords, label_array, box_array, mask)


# --- SAM geometry (SamPredictor / ResizeLongestSide, reimplemented) -------------------


def preprocess_shape(rows: int, columns: int, long_side: int) -> tuple[int, int]:
    """``ResizeLongestSide.get_preprocess_shape``: (rows, columns) with the long side scaled."""
    scale = long_side * 1.0 / max(rows, columns)
    return int(rows * scale + 0.5), int(columns * scale + 0.5)


def apply_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """``ResizeLongestSide.apply_coords``: ``[..., (x, y)]`` image pixels -> encoder input pixels."""
    old_rows, old_columns = original_size
    new_rows, new_columns = preprocess_shape(old_rows, old_columns, long_side)
    scaled = np.array(coords, dtype=np.float64, copy=True)
    scaled[..., 0] = scaled[..., 0] * (new_columns / old_columns)
    scaled[..., 1] = scaled[..., 1] * (new_rows / old_rows)
    return scaled


def apply_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """``ResizeLongestSide.apply_boxes``: ``(B, 4)`` boxes as two corners each."""
    return apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size, long_side).reshape(-1, 4)


def rgb_display(decoded: DecodedImage) -> np.ndarray:
    """The display rendering as ``(rows, columns, 3)`` uint8 (grey replicated)."""
    display = decoded.display()
    if display.ndim == 2:
        return np.repeat(display[:, :, None], 3, axis=2)
    return np.ascontiguousarray(display[:, :, :3])


def sam_image_tensor(image: np.ndarray, spec: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int]]:
    """SAM's image preprocessing on a uint8 grey or RGB image.

    ``SamPredictor.set_image`` + ``Sam.preprocess``: resize so the long side is
    ``spec["long_side"]`` (Pillow bilinear, as torchvision's ``resize`` of a PIL image
    does), subtract ``pixel_mean``, divide by ``pixel_std`` (0-255 scale), zero-pad
    bottom/right to a square. A grey image is resized once and broadcast to the three
    channels (Pillow filters each channel alike, so this equals resizing an RGB copy).

    Returns
    -------
    tuple
        The ``(1, 3, long_side, long_side)`` float32 tensor and the resized
        ``(rows, columns)`` before padding.
    """
    long_side = int(spec.get("long_side", SAM_LONG_SIDE))
    mean = np.asarray(spec.get("pixel_mean", SAM_PIXEL_MEAN), dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.get("pixel_std", SAM_PIXEL_STD), dtype=np.float32).reshape(3, 1, 1)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "SAM input must be a uint8 grey or RGB image")
    rows, columns = image.shape[:2]
    new_rows, new_columns = preprocess_shape(rows, columns, long_side)
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image))
                         .resize((new_columns, new_rows), resample=Image.Resampling.BILINEAR))
    channels = resized[None].astype(np.float32) if resized.ndim == 2 else resized.transpose(2, 0, 1)
    tensor = np.zeros((1, 3, long_side, long_side), dtype=np.float32)
    tensor[0, :, :new_rows, :new_columns] = (channels - mean) / std
    return tensor, (new_rows, new_columns)


def decoder_prompt(prompt: Prompt, original_size: tuple[int, int], long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """``point_coords`` ``(1, N, 2)`` and ``point_labels`` ``(1, N)`` as SAM's ONNX example builds them.

    Points are transformed with :func:`apply_coords`; a box becomes two corner points
    labelled 2 and 3; without a box a padding point ``(0, 0)`` labelled -1 is appended.
    """
    coords = [apply_coords(prompt.points, original_size, long_side)] if len(prompt.points) else []
    labels = [prompt.labels.astype(np.float32)] if len(prompt.points) else []
    if prompt.box is not None:
        coords.append(apply_boxes(prompt.box[None], original_size, long_side).reshape(2, 2))
        labels.append(np.array([2, 3], dtype=np.float32))
    else:
        coords.append(np.zeros((1, 2)))
        labels.append(np.array([-1], dtype=np.float32))
    return (np.concatenate(coords)[None].astype(np.float32), np.concatenate(labels)[None].astype(np.float32))


# --- Classical backend ---------------------------------------------------------------


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


# --- Polygons ------------------------------------------------------------------------


def polygon_to_prompt(polygon: Sequence[Sequence[float]], max_points: int = POLYGON_POINTS
                      ) -> tuple[list[float], list[list[float]], list[int]]:
    """A box and interior foreground points that describe a drawn polygon.

    ``box`` is the polygon's bounds ``[x1, y1, x2, y2]``; the points are maxima of the
    distance transform of the rasterised polygon (the deepest interior point first, each
    next one the deepest point at least one inscribed radius away from those taken), so
    they lie well inside even for concave outlines. All labels are 1.
    """
    try:
        vertices = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError) as exc:
        raise _invalid("polygon must be a list of [x, y] vertices", argument="polygon") from exc
    if len(vertices) < 3 or not np.isfinite(vertices).all():
        raise _invalid("polygon needs at least three finite [x, y] vertices", argument="polygon")
    x1, y1 = vertices.min(axis=0)
    x2, y2 = vertices.max(axis=0)
    if x2 <= x1 or y2 <= y1:
        raise _invalid("polygon has no area", argument="polygon")
    # Rasterise at most ~256 px on the long side: enough for interior points.
    scale = min(1.0, 256.0 / max(x2 - x1, y2 - y1))
    width, height = int(math.ceil((x2 - x1) * scale)) + 3, int(math.ceil((y2 - y1) * scale)) + 3
    canvas = Image.new("1", (width, height))
    local = [((x - x1) * scale + 1, (y - y1) * scale + 1) for x, y in vertices]
    ImageDraw.Draw(canvas).polygon(local, fill=1)
    inside = np.asarray(canvas)
    if not inside.any():
        raise _invalid("polygon has no area", argument="polygon")
    distance = ndimage.distance_transform_edt(inside)
    points: list[list[float]] = []
    remaining = distance.copy()
    for _ in range(max(1, max_points)):
        row, column = np.unravel_index(int(remaining.argmax()), remaining.shape)
        depth = remaining[row, column]
        if depth <= 0 or (points and depth < 0.5 * distance.max()):
            break
        points.append([float((column - 1) / scale + x1), float((row - 1) / scale + y1)])
        rr, cc = np.ogrid[:remaining.shape[0], :remaining.shape[1]]
        radius = max(distance[row, column], 1.0)
        remaining[(rr - row) ** 2 + (cc - column) ** 2 <= (2 * radius) ** 2] = 0
    return [float(x1), float(y1), float(x2), float(y2)], points, [1] * len(points)


# --- The segmenter -------------------------------------------------------------------


class InteractiveSegmenter:
    """Click-to-segment on one image at a time, with per-image caches.

    Parameters
    ----------
    registry:
        Serves the pack's ``sam_encoder`` / ``sam_decoder`` entries (and decides the
        default backend from their ``trained`` flag).
    backend:
        ``"sam"`` or ``"classical"`` to override the manifest (else the environment
        variable ``MEDVISION_INTERACTIVE_BACKEND``, else the manifest).
    cache_get, cache_put:
        Optional persistent embedding cache (the engine encrypts and stores the bytes).
        Keys are ``"<image_key>:<encoder sha256>"``; values are ``.npy`` bytes.
    """

    def __init__(
        self,
        registry: ModelRegistry | None,
        backend: str | None = None,
        cache_get: Callable[[str], bytes | None] | None = None,
        cache_put: Callable[[str, bytes], None] | None = None,
    ) -> None:
        requested = backend or os.environ.get(BACKEND_ENV) or None
        if requested is not None and requested not in BACKENDS:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"unknown interactive backend {requested!r}; use one of {', '.join(BACKENDS)}",
                                 backend=requested)
        self.registry = registry
        self._requested = requested
        self._backend: str | None = None
        self._cache_get = cache_get
        self._cache_put = cache_put
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()
        self._contexts: OrderedDict[str, ImageContext] = OrderedDict()
        self._lock = threading.RLock()
        #: How many times the image encoder ran (the embedding cache's effect is visible here).
        self.encoder_runs = 0

    # -- backend choice --

    @property
    def backend(self) -> str:
        """The backend serving requests: the override, else the manifest's choice."""
        with self._lock:
            if self._backend is None:
                self._backend = self._requested or self._manifest_backend()
                log.info("interactive segmentation backend: %s", self._backend)
            return self._backend

    def _manifest_backend(self) -> str:
        if self.registry is None:
            return "classical"
        try:
            encoder, decoder = self.registry.entry("sam_encoder"), self.registry.entry("sam_decoder")
        except MedVisionError as exc:
            if exc.code is ErrorCode.MODEL_NOT_FOUND:
                return "classical"
            raise
        if encoder is None or decoder is None or not (encoder.trained and decoder.trained):
            return "classical"
        return "sam"

    def _sam_entries(self) -> tuple[ModelEntry, ModelEntry]:
        if self.registry is None:
            raise MedVisionError(ErrorCode.MODEL_NOT_FOUND, "the SAM backend needs a model pack")
        return self.registry.require("sam_encoder"), self.registry.require("sam_decoder")

    # -- caches --

    def _context(self, image_key: str, decoded: DecodedImage) -> ImageContext:
        with self._lock:
            context = self._contexts.get(image_key)
            if context is not None and (context.rows, context.columns) == (decoded.rows, decoded.columns):
                self._contexts.move_to_end(image_key)
                return context
        context = image_context(decoded.display())
        with self._lock:
            self._contexts[image_key] = context
            while len(self._contexts) > CONTEXT_CACHE_SIZE:
                self._contexts.popitem(last=False)
        return context

    def _embedding(self, image_key: str, decoded: DecodedImage, timings: dict[str, float]) -> tuple[np.ndarray, str]:
        """The image embedding: memory cache, then the persistent cache, then the encoder."""
        encoder, _ = self._sam_entries()
        key = f"{image_key}:{encoder.spec['sha256']}"
        expected = tuple(encoder.spec.get("output", {}).get("shape", (1, 256, 64, 64)))
        with self._lock:
            cached = self._embeddings.get(key)
            if cached is not None:
                self._embeddings.move_to_end(key)
                return cached, "memory"
        embedding, source = None, "computed"
        if self._cache_get is not None:
            blob = self._cache_get(key)
            if blob is not None:
                embedding = _embedding_from_bytes(blob, expected)
                if embedding is None:
                    log.warning("ignoring an unreadable cached embedding for image %s", image_key)
                else:
                    source = "store"
        if embedding is None:
            model = self.registry.onnx(encoder)  # type: ignore[union-attr]
            spec = encoder.spec.get("input", {})
            started = time.perf_counter()
            tensor, _ = sam_image_tensor(rgb_display(decoded), spec)
            prepared = time.perf_counter()
            embedding = model.run({spec.get("name", model.input_names[0]): tensor})[0].astype(np.float32)
            finished = time.perf_counter()
            with self._lock:
                self.encoder_runs += 1
            timings["encoder_preprocess"] = round((prepared - started) * 1000, 2)
            timings["encoder"] = round((finished - prepared) * 1000, 2)
            if embedding.shape != expected:
                raise MedVisionError(ErrorCode.INFERENCE_ERROR,
                                     f"{encoder.id} returned an embedding of shape {embedding.shape}, "
                                     f"expected {expected}")
            if self._cache_put is not None:
                self._cache_put(key, _embedding_to_bytes(embedding))
        with self._lock:
            self._embeddings[key] = embedding
            while len(self._embeddings) > EMBEDDING_CACHE_SIZE:
                self._embeddings.popitem(last=False)
        return embedding, source

    def clear(self, image_key: str | None = None) -> None:
        """Forget the cached data of one image (all encoders), or of every image."""
        with self._lock:
            if image_key is None:
                self._embeddings.clear()
                self._contexts.clear()
                return
            self._contexts.pop(image_key, None)
            for key in [k for k in self._embeddings if k.rsplit(":", 1)[0] == image_key]:
                del self._embeddings[key]

    # -- public API --

    def precompute(self, image_key: str, decoded: DecodedImage) -> dict[str, Any]:
        """Prepare an image ahead of the first click (the engine calls this at ingest).

        Computes (or loads) the SAM embedding when SAM serves, and the working data
        of the background check either way.
        """
        timings: dict[str, float] = {}
        started = time.perf_counter()
        self._context(image_key, decoded)
        timings["context"] = round((time.perf_counter() - started) * 1000, 2)
        source = None
        if self.backend == "sam":
            _, source = self._embedding(image_key, decoded, timings)
        return {"status": "ok", "backend": self.backend, "embedding_source": source, "timings_ms": timings}

    def segment(
        self,
        image_key: str,
        decoded: DecodedImage,
        *,
        points: list[list[float]] | None = None,
        labels: list[int] | None = None,
        box: list[float] | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = True,
    ) -> dict[str, Any]:
        """Segment the structure a prompt designates.

        Parameters
        ----------
        image_key:
            Identifies the image (and frame) for the caches; the same key must always
            mean the same pixels.
        decoded:
            The image; masks are computed from its display rendering.
        points, labels:
            ``[[x, y], ...]`` in image pixels and one label each (1 foreground,
            0 background; default all foreground).
        box:
            ``[x1, y1, x2, y2]`` in image pixels.
        mask_input:
            ``low_res_logits`` of the previous result, to refine it (SAM only; the
            classical backend ignores it).
        multimask:
            Three candidates (SAM's multimask output) or one.

        Returns
        -------
        dict
            ``status``, ``backend``, ``model`` (SAM: the encoder's ``describe()`` with the
            decoder's under ``decoder``; classical: None), ``model_trained`` (None for
            classical), ``masks`` (``[{"mask": bool array of the image size, "score",
            "area_px"}]``, non-empty), ``best`` (index into ``masks``), ``low_res_logits``
            (``(256, 256)`` float32 of the best SAM mask, for the next click; None for
            classical), ``embedding_source`` (SAM: computed / memory / store; classical:
            None) and ``timings_ms``. Classical candidates come smallest first.
        """
        started = time.perf_counter()
        prompt = validate_prompt(decoded.rows, decoded.columns, points=points, labels=labels, box=box,
                                 mask_input=mask_input)
        context = self._context(image_key, decoded)
        seeds = context.to_work(prompt.foreground)
        if len(seeds) and context.air[seeds[:, 0], seeds[:, 1]].any():
            raise _invalid("point on background: a foreground point lies on the air outside the body",
                           argument="points")
        timings = {"validate": round((time.perf_counter() - started) * 1000, 2)}
        if self.backend == "sam":
            result = self._segment_sam(image_key, decoded, prompt, multimask, timings)
        else:
            result = self._segment_classical(context, prompt, multimask, timings)
        timings["total"] = round((time.perf_counter() - started) * 1000, 2)
        result["timings_ms"] = timings
        return result

    def _segment_sam(self, image_key: str, decoded: DecodedImage, prompt: Prompt, multimask: bool,
                     timings: dict[str, float]) -> dict[str, Any]:
        encoder, decoder = self._sam_entries()
        embedding, source = self._embedding(image_key, decoded, timings)
        model = self.registry.onnx(decoder)  # type: ignore[union-attr]
        long_side = int(encoder.spec.get("input", {}).get("long_side", SAM_LONG_SIDE))
        original_size = (decoded.rows, decoded.columns)
        coords, point_labels = decoder_prompt(prompt, original_size, long_side)
        has_mask = prompt.mask_input is not None
        feeds = {
            "image_embeddings": embedding,
            "point_coords": coords,
            "point_labels": point_labels,
            "mask_input": prompt.mask_input if has_mask else np.zeros((1, 1, SAM_LOW_RES, SAM_LOW_RES), np.float32),
            "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
            "orig_im_size": np.array(original_size, dtype=np.float32),
        }
        started = time.perf_counter()
        masks, scores, low_res = model.run(feeds)
        decoded_at = time.perf_counter()
        output = decoder.spec.get("output", {})
        threshold = float(output.get("mask_threshold", 0.0))
        indices = output.get("multimask_indices", [1, 2, 3]) if multimask else [output.get("single_mask_index", 0)]
        candidates = []
        for index in indices:
            mask = masks[0, index] > threshold
            area = int(mask.sum())
            if area:
                candidates.append({"index": index, "mask": mask, "score": float(scores[0, index]), "area_px": area})
        timings["decoder"] = round((decoded_at - started) * 1000, 2)
        timings["postprocess"] = round((time.perf_counter() - decoded_at) * 1000, 2)
        if not candidates:
            raise _invalid("the prompt selects nothing (empty mask); click inside the structure",
                           backend="sam")
        best = int(np.argmax([c["score"] for c in candidates]))
        return {
            "status": "ok",
            "backend": "sam",
            "model": encoder.describe() | {"device": self.registry.onnx(encoder).device,  # type: ignore[union-attr]
                                           "decoder": decoder.describe()},
            "model_trained": bool(encoder.trained and decoder.trained),
            "masks": [{"mask": c["mask"], "score": round(c["score"], 4), "area_px": c["area_px"]}
                      for c in candidates],
            "best": best,
            "low_res_logits": low_res[0, candidates[best]["index"]].astype(np.float32),
            "embedding_source": source,
        }

    def _segment_classical(self, context: ImageContext, prompt: Prompt, multimask: bool,
                           timings: dict[str, float]) -> dict[str, Any]:
        started = time.perf_counter()
        candidates = classical_candidates(context, prompt)
        grown = time.perf_counter()
        if not candidates:
            raise _invalid("the prompt selects nothing (empty mask); click inside the structure",
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
                raise _invalid("the prompt selects nothing (empty mask); click inside the structure",
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


def _embedding_to_bytes(embedding: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(embedding, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _embedding_from_bytes(blob: bytes, expected: tuple[int, ...]) -> np.ndarray | None:
    """A cached embedding, or None when the bytes are not a float32 array of ``expected`` shape."""
    try:
        array = np.load(io.BytesIO(blob), allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.dtype != np.float32 or tuple(array.shape) != expected:
        return None
    return array
