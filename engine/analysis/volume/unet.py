"""Whole-body CT segmentation with an nnU-Net v2 3D U-Net run by ONNX Runtime.

What nnU-Net's predictor does, without torch: reorient the volume to the axes the network
was trained on (the manifest's ``orientation``: TotalSegmentator feeds nnU-Net the voxels
of an ``as_closest_canonical`` RAS NIfTI), apply the plans' ``transpose_forward``, resample
to the plans' spacing (cubic spline), CTNormalization (clip to the foreground 0.5/99.5
percentiles, z-score with the foreground mean/std), pad to at least one patch, slide the
patch with step 0.5 and blend the logits with a Gaussian importance map (sigma 1/8 of the
patch), argmax, then undo each step for the label map (nearest neighbour), so every mask
lies on the caller's grid. nnU-Net's crop to the non-zero bounding box is skipped: CT air
is -1000 HU, so that box is the whole volume. No test-time mirroring.

Input follows the shared volume contract: ``hu`` is ``(z, y, x)`` and ``spacing_zyx`` in mm;
``orientation`` says where the x, y, z index axes point (``"LPS"`` for a DICOM stack
sorted along the slice normal, ``"RAS"`` for a canonical NIfTI).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from scipy import ndimage

from engine.errors import ErrorCode, MedVisionError
from engine.vocabulary import UNTRAINED_BANNER

if TYPE_CHECKING:
    from engine.inference.registry import ModelRegistry

TASK = "segment3d"
STEP = 0.5
SIGMA_SCALE = 1.0 / 8
#: The blended logits (classes x network grid, float32) may use at most this much memory.
MAX_LOGIT_BYTES = 4 << 30
_AXIS_OF = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


class PatchModel(Protocol):
    """Anything that maps ``{input_name: (1, 1, z, y, x) float32}`` to ``[(1, C, z, y, x) logits]``."""

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...  # noqa: D102


@dataclass(frozen=True)
class UNetSpec:
    """What the runtime needs from a ``segment3d`` manifest entry (written by ``models/volume_unet.py``)."""

    patch_size: tuple[int, int, int]      # network axis order
    spacing_mm: tuple[float, float, float]  # network axis order
    transpose_forward: tuple[int, int, int]
    orientation: str
    clip: tuple[float, float]
    mean: float
    std: float
    labels: tuple[str, ...]               # labels[i]: name of label (= output channel) i; 0 is background
    input_name: str = "image"
    divisor: tuple[int, int, int] = (1, 1, 1)

    @classmethod
    def from_manifest(cls, spec: dict[str, Any]) -> UNetSpec:
        """Parse a manifest entry; a malformed one is ``MODEL_LOAD_ERROR`` naming the model."""
        try:
            source = spec["input"]
            norm = source["normalization"]
            if norm["scheme"] != "CTNormalization":
                raise ValueError(f"normalisation {norm['scheme']!r} is not CTNormalization")
            parsed = cls(
                patch_size=_triple(source["patch_size"], int),
                spacing_mm=_triple(source["spacing_mm"], float),
                transpose_forward=_triple(source["transpose_forward"], int),
                orientation=_check_orientation(source["orientation"]),
                clip=(float(norm["percentile_00_5"]), float(norm["percentile_99_5"])),
                mean=float(norm["mean"]), std=float(norm["std"]),
                labels=tuple(spec["labels"]), input_name=source.get("name", "image"),
                divisor=_triple(source.get("divisor", [1, 1, 1]), int),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MedVisionError(ErrorCode.MODEL_LOAD_ERROR,
                                 f"model {spec.get('id')} has no usable 3D U-Net input spec: {exc}") from exc
        if sorted(parsed.transpose_forward) != [0, 1, 2] or len(parsed.labels) < 2:
            raise MedVisionError(ErrorCode.MODEL_LOAD_ERROR, f"model {spec.get('id')}: bad transpose or labels")
        if any(p % d for p, d in zip(parsed.patch_size, parsed.divisor, strict=True)):
            raise MedVisionError(ErrorCode.MODEL_LOAD_ERROR, f"model {spec.get('id')}: patch not divisible by pooling")
        return parsed


def _triple(values: Any, kind: type) -> tuple:
    items = tuple(kind(v) for v in values)
    if len(items) != 3:
        raise ValueError(f"expected three values, got {list(values)}")
    return items


def _check_orientation(code: str) -> str:
    code = str(code).upper()
    if len(code) != 3 or any(c not in _AXIS_OF for c in code) or len({_AXIS_OF[c] for c in code}) != 3:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                             f"orientation {code!r} is not a code such as LPS or RAS (one letter per x, y, z axis)")
    return code


# --- geometry -------------------------------------------------------------------------------


def reorient(volume: np.ndarray, source: str, target: str) -> np.ndarray:
    """A ``(z, y, x)`` array whose x, y, z axes point along ``source`` re-laid to point along ``target``.

    Codes name where each index axis increases, x first: ``"LPS"`` means x towards the
    patient's left, y posterior, z superior. Permutes and flips only (no interpolation).
    """
    source, target = _check_orientation(source), _check_orientation(target)
    xyz = volume.transpose(2, 1, 0)
    order = [next(i for i, s in enumerate(source) if _AXIS_OF[s] == _AXIS_OF[t]) for t in target]
    out = xyz.transpose(order)
    flips = tuple(axis for axis, t in enumerate(target) if source[order[axis]] != t)
    if flips:
        out = np.flip(out, axis=flips)
    return out.transpose(2, 1, 0)


def reorient_spacing(spacing_zyx: tuple[float, ...], source: str, target: str) -> tuple[float, float, float]:
    """The ``(z, y, x)`` spacing after :func:`reorient` with the same codes."""
    source, target = _check_orientation(source), _check_orientation(target)
    xyz = spacing_zyx[::-1]
    order = [next(i for i, s in enumerate(source) if _AXIS_OF[s] == _AXIS_OF[t]) for t in target]
    return tuple(float(xyz[i]) for i in order)[::-1]


def resample(volume: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """``volume`` resampled onto ``shape`` (same extent); ``order`` 0 is nearest neighbour, exact shape."""
    if tuple(volume.shape) == tuple(shape):
        return volume
    if order == 0:
        index = [np.minimum(((np.arange(n) + 0.5) * volume.shape[a] / n).astype(np.intp), volume.shape[a] - 1)
                 for a, n in enumerate(shape)]
        return volume[np.ix_(*index)]
    zoom = [n / s for n, s in zip(shape, volume.shape, strict=True)]
    out = ndimage.zoom(volume, zoom, order=order, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # zoom rounds each axis; pad/crop the odd voxel
        out = np.pad(out, [(0, max(0, n - s)) for n, s in zip(shape, out.shape, strict=True)], mode="edge")
        out = out[tuple(slice(0, n) for n in shape)]
    return out


def ct_normalize(volume: np.ndarray, clip: tuple[float, float], mean: float, std: float) -> np.ndarray:
    """nnU-Net's CTNormalization: clip to the foreground percentiles, z-score with the foreground statistics."""
    out = np.clip(volume.astype(np.float32), clip[0], clip[1])
    out -= np.float32(mean)
    out /= np.float32(max(std, 1e-8))
    return out


