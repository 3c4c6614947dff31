"""The canvas view: image + layers, tools, window/level, undo, live overlays.

The store is the truth for annotations: edits go through undo commands that write
the store on the engine lane; the canvas re-reads the image's annotations when the
store announces a change (its own or another process's) and diffs its items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from desktop.canvas.commands import CreateAnnotation, DeleteAnnotation, EditAnnotation, Ref
from desktop.canvas.image import CT_PRESETS, ImageItem, WindowedImage
from desktop.canvas.items import (
    COLORS,
    ORGAN_COLORS,
    AnnotationItem,
    heatmap_image,
    mask_overlay,
    shape_path,
    translated,
)
from desktop.canvas.layers import LayerModel, layer_for
from desktop.qt import (
    QAction,
    QColor,
    QFont,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QInputDialog,
    QKeySequence,
    QPainter,
    QPen,
    QPixmap,
    QPointF,
    QRectF,
    Qt,
    QTimer,
    QTransform,
    QUndoStack,
    QVariantAnimation,
    Signal,
)
from desktop.worker import Op

#: Tools: name -> (shortcut, title). Measure tools create measurement annotations.
log = logging.getLogger(__name__)

TOOLS = {
    "select": ("V", "Select / move"), "pan": ("H", "Pan"), "bbox": ("B", "Box"),
    "polygon": ("P", "Polygon"), "point": ("O", "Point"), "freehand": ("D", "Freehand"),
    "distance": ("M", "Measure distance"), "angle": ("N", "Measure angle"), "area": ("K", "Measure area"),
    "text": ("T", "Text"), "segment": ("S", "Click-to-segment"),
}
_DRAG_KINDS = {"bbox", "freehand", "distance"}
_CLICK_KINDS = {"polygon": 3, "area": 3, "angle": 3}  # fewest points; angle finishes at 3


class CanvasView(QGraphicsView):
    """The image canvas. Coordinates everywhere are image pixels (scene = image)."""

    cursor_moved = Signal(str)
    region_drawn = Signal(dict)
    annotations_changed = Signal(list)
    image_shown = Signal(dict)
    window_changed = Signal(float, float)
    mask_updated = Signal(dict)
    tool_changed = Signal(str)

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
        self.refs: list[Ref] = []
        self.tool = "select"
        self.deidentify = True
        self.selection: dict | None = None  # the last drawn region, for analyze_selected_region
        self._drawing: list[QPointF] = []
        self._preview = QGraphicsPathItem()
        self._preview.setPen(_cosmetic(QColor(255, 255, 255), dashed=True))
        self._preview.setZValue(100)
        self.scene().addItem(self._preview)
        self._wl_drag: tuple[QPointF, float, float] | None = None
        self._pending_window: tuple[float, float] | None = None
        self._press_pos: QPointF | None = None
        self.segment_state: dict[str, Any] = {"points": [], "labels": [], "box": None, "result": None}
        self._seg_item: QGraphicsPixmapItem | None = None
        self._organ_items: list[QGraphicsItem] = []
        self._pushed: dict[str, list[QGraphicsItem]] = {}
        self._refresh_timer = QTimer(self, singleShot=True, interval=0)
        self._refresh_timer.timeout.connect(self.refresh_annotations)
        # The engine learns the viewport and tool (sync_canvas_state) once they settle.
        self._sync_timer = QTimer(self, singleShot=True, interval=400)
        self._sync_timer.timeout.connect(self.sync_state)
        self.ask_text: Callable[[], str | None] = self._ask_text
        self.actions_by_name = self._make_actions()

    # -- engine plumbing ---------------------------------------------------------------
    def engine_write(self, fn: Callable[[Any], Any]) -> None:
        """Run a store edit on the engine lane, then re-read the annotations."""
        engine = self.engine
        Op(self, lambda: fn(engine)).progress("Saving annotation").success(
            lambda _result: self._refresh_timer.start()).run()

    def ref_for(self, annotation_id: str) -> Ref:
        for ref in self.refs:
            if ref.id == annotation_id:
                return ref
        self.refs.append(Ref(annotation_id))
        return self.refs[-1]

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

    def show_image(self, session_id: str, row: dict, image: WindowedImage, first_frame: Any = None) -> None:
        if self.image_item is not None:
            self.scene().removeItem(self.image_item)
        for item in list(self.items.values()) + self._organ_items + [i for v in self._pushed.values() for i in v]:
            self.scene().removeItem(item)
        self.items, self._organ_items, self._pushed = {}, [], {}
        self._animation: QVariantAnimation | None = None
        self.clear_segmentation()
        self.undo_stack.clear()
        self.session_id, self.image_row, self.image = session_id, row, image
        self.image_item = ImageItem(image, first_frame)
        self.image_item.setParentItem(self.layers["original"].group)
        self.scene().setSceneRect(QRectF(0, 0, image.decoded.columns, image.decoded.rows))
        self.fit()
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
        fresh = {a["annotation_id"]: a for a in rows}
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
            self._sync_timer.start()

    def wheelEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
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
        self._sync_timer.start()
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

    # -- tools -------------------------------------------------------------------------
    def set_tool(self, name: str) -> None:
        if name not in TOOLS:
            raise ValueError(f"unknown tool {name!r}")
        self.tool = name
        self._sync_timer.start()
        self._drawing = []
        self._preview.setPath(shape_path("polygon", []))
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag if name == "pan" else
                         QGraphicsView.DragMode.RubberBandDrag if name == "select" else
                         QGraphicsView.DragMode.NoDrag)
        self.setCursor(Qt.CursorShape.OpenHandCursor if name == "pan" else
                       Qt.CursorShape.ArrowCursor if name == "select" else Qt.CursorShape.CrossCursor)
        action = self.actions_by_name.get(f"tool:{name}")
        if action is not None:
            action.setChecked(True)
        self.tool_changed.emit(name)

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
        self._press_pos = point
        if event.button() == Qt.MouseButton.RightButton:
            center, width = self.image_item.effective_window()
            self._wl_drag = (event.position(), center, width)
            return None
        if event.button() != Qt.MouseButton.LeftButton or self.tool in ("select", "pan"):
            return super().mousePressEvent(event)
        if self.tool in _DRAG_KINDS or self.tool == "segment":
            self._drawing = [point]
        elif self.tool in _CLICK_KINDS:
            self._drawing.append(point)
            if self.tool == "angle" and len(self._drawing) == 3:
                self.finish_drawing()
        elif self.tool == "point":
            self.create_annotation("point", [point.x(), point.y()])
        elif self.tool == "text":
            text = self.ask_text()
            if text:
                self.create_annotation("text", {"position": [point.x(), point.y()], "text": text})
        self._update_preview(point)
        return None

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
            if self._drawing and event.buttons() & Qt.MouseButton.LeftButton and self.tool == "freehand":
                self._drawing.append(point)
            self._update_preview(point)
        return super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if self.image is None:
            return super().mouseReleaseEvent(event)
        point = self._image_point(event)
        moved = self._press_pos is not None and (point - self._press_pos).manhattanLength() > 4 / self.scale_factor()
        if event.button() == Qt.MouseButton.RightButton:
            self._wl_drag = None
            if self.tool == "segment" and not moved:
                self.segment_click(point.x(), point.y(), 0)
            return None
        if event.button() == Qt.MouseButton.LeftButton and self.tool == "segment":
            if moved:
                self.segment_box([self._press_pos.x(), self._press_pos.y(), point.x(), point.y()])
            else:
                self.segment_click(point.x(), point.y(), 1)
            self._drawing = []
            self._update_preview(point)
            return None
        if event.button() == Qt.MouseButton.LeftButton and self.tool in _DRAG_KINDS and self._drawing:
            if self.tool != "freehand":
                self._drawing.append(point)
            if moved:
                self.finish_drawing()
            else:
                self._drawing = []
            return None
        return super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if self.tool in ("polygon", "area"):
            self.finish_drawing()
            return None
        return super().mouseDoubleClickEvent(event)

    def scale_factor(self) -> float:
        return self.transform().m11() or 1.0

    def _update_preview(self, cursor: QPointF) -> None:
        points = [*self._drawing, cursor] if self.tool in _CLICK_KINDS and self._drawing else list(self._drawing)
        if self.tool in ("bbox", "segment") and len(points) >= 1 and self._drawing:
            points = [self._drawing[0], cursor]
            x1, y1, x2, y2 = points[0].x(), points[0].y(), points[1].x(), points[1].y()
            self._preview.setPath(shape_path("bbox", [x1, y1, x2, y2]))
        elif self.tool == "distance" and self._drawing:
            self._preview.setPath(shape_path("measurement", {"kind": "distance", "points": [
                [p.x(), p.y()] for p in (self._drawing[0], cursor)]}))
        else:
            self._preview.setPath(shape_path("measurement", {"kind": "polyline",
                                                             "points": [[p.x(), p.y()] for p in points]}))

    def finish_drawing(self) -> None:
        """Turn the points drawn so far into an annotation of the current tool."""
        points = [[round(p.x(), 2), round(p.y(), 2)] for p in self._drawing]
        self._drawing = []
        self._preview.setPath(shape_path("polygon", []))
        kind = self.tool
        if kind == "bbox" and len(points) >= 2:
            (x1, y1), (x2, y2) = points[0], points[-1]
            self.create_annotation("bbox", [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])
        elif kind in ("polygon", "freehand") and len(points) >= 3:
            self.create_annotation(kind, points)
        elif kind == "distance" and len(points) >= 2:
            self.create_annotation("measurement", {"kind": "distance", "points": [points[0], points[-1]]})
        elif kind in ("angle", "area") and len(points) >= 3:
            self.create_annotation("measurement", {"kind": kind, "points": points[:3] if kind == "angle" else points})

    def keyPressEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if self.tool == "segment":
                self.accept_segmentation()
            else:
                self.finish_drawing()
        elif event.key() == Qt.Key.Key_Escape:
            self._drawing = []
            self._preview.setPath(shape_path("polygon", []))
            self.clear_segmentation()
        else:
            super().keyPressEvent(event)

    # -- annotations (undoable) ------------------------------------------------------------
    def create_annotation(self, kind: str, coordinates: Any, label: str = "") -> Ref:
        """Draw -> a user annotation in the store, through the undo stack."""
        ref = Ref()
        self.refs.append(ref)
        annotation = {"image_id": self.image_id, "type": kind, "coordinates": coordinates, "label": label,
                      "source": "user"}
        self.undo_stack.push(CreateAnnotation(self, ref, annotation))
        if kind in ("bbox", "polygon", "freehand", "point"):
            self.selection = {"type": kind, "coordinates": coordinates}
            self.region_drawn.emit(self.selection)
        return ref

    def move_annotation(self, annotation_id: str, dx: float, dy: float) -> None:
        annotation = self.items[annotation_id].annotation
        moved = translated(annotation["type"], annotation["coordinates"], dx, dy)
        self.undo_stack.push(EditAnnotation(self, self.ref_for(annotation_id), {"coordinates": annotation["coordinates"]},
                                            {"coordinates": moved}, "Move annotation"))

    def edit_annotation(self, annotation_id: str, **after: Any) -> None:
        annotation = self.items[annotation_id].annotation
        before = {k: annotation.get(k) for k in after}
        self.undo_stack.push(EditAnnotation(self, self.ref_for(annotation_id), before, after))

    def delete_selected(self) -> None:
        chosen = [item for item in self.scene().selectedItems() if isinstance(item, AnnotationItem)]
        if len(chosen) > 1:
            self.undo_stack.beginMacro("Delete annotations")
        for item in chosen:
            self.undo_stack.push(DeleteAnnotation(self, self.ref_for(item.annotation_id), dict(item.annotation)))
        if len(chosen) > 1:
            self.undo_stack.endMacro()

    def selected_region(self) -> dict | None:
        """The selected annotation as a region, else the last drawn region."""
        for item in self.scene().selectedItems():
            if isinstance(item, AnnotationItem) and item.annotation["type"] in ("bbox", "polygon", "freehand",
                                                                               "point", "mask"):
                return {"type": item.annotation["type"], "coordinates": item.annotation["coordinates"]}
        return self.selection

    # -- click-to-segment ------------------------------------------------------------------
    def segment_click(self, x: float, y: float, label: int) -> Op:
        self.segment_state["points"].append([round(x, 1), round(y, 1)])
        self.segment_state["labels"].append(int(label))
        return self._segment()

    def segment_box(self, box: list[float]) -> Op:
        self.segment_state["box"] = [round(min(box[0], box[2]), 1), round(min(box[1], box[3]), 1),
                                     round(max(box[0], box[2]), 1), round(max(box[1], box[3]), 1)]
        return self._segment()

    def _segment(self) -> Op:
        engine, session_id, image_id = self.engine, self.session_id, self.image_id
        state = {k: (list(v) if isinstance(v, list) else v) for k, v in self.segment_state.items()}

        def work() -> dict:
            result = engine.segment_interactive(session_id, image_id, points=state["points"] or None,
                                                labels=state["labels"] or None, box=state["box"])
            best = result["masks"][result["best"]]
            result["overlay"] = mask_overlay(best["rle"], COLORS["interactive"], 120)
            return result

        return Op(self, work).progress("Segmenting").success(self._show_segmentation).run()

    def _show_segmentation(self, result: dict) -> None:
        if result["image_id"] != self.image_id:
            return
        self.segment_state["result"] = result
        if self._seg_item is not None:
            self.scene().removeItem(self._seg_item)
            self._seg_item = None
        if result["overlay"] is not None:
            image, x0, y0 = result["overlay"]
            self._seg_item = QGraphicsPixmapItem(QPixmap.fromImage(image), self.layers["user"].group)
            self._seg_item.setOffset(x0, y0)
        self.mask_updated.emit(result)

    def accept_segmentation(self, label: str = "segmented region") -> Op | None:
        """Keep the current candidate mask as a user annotation."""
        result = self.segment_state["result"]
        if result is None:
            return None
        engine, session_id, mask_id = self.engine, self.session_id, result["mask_id"]
        self.clear_segmentation()
        return Op(self, lambda: engine.accept_mask(session_id, mask_id, label)).progress("Accepting mask").success(
            lambda _r: self._refresh_timer.start()).run()

    def clear_segmentation(self) -> None:
        self.segment_state = {"points": [], "labels": [], "box": None, "result": None}
        if self._seg_item is not None:
            self.scene().removeItem(self._seg_item)
            self._seg_item = None

    # -- pushed by agents (live sync) --------------------------------------------------------
    def on_store_event(self, event: dict) -> None:
        """React to a store event of the shown session (see desktop.sync)."""
        kind, payload = event["kind"], event.get("payload") or {}
        if event.get("session_id") != self.session_id or self.image_row is None:
            return
        if payload.get("image_id") not in (None, self.image_id):
            return
        if kind.startswith("annotation."):
            self._refresh_timer.start()
        elif kind == "masks.created" and payload.get("source") == "organ_seg":
            self.refresh_ai_masks()
        elif kind == "canvas.highlight":
            self.highlight(payload)
        elif kind == "canvas.animate":
            self.animate(payload)
        elif kind in ("canvas.layer_added", "canvas.layer_updated"):
            engine, session_id, layer_id = self.engine, self.session_id, payload.get("layer_id")
            Op(self, lambda: [la for la in engine.get_canvas_state(session_id).get("layers", [])
                              if la["layer_id"] == layer_id], lane="read").success(
                lambda found: found and self.show_pushed_layer(found[0])).run()
        elif kind == "canvas.layer_removed":
            for item in self._pushed.pop(str(payload.get("layer_id") or payload.get("id")), []):
                self.scene().removeItem(item)

    def show_pushed_layer(self, payload: dict) -> None:
        layer_id = str(payload.get("layer_id") or payload.get("id") or payload.get("name") or "agent")
        for item in self._pushed.pop(layer_id, []):
            self.scene().removeItem(item)
        items = []
        if payload.get("visible") is False or payload.get("image_id") not in (None, self.image_id):
            return
        if payload.get("type") == "heatmap":
            image, (x1, y1, x2, y2) = heatmap_image(payload["data"])
            item = QGraphicsPixmapItem(QPixmap.fromImage(image))
            item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
            item.setTransform(QTransform.fromScale((x2 - x1) / image.width(), (y2 - y1) / image.height()))
            item.setPos(x1, y1)
            item.setParentItem(self.layers["ai_masks"].group)
            self._pushed[layer_id] = [item]
            return
        dashed = bool((payload.get("style") or {}).get("lineDash"))
        for region in regions_in(payload):
            item = self._region_item(region, COLORS["ai"], dashed=dashed)
            if item is not None:
                item.setParentItem(self.layers["ai_masks" if region["type"] == "mask" else "ai_boxes"].group)
                items.append(item)
        self._pushed[layer_id] = items

    def highlight(self, payload: dict) -> None:
        """A pulsing outline around the pushed region(s) for three seconds."""
        for region in regions_in(payload):
            item = self._region_item(region, QColor(255, 60, 60), dashed=False, width=3)
            if item is None:
                continue
            item.setParentItem(self.layers["ai_boxes"].group)
            pulse = QVariantAnimation(self, startValue=1.0, endValue=0.2, duration=500, loopCount=6)
            pulse.valueChanged.connect(item.setOpacity)
            pulse.finished.connect(lambda item=item: item.scene() and item.scene().removeItem(item))
            pulse.start(QVariantAnimation.DeletionPolicy.DeleteWhenStopped)
            self._pushed.setdefault("highlight", []).append(item)

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
        tool = {"distance": "measure", "angle": "measure", "area": "measure"}.get(self.tool, self.tool)
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

    def animate(self, payload: dict) -> None:
        """An agent's ``canvas.animate``: glide from ``from`` (default: now) to ``to`` in ``duration`` ms."""
        start, end = {**self.viewport_state(), **(payload.get("from") or {})}, payload.get("to") or {}

        def mix(a: float, b: float, t: float) -> float:
            return a + (b - a) * t

        def step(t: float) -> None:
            state: dict = {}
            if "zoom" in end:
                state["zoom"] = mix(start["zoom"], end["zoom"], t)
            if "pan" in end:
                state["pan"] = {k: mix(start["pan"][k], end["pan"].get(k, start["pan"][k]), t) for k in ("x", "y")}
            if "window" in end:
                state["window"] = {k: mix(start["window"][k], end["window"].get(k, start["window"][k]), t)
                                   for k in ("center", "width")}
            self.set_viewport(state)

        glide = QVariantAnimation(self, startValue=0.0, endValue=1.0, duration=int(payload.get("duration") or 500))
        glide.valueChanged.connect(step)
        glide.start(QVariantAnimation.DeletionPolicy.DeleteWhenStopped)
        self._animation = glide

    def _region_item(self, region: dict, color: QColor, dashed: bool, width: int = 2) -> QGraphicsItem | None:
        kind, coords = region.get("type"), region.get("coordinates")
        try:
            if kind == "mask":
                overlay = mask_overlay(coords, color)
                if overlay is None:
                    return None
                item = QGraphicsPixmapItem(QPixmap.fromImage(overlay[0]))
                item.setOffset(overlay[1], overlay[2])
                return item
            item = QGraphicsPathItem(shape_path(kind, coords))
        except (KeyError, TypeError, ValueError, IndexError):
            return None
        item.setPen(_cosmetic(color, dashed=dashed, width=width))
        return item

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
            "bottom_right": [f"{d.columns} x {d.rows}", f"{d.bits_stored}-bit"],
        }

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802 - Qt override
        corners = self.corner_text()
        if not corners:
            return
        painter.save()
        painter.resetTransform()
        painter.setFont(QFont("Sans", 9))
        painter.setPen(QColor(230, 230, 120))
        area = self.viewport().rect().adjusted(6, 4, -6, -4)
        flags = {"top_left": Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft,
                 "top_right": Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignRight,
                 "bottom_left": Qt.AlignmentFlag.AlignBottom | Qt.AlignmentFlag.AlignLeft,
                 "bottom_right": Qt.AlignmentFlag.AlignBottom | Qt.AlignmentFlag.AlignRight}
        for corner, lines in corners.items():
            painter.drawText(area, flags[corner], "\n".join(line for line in lines if line))
        painter.restore()

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
        add("delete", "Delete selected", [QKeySequence.StandardKey.Delete, "Backspace"], self.delete_selected)
        add("accept_mask", "Accept mask", "Ctrl+Return", lambda: self.accept_segmentation())
        for name, (key, title) in TOOLS.items():
            add(f"tool:{name}", title, key, lambda _=False, n=name: self.set_tool(n), checkable=True)
        return actions

    def _ask_text(self) -> str | None:
        text, ok = QInputDialog.getText(self, "Text annotation", "Text:")
        return text if ok else None


