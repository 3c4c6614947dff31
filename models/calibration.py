"""Real images for static quantization and parity checks, prepared like the runtime does.

Default source: the radiographs of the ``pydicom-data`` package (a CR chest PA and a
CR tibia, with their JPEG 2000 twins). A site can pass its own folder of DICOM/PNG/JPEG
chest radiographs. Each image is decoded and preprocessed by the engine itself, so the
calibration sees exactly the tensors the runtime will feed. Augmented views (crops,
flips, gamma) widen the activation ranges the calibrator sees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.analysis.preprocess import center_crop, xrv_input, xrv_resize
from engine.errors import MedVisionError
from engine.imaging import DecodedImage, decode_image

log = logging.getLogger(__name__)

#: pydicom-data files used by default: (file, role). "calibrate" images feed the
#: calibrator; "holdout" images (lossy twins never seen in calibration) feed parity.
DEFAULT_FILES = (
    ("RG1_UNCR.dcm", "calibrate"),
    ("RG3_UNCR.dcm", "calibrate"),
    ("RG1_J2KI.dcm", "holdout"),
    ("RG3_J2KI.dcm", "holdout"),
)


@dataclass
class CalibrationSet:
    """Tensors for the calibrator and for the int8-vs-fp32 parity check."""

    calibrate: np.ndarray
    holdout: np.ndarray
    sources: list[str]


@dataclass
class CalibrationImages:
    """Decoded real images with their role ("calibrate" or "holdout").

    Each model builder prepares its own tensors from these (different resolutions and
    normalisations), so every model is calibrated on the same real radiographs.
    """

    items: list[tuple[str, str, DecodedImage]]
    _sets: dict[tuple[int, int, int], CalibrationSet] = field(default_factory=dict, repr=False, compare=False)

    @property
    def sources(self) -> list[str]:  # noqa: D102
        return [name for name, _, _ in self.items]

    def by_role(self, role: str) -> list[DecodedImage]:
        """The decoded images of one role."""
        return [decoded for _, r, decoded in self.items if r == role]

    def xrv_set(self, resolution: int = 224, *, augmented: int = 30, seed: int = 0) -> CalibrationSet:
        """torchxrayvision-normalised tensors at ``resolution``, with augmented views (computed once per
        set of arguments; callers must not modify the arrays)."""
        key = (resolution, augmented, seed)
        if key not in self._sets:
            self._sets[key] = self._xrv_set(resolution, augmented, seed)
        return self._sets[key]

    def _xrv_set(self, resolution: int, augmented: int, seed: int) -> CalibrationSet:
        rng = np.random.default_rng(seed)
        calibrate = [xrv_input(d) for d in self.by_role("calibrate")]
        holdout = [xrv_input(d) for d in self.by_role("holdout")]
        square = lambda image: xrv_resize(np.ascontiguousarray(center_crop(image)), resolution)  # noqa: E731
        calib = [square(i) for i in calibrate]
        calib += [_augment(calibrate[i % len(calibrate)], rng, resolution) for i in range(augmented)]
        hold = [square(i) for i in holdout]
        hold += [_augment(holdout[i % len(holdout)], rng, resolution) for i in range(max(4, augmented // 4))]
        as_batch = lambda items: np.stack(items)[:, None].astype(np.float32)  # noqa: E731
        return CalibrationSet(calibrate=as_batch(calib), holdout=as_batch(hold), sources=self.sources)


def _default_paths() -> list[tuple[Path, str]]:
    from pydicom.data import get_testdata_file

    found = []
    for name, role in DEFAULT_FILES:
        path = get_testdata_file(name)
        if path is None:
            raise FileNotFoundError(f"pydicom-data does not provide {name}; install pydicom-data")
        found.append((Path(path), role))
    return found


def _folder_paths(folder: Path) -> list[tuple[Path, str]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    # Every fourth image is held out for the parity check.
    return [(p, "holdout" if i % 4 == 3 else "calibrate") for i, p in enumerate(files)]


def _augment(image: np.ndarray, rng: np.random.Generator, resolution: int) -> np.ndarray:
    rows, columns = image.shape
    scale = rng.uniform(0.7, 1.0)
    height, width = int(rows * scale), int(columns * scale)
    top, left = rng.integers(0, rows - height + 1), rng.integers(0, columns - width + 1)
    view = image[top : top + height, left : left + width]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    gamma = rng.uniform(0.7, 1.4)
    view = (((view + 1024.0) / 2048.0).clip(0, 1) ** gamma * 2048.0 - 1024.0).astype(np.float32)
    return xrv_resize(np.ascontiguousarray(center_crop(view)), resolution)


def load_images(folder: Path | None = None) -> CalibrationImages:
    """Decode the calibration images (the pydicom-data radiographs unless ``folder``)."""
    paths = _folder_paths(folder) if folder else _default_paths()
    items = []
    for path, role in paths:
        try:
            items.append((path.name, role, decode_image(path)))
        except MedVisionError as exc:
            log.warning("skipping calibration file %s: %s", path.name, exc)
    if not any(r == "calibrate" for _, r, _ in items) or not any(r == "holdout" for _, r, _ in items):
        raise ValueError("calibration needs at least one calibration and one hold-out image")
    return CalibrationImages(items)


def load_calibration(folder: Path | None = None, *, resolution: int = 224, augmented: int = 30,
                     seed: int = 0) -> CalibrationSet:
    """Shortcut: :func:`load_images` then :meth:`CalibrationImages.xrv_set`."""
    return load_images(folder).xrv_set(resolution, augmented=augmented, seed=seed)
