"""Full-resolution images through a window/level lookup table.

The stored values (up to 16 bits) stay in memory as decoded; a window/level change
only rebuilds a table of one entry per possible stored value (modality LUT, VOI
window and MONOCHROME1 inversion folded in) and indexes it with the image: one
``take`` over the pixels, no float pass, no 8-bit copy kept between frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from desktop.qt import QGraphicsPixmapItem, QImage, QPixmap, Qt
from engine.imaging import DecodedImage
from engine.imaging.decode import window_to_uint8

#: CT window presets (center, width) in HU: the CT defaults OHIF Viewers ships
#: (extensions/cornerstone/src/components/WindowLevelActionMenu/defaultWindowLevelPresets.ts:
#: Soft tissue W400/L40, Lung W1500/L-600, Liver W150/L90, Bone W2500/L480, Brain W80/L40).
#: OHIF has no separate mediastinum or abdomen window: its soft-tissue window is used for both.
CT_PRESETS = {"Soft tissue (mediastinum, abdomen)": (40.0, 400.0), "Lung": (-600.0, 1500.0),
              "Liver": (90.0, 150.0), "Bone": (480.0, 2500.0), "Brain": (40.0, 80.0)}


@dataclass
class WindowedImage:
    """Stored values plus a table from stored value to modality value, ready for W/L."""

    decoded: DecodedImage
    index: np.ndarray  # stored values shifted to start at 0 (uintN), or None for colour
    values: np.ndarray  # modality value of each index (float32)

    @classmethod
    def from_decoded(cls, decoded: DecodedImage) -> WindowedImage:
        """Build the stored-value -> modality-value table (run it off the GUI thread)."""
        raw = decoded.raw
        if decoded.is_color or raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
            return cls(decoded, raw, np.zeros(0, np.float32))
        low = int(raw.min())
        index = raw if low >= 0 and raw.dtype.kind == "u" else (raw.astype(np.int64) - low).astype(np.uint32)
        offset = 0 if index is raw else low
        size = int(index.max()) + 1
        # Scatter the decoded modality values into the table: exact for rescale and for
        # a Modality LUT Sequence alike; stored values absent from the image stay linear.
        values = np.arange(offset, offset + size, dtype=np.float32)
        slope_sample = decoded.pixels.ravel()[:: max(1, index.size // 4096)]
        index_sample = index.ravel()[:: max(1, index.size // 4096)]
        if slope_sample.size > 1 and np.ptp(index_sample) > 0:
            slope, intercept = np.polyfit(index_sample.astype(np.float64), slope_sample.astype(np.float64), 1)
            values = (np.arange(size, dtype=np.float64) * slope + intercept).astype(np.float32)
        values[index.ravel()] = decoded.pixels.ravel()
        return cls(decoded, np.ascontiguousarray(index), values)

    @property
    def is_color(self) -> bool:
        return self.values.size == 0

    def value_at(self, x: int, y: int) -> tuple[float, float]:
        """(stored value, modality value) at a pixel."""
        stored = self.decoded.raw[y, x]
        return (float(np.mean(stored)), float(np.mean(self.decoded.pixels[y, x])))

    def lut(self, center: float, width: float) -> np.ndarray:
        """The uint8 table for a window (the file's VOI LUT when ``center`` is None)."""
        d = self.decoded
        if center is None and d.voi_lut is not None:
            first_map, table = d.voi_lut
            return table[np.clip(self.values - first_map, 0, len(table) - 1).astype(np.intp)]
        center = d.window_center if center is None else center
        width = d.window_width if width is None else width
        return window_to_uint8(self.values, center, max(width, 1.0), d.voi_function, invert=d.invert)

    def render(self, center: float | None, width: float | None) -> QImage:
        """The full-resolution 8-bit view of the image under a window (a new QImage)."""
        d = self.decoded
        if self.is_color:
            rgb = d.display(center, width) if center is not None else d.display()
            rgb = np.ascontiguousarray(rgb)
            image = QImage(rgb.data, d.columns, d.rows, rgb.strides[0], QImage.Format.Format_RGB888)
            return image.copy()
        gray = np.take(self.lut(center, width), self.index)
        image = QImage(gray.data, d.columns, d.rows, gray.strides[0], QImage.Format.Format_Grayscale8)
        image.ndarray = gray  # the QImage borrows the buffer: keep it alive with the image
        return image

    def auto_window(self) -> tuple[float, float]:
        """A window over the 1st..99th percentile of the modality values."""
        sample = self.decoded.pixels[::4, ::4]
        low, high = np.percentile(sample, [1, 99])
        return float((low + high) / 2), float(max(high - low, 1.0))

    def full_window(self) -> tuple[float, float]:
        low, high = float(self.decoded.pixels.min()), float(self.decoded.pixels.max())
        return (low + high) / 2, max(high - low, 1.0)


class ImageItem(QGraphicsPixmapItem):
    """The original-image layer: a pixmap re-rendered on each window/level change."""

    def __init__(self, image: WindowedImage, first_frame: QImage | None = None) -> None:
        super().__init__()
        self.image = image
        self.setTransformationMode(Qt.TransformationMode.FastTransformation)
        self.setShapeMode(QGraphicsPixmapItem.ShapeMode.BoundingRectShape)
        self.center: float | None = None
        self.width: float | None = None
        self.setPixmap(QPixmap.fromImage(first_frame if first_frame is not None else image.render(None, None)))

    def set_window(self, center: float | None, width: float | None) -> None:
        self.center, self.width = center, width
        self.setPixmap(QPixmap.fromImage(self.image.render(center, width)))

    def effective_window(self) -> tuple[float, float]:
        d = self.image.decoded
        return (d.window_center if self.center is None else self.center,
                d.window_width if self.width is None else self.width)