def _cosmetic(color: QColor, dashed: bool = False, width: int = 2) -> QPen:
    pen = QPen(color, width)
    pen.setCosmetic(True)
    if dashed:
        pen.setStyle(Qt.PenStyle.DashLine)
    return pen


def regions_in(payload: Any) -> list[dict]:
    """Every region dict ({"type", "coordinates"}) inside a pushed payload, however nested."""
    found: list[dict] = []
    if isinstance(payload, dict):
        if payload.get("type") in ("bbox", "polygon", "point", "freehand", "mask") and "coordinates" in payload:
            return [payload]
        if "counts" in payload and "size" in payload:
            return [{"type": "mask", "coordinates": payload}]
        if isinstance(payload.get("rle"), dict):
            return [{"type": "mask", "coordinates": payload["rle"]}]
        if isinstance(payload.get("coordinates"), list) and len(payload["coordinates"]) == 4:
            return [{"type": "bbox", "coordinates": payload["coordinates"]}]
        for key in ("region", "regions", "data", "annotations", "boxes", "masks", "items", "to"):
            if key in payload:
                found += regions_in(payload[key])
    elif isinstance(payload, list):
        if len(payload) == 4 and all(isinstance(v, int | float) for v in payload):
            return [{"type": "bbox", "coordinates": payload}]
        for entry in payload:
            found += regions_in(entry)
    return found


__all__ = ["TOOLS", "CanvasView", "regions_in"]
