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
from desktop.canvas.items import AnnotationItem
from desktop.canvas.plane_tools import (
    PlaneToolController,
    display_annotations,
    voxel_of_plane_point,
)
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
from engine.analysis.volume.plane_coords import PLANE_AXIS, plane_to_voxel, voxel_to_plane
from engine.imaging.decode import window_to_uint8
from engine.imaging.volume.planes import PLANES, plane_pixels, plane_spacing

AXIS = PLANE_AXIS  # the voxel axis (z, y, x) a plane's index runs along


def render_plane(pixels: np.ndarray, center: float, width: float) -> QImage:
    """8-bit rendering of HU pixels under a linear window (the QImage keeps its buffer alive)."""
    gray = np.ascontiguousarray(window_to_uint8(pixels, center, max(width, 1.0)))
    image = QImage(gray.data, gray.shape[1], gray.shape[0], gray.strides[0], QImage.Format.Format_Grayscale8)
    image.ndarray = gray
    return image


class PlaneView(QGraphicsView):
    """One plane of the volume. Wheel, Up/Down, PageUp/PageDown and Ctrl+left-drag scroll;
    with the navigate tool a left click moves the shared position (the other planes follow);
    the cursor reads HU; Shift+left-drag measures a distance in mm (shown, not stored). The
    drawing tools (:mod:`desktop.canvas.plane_tools`) store what they draw through ``host``
    (the panel: the engine, the volume's key, the shared undo stack)."""

    position_picked = Signal(object)  # (z, y, x)
    index_stepped = Signal(str, int)  # plane, step
    cursor_moved = Signal(str)
    region_drawn = Signal(dict)  # the tool controller's host signals (CanvasHost)
    mask_updated = Signal(dict)
    tool_changed = Signal(str)

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
        self.host: Any = None  # the panel: engine, session, undo stack, store_plane_roi / store_distance
        self.session_id: str | None = None
        self.image_id: str | None = None
        self.actions_by_name: dict[str, Any] = {}
        self.annotations: list[dict] = []  # the volume's stored 3D annotations (all planes)
        self.items: dict[str, AnnotationItem] = {}  # those shown on this plane at this index
        self.tools = PlaneToolController(self)

    # -- the tool controller's host (CanvasHost) ---------------------------------------------
    @property
    def engine(self) -> Any:
        return None if self.host is None else self.host.engine

    @property
    def undo_stack(self) -> Any:
        return self.host.undo_stack

    def scale_factor(self) -> float:
        return self.transform().m11() or 1.0

    def schedule_sync(self) -> None:
        """Nothing to tell the engine: the volume planes are no canvas state."""

    def schedule_refresh(self) -> None:
        if self.host is not None:
            self.host.refresh_annotations()

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
        index_changed = position[AXIS[self.plane]] != self.index
        self.position, self.window = position, window
        self.pixmap_item.setPixmap(QPixmap.fromImage(render_plane(self.pixels(), *window)))
        self._place_crosshair()
        if index_changed or not self.items:
            self._show_items()
        self.viewport().update()

    def show_annotations(self, rows: list[dict]) -> None:
        """The volume's stored 3D annotations; those drawn on this plane at this index are shown."""
        self.annotations = rows
        self._show_items()

    def _show_items(self) -> None:
        for item in self.items.values():
            self.scene().removeItem(item)
        self.items = {}
        if self.volume is None:
            return
        unit = "HU" if self.volume.modality == "CT" else ""
        for shown in display_annotations(self.annotations, self.plane, self.index, self.volume.spacing_zyx,
                                         self.volume.voxels.shape, unit):
            item = AnnotationItem(shown, (1.0, 1.0), "scene_mm", editable=False)
            item.setZValue(10)
            self.scene().addItem(item)
            self.items[f"{shown['annotation_id']}:{len(self.items)}"] = item
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
        z, y, x = self.position
        (column, row), = voxel_to_plane(self.plane, [[x, y, z]], self.volume.voxels.shape)[0].tolist()
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
        x, y, z = (int(v) for v in plane_to_voxel(self.plane, self.index, [[column, row]], self.volume.voxels.shape)[0])
        return z, y, x

    def plane_point(self, scene_point: QPointF) -> list[float]:
        """The plane's pixel coordinates ``[px, py]`` (centres at whole numbers) of a scene point (mm),
        kept on the plane."""
        rows_mm, cols_mm = plane_spacing(self.volume.spacing_zyx, self.plane)
        rows, columns = self.pixels().shape
        px = min(max(scene_point.x() / cols_mm - 0.5, -0.5), columns - 0.5)
        py = min(max(scene_point.y() / rows_mm - 0.5, -0.5), rows - 0.5)
        return [round(px, 3), round(py, 3)]

    def voxel_point(self, scene_point: QPointF) -> list[float]:
        """Voxel coordinates ``[x, y, z]`` (fractional) of a scene point on this plane at its index."""
        return voxel_of_plane_point(self.plane, self.index, self.plane_point(scene_point), self.volume.voxels.shape)

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
        if self.tools.key_press(event.key()):
            return
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
        point = self._scene_point(event)
        self.tools.press_pos = point
        if self.tools.press(event.button(), point):
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
        if self.tools.tool not in self.tools.view_tools:
            self.tools.move(event.buttons(), self._scene_point(event))
        voxel = self.voxel_at(self.mapToScene(event.position().toPoint()))
        if voxel is not None:
            self.readout_text = self.readout(voxel)
            self.cursor_moved.emit(self.readout_text)
            self.viewport().update()
        return super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        dragged = self._drag is not None or self._measuring
        self._drag, self._measuring = None, False
        if not dragged and self.volume is not None and self.tools.release(event.button(), self._scene_point(event)):
            return None
        return super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if self.volume is not None and self.tools.double_click():
            return None
        return super().mouseDoubleClickEvent(event)

    def _scene_point(self, event) -> QPointF:  # noqa: ANN001
        """The event's scene point (mm), kept inside the plane."""
        point, rect = self.mapToScene(event.position().toPoint()), self.scene().sceneRect()
        return QPointF(min(max(point.x(), rect.left()), rect.right()), min(max(point.y(), rect.top()), rect.bottom()))

    def resizeEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        super().resizeEvent(event)
        self.fit()

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802 - Qt override
        paint_corner_text(painter, self.viewport().rect(), self.corner_text(), point_size=8, margin=(4, 2))


__all__ = ["PLANES", "PlaneView", "plane_pixels", "plane_spacing", "render_plane"]
