"""The canvas view: the image and its layers, zoom/pan, window/level and the corner text (HUD).

The store is the truth for annotations: edits go through undo commands that write
the store on the engine lane; the canvas re-reads the image's annotations when the
store announces a change (its own or another process's) and diffs its items. Tool
input lives in :mod:`desktop.canvas.tools`, what agents push in :mod:`desktop.canvas.overlays`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from desktop.canvas.commands import Ref
from desktop.canvas.corners import paint_corner_text
from desktop.canvas.image import CT_PRESETS, ImageItem, WindowedImage
from desktop.canvas.items import COLORS, ORGAN_COLORS, AnnotationItem, mask_overlay
from desktop.canvas.layers import LayerModel, layer_for
from desktop.canvas.overlays import AgentOverlays
from desktop.canvas.tools import TOOLS, ToolController
from desktop.qt import (
    QAction,
    QColor,
    QGraphicsItem,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QKeySequence,
    QPainter,
    QPixmap,
    QPointF,
    QRectF,
    Qt,
    QTimer,
    QUndoStack,
    Signal,
)
from desktop.worker import Op
from engine.analysis.volume.annotation import VOLUME_ROI
from engine.events import ANNOTATION_KINDS, EventKind

log = logging.getLogger(__name__)


class CanvasView(QGraphicsView):
    """The image canvas. Coordinates everywhere are image pixels (scene = image)."""

    cursor_moved = Signal(str)
    region_drawn = Signal(dict)
    annotations_changed = Signal(list)
    image_shown = Signal(dict)
    window_changed = Signal(float, float)
    mask_updated = Signal(dict)
    tool_changed = Signal(str)
    slice_step = Signal(int)  # wheel or Up/Down/PageUp/PageDown over a slice of a volume stack

    STACK_KEYS = {Qt.Key.Key_Up: -1, Qt.Key.Key_Down: 1, Qt.Key.Key_PageUp: -10, Qt.Key.Key_PageDown: 10}

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setBackgroundBrush(QColor(0, 0, 0))
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
        self.setMouseTracking(True)
        self.setAcceptDrops(False)  # the main window takes dropped files
        self.engine = None
        self.session_id: str | None = None
        self.image_row: dict | None = None
        self.image: WindowedImage | None = None
        self.image_item: ImageItem | None = None
        self.layers = LayerModel()
        for layer in self.layers.layers:
            self.scene().addItem(layer.group)
        self.undo_stack = QUndoStack(self)
        self.items: dict[str, AnnotationItem] = {}
        self.deidentify = True
        self.scrolls_stack = False  # set by the window while the image shown is a slice of a volume stack
        self.stack_text: list[str] = []  # the slice's place in its stack (index, position, thickness, spacing)
        self._wl_drag: tuple[QPointF, float, float] | None = None
        self._pending_window: tuple[float, float] | None = None
        self._organ_items: list[QGraphicsItem] = []
        self.tools = ToolController(self)
        self.overlays = AgentOverlays(self)
        self._refresh_timer = QTimer(self, singleShot=True, interval=0)
        self._refresh_timer.timeout.connect(self.refresh_annotations)
        # The engine learns the viewport and tool (sync_canvas_state) once they settle.
        self._sync_timer = QTimer(self, singleShot=True, interval=400)
        self._sync_timer.timeout.connect(self.sync_state)
        self.actions_by_name = self._make_actions()

    # -- engine plumbing ---------------------------------------------------------------
    def engine_write(self, fn: Callable[[Any], Any]) -> None:
        """Run a store edit on the engine lane, then re-read the annotations."""
        engine = self.engine
        Op(self, lambda: fn(engine)).progress("Saving annotation").success(
            lambda _result: self.schedule_refresh()).run()

    def schedule_refresh(self) -> None:
        """Re-read the annotations once the event loop is free (coalesces bursts of edits)."""
        self._refresh_timer.start()

    def schedule_sync(self) -> None:
        """Tell the engine the canvas state once the viewport and tool settle."""
        self._sync_timer.start()

    # -- images ------------------------------------------------------------------------
    def load_image(self, session_id: str, image_id: str) -> Op:
        """Decode (cached by the engine) and render off the GUI thread, then show."""
        engine = self.engine

        def work() -> tuple[dict, WindowedImage, Any]:
            row, decoded = engine.decoded_image(session_id, image_id)
            image = WindowedImage.from_decoded(decoded)
            return row, image, image.render(None, None)

        return Op(self, work, lane="read").progress("Opening image").success(
            lambda result: self.show_image(session_id, *result)).run()

    def _clear_scene(self) -> None:
        if self.image_item is not None:
            self.scene().removeItem(self.image_item)
        for item in list(self.items.values()) + self._organ_items:
            self.scene().removeItem(item)
        self.items, self._organ_items = {}, []
        self.overlays.clear()
        self.tools.clear_segmentation()
        self.undo_stack.clear()

    def close_image(self) -> None:
        """Show nothing: the session on screen was erased, so its pixels leave the window too."""
        self._clear_scene()
        self.session_id, self.image_row, self.image, self.image_item = None, None, None, None
        self.viewport().update()

    def show_image(self, session_id: str, row: dict, image: WindowedImage, first_frame: Any = None) -> None:
        # Scrolling a stack keeps the zoom, pan and window of the slice before.
        keep = (self.scrolls_stack and self.image is not None and self.image_item is not None
                and (self.image.decoded.columns, self.image.decoded.rows) == (image.decoded.columns, image.decoded.rows))
        window = (self.image_item.center, self.image_item.width) if keep else (None, None)
        self._clear_scene()
        self.session_id, self.image_row, self.image = session_id, row, image
        self.image_item = ImageItem(image, first_frame)
        self.image_item.setParentItem(self.layers["original"].group)
        self.scene().setSceneRect(QRectF(0, 0, image.decoded.columns, image.decoded.rows))
        if not keep:
            self.fit()
        elif window != (None, None):
            self.image_item.set_window(*window)
        self.refresh_annotations()
        self.refresh_ai_masks()
        self.image_shown.emit(row)

    @property
    def image_id(self) -> str | None:
        return self.image_row["id"] if self.image_row else None

    def refresh_annotations(self) -> None:
        """Re-read this image's annotations (read lane) and bring the items in line."""
        if self.engine is None or self.image_row is None:
            return
        engine, session_id, image_id = self.engine, self.session_id, self.image_id

        def work() -> tuple[str, list[dict], dict]:
            rows = engine.get_annotations(session_id, image_id)["annotations"]
            overlays = {}
            for a in rows:
                if a["type"] == "mask":
                    color = COLORS["ai" if a["source"] == "ai" else "user"]
                    overlays[a["annotation_id"]] = mask_overlay(a["coordinates"], color)
            return image_id, rows, overlays

        Op(self, work, lane="read").success(lambda result: self._sync_items(*result)).run()

    def _sync_items(self, image_id: str, rows: list[dict], overlays: dict) -> None:
        if image_id != self.image_id:
            return
        decoded = self.image.decoded
        fresh = {a["annotation_id"]: a for a in rows if a["type"] != VOLUME_ROI}  # 3D: not a shape on this slice
        selected = {i for i, item in self.items.items() if item.isSelected()}
        for annotation_id in [i for i in self.items if i not in fresh or fresh[i] != self.items[i].annotation]:
            self.scene().removeItem(self.items.pop(annotation_id))
        for annotation_id, annotation in fresh.items():
            if annotation_id not in self.items:
                item = AnnotationItem(annotation, decoded.pixel_spacing_mm, decoded.spacing_source,
                                      overlays.get(annotation_id))
                item.setParentItem(self.layers[layer_for(annotation)].group)
                item.setSelected(annotation_id in selected)  # an edited shape stays selected, handles and all
                self.items[annotation_id] = item
        self.annotations_changed.emit(rows)

    def refresh_ai_masks(self) -> None:
        """Show the latest organ segmentation of the image in the AI-masks layer."""
        engine, session_id, image_id = self.engine, self.session_id, self.image_id

        def work() -> tuple[str, list]:
            masks = engine.organ_masks(session_id, image_id, run=False) or {}
            return image_id, [(label, mask_overlay(mask, ORGAN_COLORS[i % len(ORGAN_COLORS)], 70))
                              for i, (label, mask) in enumerate(sorted(masks.items()))]

        def show(result: tuple[str, list]) -> None:
            shown_id, overlays = result
            if shown_id != self.image_id:
                return
            for item in self._organ_items:
                self.scene().removeItem(item)
            self._organ_items = []
            for label, overlay in overlays:
                if overlay is not None:
                    item = QGraphicsPixmapItem(QPixmap.fromImage(overlay[0]), self.layers["ai_masks"].group)
                    item.setOffset(overlay[1], overlay[2])
                    item.setToolTip(label)
                    self._organ_items.append(item)

        if engine is not None and image_id is not None:
            Op(self, work, lane="read").success(show).run()

    # -- view: zoom, pan, window/level ---------------------------------------------------
    def fit(self) -> None:
        if self.image is not None:
            self.fitInView(self.sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)
            self.viewport().update()

    def one_to_one(self) -> None:
        self.resetTransform()

    def zoom_by(self, factor: float) -> None:
        scale = self.transform().m11() * factor
        if 0.02 <= scale <= 40:
            self.scale(factor, factor)
            self.schedule_sync()

    def wheelEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        """The wheel zooms; over a slice of a volume stack it scrolls the stack and Ctrl+wheel zooms."""
        steps = event.angleDelta().y() // 120
        if self.scrolls_stack and not event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            if steps:
                self.slice_step.emit(-int(steps))
            return
        self.zoom_by(1.25 if event.angleDelta().y() > 0 else 0.8)

    def set_window(self, center: float | None, width: float | None) -> None:
        """Re-render through a new window; drags coalesce to one render per event-loop pass."""
        first = self._pending_window is None
        self._pending_window = (center, width)
        if first:
            QTimer.singleShot(0, self._apply_window)

    def apply_window_now(self, center: float | None, width: float | None) -> None:
        self._pending_window = (center, width)
        self._apply_window()

    def _apply_window(self) -> None:
        if self._pending_window is None or self.image_item is None:
            return
        center, width = self._pending_window
        self._pending_window = None
        self.image_item.set_window(center, width)
        self.window_changed.emit(*self.image_item.effective_window())
        self.schedule_sync()
        self.viewport().update()

    def presets(self) -> dict[str, tuple[float | None, float | None]]:
        """Window presets for the current image (CT presets in HU only for CT)."""
        out: dict[str, tuple[float | None, float | None]] = {"Default": (None, None)}
        if self.image is not None:
            out["Auto"] = self.image.auto_window()
            out["Full range"] = self.image.full_window()
            if self.image.decoded.modality == "CT":
                out |= CT_PRESETS
        return out

    def apply_preset(self, name: str) -> None:
        self.apply_window_now(*self.presets()[name])

    def scale_factor(self) -> float:
        return self.transform().m11() or 1.0

    def viewport_state(self) -> dict:
        """``{"zoom", "pan": {"x", "y"}, "window"}``: pan is the image point at the view's centre."""
        centre = self.mapToScene(self.viewport().rect().center())
        center, width = self.image_item.effective_window()
        return {"zoom": self.scale_factor(), "pan": {"x": centre.x(), "y": centre.y()},
                "window": {"center": center, "width": width}}

    def sync_state(self) -> None:
        """Tell the engine the viewport, tool and image (what an MCP agent reads back)."""
        engine, session_id, image_id = self.engine, self.session_id, self.image_id
        if engine is None or session_id is None or image_id is None or self.image_item is None:
            return
        tool = {"distance": "measure", "angle": "measure", "area": "measure"}.get(self.tools.tool, self.tools.tool)
        state = {"viewport": self.viewport_state(), "active_tool": tool, "current_image_id": image_id}
        Op(self, lambda: engine.sync_canvas_state(session_id, state), lane="read").failure(
            lambda exc: log.warning("canvas state not synced: %s", exc)).run()

    def set_viewport(self, state: dict) -> None:
        """Apply a (partial) viewport: zoom, the image point to centre, window."""
        if state.get("zoom"):
            self.zoom_by(float(state["zoom"]) / self.scale_factor())
        if state.get("pan"):
            self.centerOn(QPointF(float(state["pan"]["x"]), float(state["pan"]["y"])))
        if state.get("window"):
            self.set_window(state["window"].get("center"), state["window"].get("width"))

    # -- input: right-drag is window/level, the rest goes to the current tool --------------
    def _image_point(self, event) -> QPointF:  # noqa: ANN001
        point = self.mapToScene(event.position().toPoint())
        if self.image is None:
            return point
        d = self.image.decoded
        return QPointF(min(max(point.x(), 0.0), d.columns - 1.0), min(max(point.y(), 0.0), d.rows - 1.0))

    def mousePressEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if self.image is None:
            return super().mousePressEvent(event)
        point = self._image_point(event)
        self.tools.press_pos = point
        if event.button() == Qt.MouseButton.RightButton:
            center, width = self.image_item.effective_window()
            self._wl_drag = (event.position(), center, width)
            return None
        if self.tools.press(event.button(), point):
            return None
        return super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if self.image is not None:
            point = self._image_point(event)
            self.cursor_moved.emit(self.readout(int(point.x()), int(point.y())))
            if self._wl_drag is not None:
                start, center, width = self._wl_drag
                delta = event.position() - start
                step = max(self.image.full_window()[1] / 1000.0, 0.5)
                self.set_window(center + delta.y() * step, max(1.0, width + delta.x() * step))
                return None
            self.tools.move(event.buttons(), point)
        return super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if self.image is None:
            return super().mouseReleaseEvent(event)
        if event.button() == Qt.MouseButton.RightButton:
            self._wl_drag = None
        if self.tools.release(event.button(), self._image_point(event)):
            return None
        return super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if self.tools.double_click():
            return None
        return super().mouseDoubleClickEvent(event)

    def keyPressEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if self.tools.key_press(event.key()):
            return
        if self.scrolls_stack and event.key() in self.STACK_KEYS:
            self.slice_step.emit(self.STACK_KEYS[event.key()])
            return
        super().keyPressEvent(event)

    # -- the tool controller's API, as the window and panels use it ----------------------
    @property
    def tool(self) -> str:
        return self.tools.tool

    def set_tool(self, name: str) -> None:
        self.tools.set_tool(name)

    @property
    def selection(self) -> dict | None:
        """The last drawn region, for analyze_selected_region."""
        return self.tools.selection

    @selection.setter
    def selection(self, region: dict | None) -> None:
        self.tools.selection = region

    @property
    def segment_state(self) -> dict[str, Any]:
        return self.tools.segment_state

    def create_annotation(self, kind: str, coordinates: Any, label: str = "") -> Ref:
        return self.tools.create_annotation(kind, coordinates, label)

    def move_annotation(self, annotation_id: str, dx: float, dy: float) -> None:
        self.tools.move_annotation(annotation_id, dx, dy)

    def edit_annotation(self, annotation_id: str, **after: Any) -> None:
        self.tools.edit_annotation(annotation_id, **after)

    def selected_region(self) -> dict | None:
        return self.tools.selected_region()

    def segment_click(self, x: float, y: float, label: int) -> Op:
        return self.tools.segment_click(x, y, label)

    def accept_segmentation(self, label: str = "segmented region") -> Op | None:
        return self.tools.accept_segmentation(label)

    def clear_segmentation(self) -> None:
        self.tools.clear_segmentation()

    # -- store events (live sync) ------------------------------------------------------------
    def on_store_event(self, event: dict) -> None:
        """React to a store event of the shown session (see desktop.sync)."""
        kind, payload = event["kind"], event.get("payload") or {}
        if event.get("session_id") != self.session_id or self.image_row is None:
            return
        if payload.get("image_id") not in (None, self.image_id):
            return
        if kind in ANNOTATION_KINDS:
            self.schedule_refresh()
        elif kind == EventKind.MASKS_CREATED and payload.get("source") == "organ_seg":
            self.refresh_ai_masks()
        else:
            self.overlays.on_canvas_event(kind, payload)


    # -- readout and overlay -----------------------------------------------------------------
    def readout(self, x: int, y: int) -> str:
        stored, value = self.image.value_at(x, y)
        unit = " HU" if self.image.decoded.modality == "CT" else ""
        text = f"x {x}  y {y}  stored {stored:g}"
        return text + (f"  {value:.0f}{unit}" if unit or value != stored else "")

    def corner_text(self) -> dict[str, list[str]]:
        """DICOM corner text; identifiers hidden when ``deidentify`` (the default)."""
        if self.image_row is None:
            return {}
        row, d = self.image_row, self.image.decoded
        patient = d.patient or {}
        who = ["(de-identified)"] if self.deidentify else [str(patient.get("PatientName", "")),
                                                            str(patient.get("PatientID", ""))]
        center, width = self.image_item.effective_window()
        meta = d.metadata
        return {
            "top_left": who + [str(meta.get("StudyDate", "") or "")],
            "top_right": [f"{row['modality'] or row['format']}  {row['type']}", row["source_name"] if not self.deidentify
                          else f"image {row['id']}"],
            "bottom_left": [f"WL {center:.0f}  WW {width:.0f}", f"zoom {self.scale_factor() * 100:.0f}%"],
            "bottom_right": [*self.stack_text, f"{d.columns} x {d.rows}", f"{d.bits_stored}-bit"],
        }

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802 - Qt override
        paint_corner_text(painter, self.viewport().rect(), self.corner_text(), point_size=9, margin=(6, 4))

    # -- actions and shortcuts ---------------------------------------------------------------
    def _make_actions(self) -> dict[str, QAction]:
        actions: dict[str, QAction] = {}

        def add(name: str, title: str, keys: Any, slot: Callable, checkable: bool = False) -> None:
            action = QAction(title, self)
            action.setShortcuts([QKeySequence(k) for k in (keys if isinstance(keys, list) else [keys])])
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            action.setCheckable(checkable)
            action.triggered.connect(slot)
            self.addAction(action)
            actions[name] = action

        undo, redo = self.undo_stack.createUndoAction(self, "Undo"), self.undo_stack.createRedoAction(self, "Redo")
        undo.setShortcut(QKeySequence.StandardKey.Undo)
        redo.setShortcuts([QKeySequence.StandardKey.Redo, QKeySequence("Ctrl+Y")])
        for name, action in (("undo", undo), ("redo", redo)):
            self.addAction(action)
            actions[name] = action
        add("fit", "Fit to window", "F", self.fit)
        add("one_to_one", "Actual size (1:1)", "1", self.one_to_one)
        add("zoom_in", "Zoom in", ["+", "="], lambda: self.zoom_by(1.25))
        add("zoom_out", "Zoom out", "-", lambda: self.zoom_by(0.8))
        add("wl_reset", "Reset window", "R", lambda: self.apply_preset("Default"))
        add("wl_auto", "Auto window", "A", lambda: self.apply_preset("Auto"))
        add("delete", "Delete selected", [QKeySequence.StandardKey.Delete, "Backspace"], self.tools.delete_selected)
        add("accept_mask", "Accept mask", "Ctrl+Return", lambda: self.tools.accept_segmentation())
        for name, (key, title) in TOOLS.items():
            add(f"tool:{name}", title, key, lambda _=False, n=name: self.tools.set_tool(n), checkable=True)
        return actions


__all__ = ["TOOLS", "CanvasView"]