# --- sliding window -------------------------------------------------------------------------


@lru_cache(maxsize=4)
def gaussian_importance(patch_size: tuple[int, ...], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """nnU-Net's importance map: a Gaussian (sigma = patch * scale) with peak 1, zeros raised to the minimum."""
    impulse = np.zeros(patch_size, dtype=np.float64)
    impulse[tuple(s // 2 for s in patch_size)] = 1
    weights = ndimage.gaussian_filter(impulse, [s * sigma_scale for s in patch_size], 0, mode="constant", cval=0)
    weights /= weights.max()
    weights[weights == 0] = weights[weights > 0].min()
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def window_starts(image_size: tuple[int, ...], patch_size: tuple[int, ...], step: float = STEP) -> list[list[int]]:
    """Per axis, the start of each window: as many as a step of ``step * patch`` needs, spread evenly."""
    if not 0 < step <= 1:
        raise ValueError("step must be in (0, 1]")
    starts = []
    for size, patch in zip(image_size, patch_size, strict=True):
        if size < patch:
            raise ValueError(f"image size {size} is smaller than the patch {patch}")
        count = int(np.ceil((size - patch) / (patch * step))) + 1
        stride = (size - patch) / (count - 1) if count > 1 else 0
        starts.append([int(np.round(stride * i)) for i in range(count)])
    return starts


def pad_to(volume: np.ndarray, minimum: tuple[int, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``volume`` padded with zeros (centred) to at least ``minimum``; the slices that undo it."""
    pads = [((max(m - s, 0)) // 2, max(m - s, 0) - (max(m - s, 0)) // 2) for s, m in zip(volume.shape, minimum, strict=True)]
    if not any(a or b for a, b in pads):
        return volume, tuple(slice(None) for _ in volume.shape)
    padded = np.pad(volume, pads, mode="constant", constant_values=0)
    return padded, tuple(slice(a, a + s) for (a, _), s in zip(pads, volume.shape, strict=True))


def sliding_window_argmax(model: PatchModel, image: np.ndarray, patch_size: tuple[int, int, int], num_classes: int,
                          *, input_name: str = "image", step: float = STEP) -> tuple[np.ndarray, int]:
    """Label map of a normalised ``(z, y, x)`` image: Gaussian-blended patch logits, argmax; and the window count.

    The blended sum is not divided by the summed weights: that positive factor does not
    change the argmax.
    """
    padded, unpad = pad_to(image, patch_size)
    needed = num_classes * padded.size * 4
    if needed > MAX_LOGIT_BYTES:
        raise MedVisionError(ErrorCode.IMAGE_TOO_LARGE,
                             f"the volume needs {needed / 2**30:.1f} GiB of logits at the model's spacing "
                             f"(limit {MAX_LOGIT_BYTES / 2**30:.0f} GiB)", shape=list(image.shape))
    weights = gaussian_importance(tuple(patch_size))
    logits = np.zeros((num_classes, *padded.shape), dtype=np.float32)
    starts = window_starts(padded.shape, patch_size, step)
    windows = 0
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                box = (slice(z, z + patch_size[0]), slice(y, y + patch_size[1]), slice(x, x + patch_size[2]))
                feed = np.ascontiguousarray(padded[box], dtype=np.float32)[None, None]
                out = model.run({input_name: feed})[0]
                if out.shape != (1, num_classes, *patch_size):
                    raise MedVisionError(ErrorCode.INFERENCE_ERROR,
                                         f"the 3D U-Net returned {out.shape}, expected {(1, num_classes, *patch_size)}")
                scores = out[0] if out.flags.writeable else out[0].copy()
                scores *= weights
                logits[(slice(None), *box)] += scores
                windows += 1
    return logits.argmax(axis=0)[unpad].astype(np.uint8 if num_classes <= 256 else np.uint16), windows


# --- the result -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Structure:
    """One label found in the volume."""

    label: int
    name: str
    voxels: int
    volume_ml: float


@dataclass(frozen=True)
class VolumeSegmentation:
    """A label map on the caller's ``(z, y, x)`` grid, the structures found, and what made them."""

    label_map: np.ndarray = field(repr=False)
    labels: tuple[str, ...]
    spacing_zyx: tuple[float, float, float]
    structures: tuple[Structure, ...]
    model: dict[str, Any]
    backend: str
    trained: bool
    windows: int
    network_shape: tuple[int, int, int]
    orientation: str | None
    seconds: float

    @property
    def banner(self) -> str | None:
        """The untrained-model banner, when the weights are untrained."""
        return None if self.trained else UNTRAINED_BANNER

    def mask(self, label: int | str) -> np.ndarray:
        """The boolean mask of one label (number or name), on the input grid."""
        number = self.labels.index(label) if isinstance(label, str) else int(label)
        if not 0 < number < len(self.labels):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no label {label!r} in this model's label map")
        return self.label_map == number

    def masks(self) -> dict[str, np.ndarray]:
        """One boolean mask per structure found (name -> mask)."""
        return {s.name: self.mask(s.label) for s in self.structures}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "task": TASK, "model": self.model, "backend": self.backend, "model_trained": self.trained,
            "banner": self.banner, "spacing_zyx": list(self.spacing_zyx), "shape_zyx": list(self.label_map.shape),
            "orientation": self.orientation, "windows": self.windows, "network_shape_zyx": list(self.network_shape),
            "seconds": round(self.seconds, 3),
            "structures": [{"label": s.label, "name": s.name, "voxels": s.voxels, "volume_ml": s.volume_ml}
                           for s in self.structures],
        }


def _check_input(hu: np.ndarray, spacing_zyx: tuple[float, ...]) -> tuple[float, float, float]:
    if not isinstance(hu, np.ndarray) or hu.ndim != 3 or min(hu.shape) < 1:
        raise MedVisionError(ErrorCode.INVALID_IMAGE, "the 3D U-Net needs a (z, y, x) volume")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"spacing {list(spacing_zyx)} is not three positive mm values")
    if not np.isfinite(hu).all():
        raise MedVisionError(ErrorCode.INVALID_IMAGE, "the volume holds non-finite values")
    return spacing  # type: ignore[return-value]


def network_grid(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, int, int]:
    """nnU-Net's new shape for a resampling: ``round(shape * spacing / target)``, at least 1."""
    return tuple(max(1, int(np.round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))


def preprocess(hu: np.ndarray, spacing_zyx: tuple[float, ...], spec: UNetSpec,
               orientation: str | None) -> tuple[np.ndarray, tuple[int, ...]]:
    """The normalised network-grid image, and the shape it had before resampling (network axes)."""
    volume, spacing = hu, tuple(spacing_zyx)
    if orientation is not None:
        volume = reorient(volume, orientation, spec.orientation)
        spacing = reorient_spacing(spacing, orientation, spec.orientation)
    volume = volume.transpose(spec.transpose_forward)
    spacing = tuple(spacing[a] for a in spec.transpose_forward)
    before = volume.shape
    target = network_grid(before, spacing, spec.spacing_mm)
    if max(abs(s - t) / t for s, t in zip(spacing, spec.spacing_mm, strict=True)) < 1e-3:
        target = before
    if int(np.prod(target)) * len(spec.labels) * 4 > MAX_LOGIT_BYTES:
        raise MedVisionError(ErrorCode.IMAGE_TOO_LARGE,
                             f"the volume is {list(target)} voxels at the model's spacing: too large to segment")
    volume = resample(volume.astype(np.float32, copy=False), target, order=3)
    return ct_normalize(volume, spec.clip, spec.mean, spec.std), before


def segment_ct(hu: np.ndarray, spacing_zyx: tuple[float, ...], *, model: PatchModel, spec: dict[str, Any],
               orientation: str | None = None, backend: str | None = None, step: float = STEP) -> VolumeSegmentation:
    """Segment a CT volume (HU, ``(z, y, x)``) with the 3D U-Net of manifest entry ``spec``.

    ``orientation`` is where the volume's x, y, z axes point (``"LPS"``, ``"RAS"``...);
    ``None`` feeds the axes as they are (only right for volumes already laid out like the
    training data). Returns the label map on the input grid with one entry per structure
    found (voxel count, volume in mL).
    """
    started = time.perf_counter()
    spacing = _check_input(hu, spacing_zyx)
    unet = UNetSpec.from_manifest(spec)
    image, before = preprocess(hu, spacing, unet, orientation)
    labels, windows = sliding_window_argmax(model, image, unet.patch_size, len(unet.labels),
                                            input_name=unet.input_name, step=step)
    network_shape = labels.shape
    labels = resample(labels, before, order=0).transpose(np.argsort(unet.transpose_forward))
    if orientation is not None:
        labels = reorient(labels, unet.orientation, orientation)
    labels = np.ascontiguousarray(labels)
    counts = np.bincount(labels.ravel(), minlength=len(unet.labels))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    structures = tuple(Structure(label, unet.labels[label], int(counts[label]), round(int(counts[label]) * voxel_ml, 3))
                       for label in range(1, len(unet.labels)) if counts[label])
    return VolumeSegmentation(
        label_map=labels, labels=unet.labels, spacing_zyx=spacing, structures=structures,
        model={"id": spec.get("id"), "precision": spec.get("precision"), "sha256": spec.get("sha256"),
               "trained": bool(spec.get("trained")), "version": spec.get("version")},
        backend=backend or f"onnxruntime-{spec.get('precision')}", trained=bool(spec.get("trained")),
        windows=windows, network_shape=tuple(int(n) for n in network_shape), orientation=orientation,
        seconds=time.perf_counter() - started,
    )


def segment_ct_with_pack(models: ModelRegistry, hu: np.ndarray, spacing_zyx: tuple[float, ...], *,
                         orientation: str | None = None) -> VolumeSegmentation:
    """:func:`segment_ct` with the pack's ``segment3d`` model (honouring ``MEDVISION_PRECISION``)."""
    entry = models.require(TASK)
    onnx_model = models.onnx(entry)
    return segment_ct(hu, spacing_zyx, model=onnx_model, spec=entry.spec, orientation=orientation,
                      backend=f"onnxruntime-{entry.precision}-{onnx_model.device}")
