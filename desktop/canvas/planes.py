"""One plane (axial, coronal or sagittal) of a cached volume: scroll, crosshair, HU readout, corner text.

The scene is in millimetres: the plane's pixmap is scaled by its pixel spacing, so a
distance drawn in the scene is a distance in mm on any plane. The voxels are the
engine's assembled :class:`engine.imaging.volume.Volume` (float32 HU, (z, y, x)); a
plane is a numpy view of them, laid out as the engine's ``reslice`` does: coronal and
sagittal planes have z along their rows, highest z first (the head at the top for an
axial stack sorted foot to head).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from desktop.canvas.corners import paint_corner_text
from desktop.qt import (
    QColor,
    QGraphicsItem,
    QGraphicsLineItem,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QImage,
    QLineF,
    QPainter,
    QPen,
    QPixmap,
    QPointF,
    QRectF,
    Qt,
    Signal,
)
from engine.imaging.decode import window_to_uint8
from engine.imaging.volume.planes import PLANES, plane_pixels, plane_spacing

AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}  # the voxel axis (z, y, x) a plane's index runs along


def voxel_of(plane: str, index: int, row: int, column: int, depth: int) -> tuple[int, int, int]:
    """The voxel (z, y, x) under pixel (row, column) of a plane; ``depth`` is the volume's z size."""
    if plane == "axial":
        return index, row, column
    if plane == "coronal":
        return depth - 1 - row, index, column
    return depth - 1 - row, column, index


def pixel_of(plane: str, position: tuple[int, int, int], depth: int) -> tuple[int, int]:
    """(row, column) of voxel ``position`` (z, y, x) in a plane (the inverse of :func:`voxel_of`)."""
    z, y, x = position
    if plane == "axial":
        return y, x
    if plane == "coronal":
        return depth - 1 - z, x
    return depth - 1 - z, y


def render_plane(pixels: np.ndarray, center: float, width: float) -> QImage:
    """8-bit rendering of HU pixels under a linear window (the QImage keeps its buffer alive)."""
    gray = np.ascontiguousarray(window_to_uint8(pixels, center, max(width, 1.0)))
    image = QImage(gray.data, gray.shape[1], gray.shape[0], gray.strides[0], QImage.Format.Format_Grayscale8)
    image.ndarray = gray
    return image


class PlaneView(QGraphicsView):
    """One plane of the volume. Wheel, Up/Down, PageUp/PageDown and Ctrl+left-drag scroll;
    a left click moves the shared position (the other planes follow); the cursor reads HU;
    Shift+left-drag measures a distance in mm (shown, not stored: a resliced plane is no stored image)."""

    position_picked = Signal(object)  # (z, y, x)
    index_stepped = Signal(str, int)  # plane, step
    cursor_moved = Signal(str)

    def __init__(self, plane: str, parent: Any = None) -> None:
        super().__init__(parent)
        self.plane = plane
        self.setScene(QGraphicsScene(self))
        self.setBackgroundBrush(QColor(0, 0, 0))
        self.setMouseTracking(True)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
        self.volume: Any = None
        self.position: tuple[int, int, int] = (0, 0, 0)
        self.window: tuple[float, float] = (40.0, 400.0)
        self.readout_text = ""
        self._drag: tuple[float, int] | None = None
        self.pixmap_item = QGraphicsPixmapItem()
        self.pixmap_item.setTransformationMode(Qt.TransformationMode.FastTransformation)
        self.scene().addItem(self.pixmap_item)
        pen = QPen(QColor(80, 200, 255))
        pen.setCosmetic(True)
        self.lines = (QGraphicsLineItem(), QGraphicsLineItem())  # vertical, horizontal
        for line in self.lines:
            line.setPen(pen)
            self.scene().addItem(line)
        ruler_pen = QPen(QColor(255, 220, 0))
        ruler_pen.setCosmetic(True)
        self.ruler, self.ruler_label = QGraphicsLineItem(), QGraphicsSimpleTextItem()
        self.ruler.setPen(ruler_pen)
        self.ruler_label.setBrush(QColor(255, 220, 0))
        self.ruler_label.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        for item in (self.ruler, self.ruler_label):
            item.hide()
            self.scene().addItem(item)
        self.measurement_mm: float | None = None
        self._measuring = False

    # -- state ---------------------------------------------------------------------------------
    @property
    def index(self) -> int:
        return self.position[AXIS[self.plane]]

    @property
    def size(self) -> int:
        return 0 if self.volume is None else self.volume.voxels.shape[AXIS[self.plane]]

    def pixels(self) -> np.ndarray:
        return plane_pixels(self.volume.voxels, self.plane, self.index)

    def set_volume(self, volume: Any) -> None:
        self.volume = volume
        rows_mm, cols_mm = plane_spacing(volume.spacing_zyx, self.plane)
        self.pixmap_item.setTransform(self.pixmap_item.transform().fromScale(cols_mm, rows_mm))
        rows, columns = plane_pixels(volume.voxels, self.plane, 0).shape
        self.scene().setSceneRect(QRectF(0, 0, columns * cols_mm, rows * rows_mm))

    def show_state(self, position: tuple[int, int, int], window: tuple[float, float]) -> None:
        """Re-render at ``position`` (z, y, x) under ``window`` (center, width)."""
        if self.volume is None:
            return
        self.position, self.window = position, window
        self.pixmap_item.setPixmap(QPixmap.fromImage(render_plane(self.pixels(), *window)))
        self._place_crosshair()
        self.viewport().update()

    def move_crosshair(self, position: tuple[int, int, int]) -> None:
        """Move the crosshair only (another plane scrolled: this plane's pixels are unchanged)."""
        if self.volume is None:
            return
        self.position = position
        self._place_crosshair()
        self.viewport().update()

    def fit(self) -> None:
        self.fitInView(self.scene().sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)

    def _place_crosshair(self) -> None:
        rows_mm, cols_mm = plane_spacing(self.volume.spacing_zyx, self.plane)
        row, column = pixel_of(self.plane, self.position, self.volume.voxels.shape[0])
        rect = self.scene().sceneRect()
        x, y = (column + 0.5) * cols_mm, (row + 0.5) * rows_mm
        self.lines[0].setLine(x, rect.top(), x, rect.bottom())
        self.lines[1].setLine(rect.left(), y, rect.right(), y)

    # -- geometry -------------------------------------------------------------------------------
    def voxel_at(self, scene_point: QPointF) -> tuple[int, int, int] | None:
        """The voxel (z, y, x) under a scene point (mm), or None outside the plane."""
        if self.volume is None:
            return None
        rows_mm, cols_mm = plane_spacing(self.volume.spacing_zyx, self.plane)
        rows, columns = self.pixels().shape
        row, column = int(scene_point.y() // rows_mm), int(scene_point.x() // cols_mm)
        if not (0 <= row < rows and 0 <= column < columns):
            return None
        return voxel_of(self.plane, self.index, row, column, self.volume.voxels.shape[0])

    def slice_position_mm(self) -> float:
        """Position of the current plane along its normal, in patient mm (LPS)."""
        volume, axis = self.volume, AXIS[self.plane]
        voxel = np.zeros(3)
        voxel[2 - axis] = self.index  # voxel_to_patient takes (x, y, z)
        point = volume.voxel_to_patient(voxel)
        direction = volume.affine[:3, 2 - axis]
        return float(point @ (direction / np.linalg.norm(direction)))

    def measure(self, start: QPointF, end: QPointF) -> float:
        """Show the distance between two scene points; the scene is in mm, so is the distance."""
        line = QLineF(start, end)
        self.measurement_mm = line.length()
        self.ruler.setLine(line)
        self.ruler_label.setText(f"{self.measurement_mm:.1f} mm")
        self.ruler_label.setPos(end)
        self.ruler.show()
        self.ruler_label.show()
        return self.measurement_mm

    def readout(self, voxel: tuple[int, int, int]) -> str:
        z, y, x = voxel
        value = float(self.volume.voxels[z, y, x])
        unit = " HU" if self.volume.modality == "CT" else ""
        return f"{self.plane}  x {x}  y {y}  z {z}  {value:.0f}{unit}"

    def corner_text(self) -> dict[str, list[str]]:
        if self.volume is None:
            return {}
        rows_mm, cols_mm = plane_spacing(self.volume.spacing_zyx, self.plane)
        thickness = self.volume.spacing_zyx[AXIS[self.plane]]
        center, width = self.window
        return {"top_left": [self.plane.upper(), f"slice {self.index + 1}/{self.size}",
                             f"pos {self.slice_position_mm():.1f} mm"],
                "bottom_left": [f"thick {thickness:.2f} mm  spacing {rows_mm:.2f} x {cols_mm:.2f} mm",
                                f"WL {center:.0f}  WW {width:.0f}"],
                "top_right": [self.readout_text]}

    # -- input ---------------------------------------------------------------------------------
    def wheelEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        steps = event.angleDelta().y() // 120
        if steps:
            self.index_stepped.emit(self.plane, -int(steps))

    def keyPressEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        step = {Qt.Key.Key_Up: -1, Qt.Key.Key_Down: 1, Qt.Key.Key_PageUp: -10, Qt.Key.Key_PageDown: 10}.get(event.key())
        if step is None:
            super().keyPressEvent(event)
            return
        self.index_stepped.emit(self.plane, step)

    def mousePressEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if event.button() != Qt.MouseButton.LeftButton or self.volume is None:
            return super().mousePressEvent(event)
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self._drag = (event.position().y(), self.index)
            return None
        if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            start = self.mapToScene(event.position().toPoint())
            self._measuring = True
            self.measure(start, start)
            return None
        voxel = self.voxel_at(self.mapToScene(event.position().toPoint()))
        if voxel is not None:
            self.position_picked.emit(voxel)
        return None

    def mouseMoveEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if self.volume is None:
            return super().mouseMoveEvent(event)
        if self._drag is not None:
            start_y, start_index = self._drag
            target = start_index + int((event.position().y() - start_y) // 4)  # 4 screen pixels a slice
            if target != self.index:
                self.index_stepped.emit(self.plane, target - self.index)
            return None
        if self._measuring:
            self.measure(self.ruler.line().p1(), self.mapToScene(event.position().toPoint()))
            return None
        voxel = self.voxel_at(self.mapToScene(event.position().toPoint()))
        if voxel is not None:
            self.readout_text = self.readout(voxel)
            self.cursor_moved.emit(self.readout_text)
            self.viewport().update()
        return super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        self._drag, self._measuring = None, False
        return super().mouseReleaseEvent(event)

    def resizeEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        super().resizeEvent(event)
        self.fit()

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802 - Qt override
        paint_corner_text(painter, self.viewport().rect(), self.corner_text(), point_size=8, margin=(4, 2))


__all__ = ["PLANES", "PlaneView", "pixel_of", "plane_pixels", "plane_spacing", "render_plane", "voxel_of"]
