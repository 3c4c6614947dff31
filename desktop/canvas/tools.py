"""Tool input on the canvas: drawing, measuring and click-to-segment, and the undoable edits they make."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from desktop.canvas.commands import CreateAnnotation, DeleteAnnotation, EditAnnotation, Ref
from desktop.canvas.items import (
    COLORS,
    AnnotationItem,
    cosmetic_pen,
    ellipse_of,
    mask_overlay,
    shape_path,
    translated,
)
from desktop.qt import (
    QColor,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsView,
    QInputDialog,
    QPixmap,
    QPointF,
    Qt,
)
from desktop.worker import Op

if TYPE_CHECKING:
    from desktop.canvas.host import CanvasHost

#: Tools: name -> (shortcut, title). Measure tools create measurement annotations.
TOOLS = {
    "select": ("V", "Select / move"), "pan": ("H", "Pan"), "bbox": ("B", "Box"),
    "polygon": ("P", "Polygon"), "point": ("O", "Point"), "freehand": ("D", "Freehand"),
    "distance": ("M", "Measure distance"), "angle": ("N", "Measure angle"), "area": ("K", "Measure area"),
    "text": ("T", "Text"), "segment": ("S", "Click-to-segment"),
}
_DRAG_KINDS = {"bbox", "freehand", "distance"}
_CLICK_KINDS = {"polygon": 3, "area": 3, "angle": 3}  # fewest points; angle finishes at 3


class ToolController:
    """The current tool: mouse and key input in image pixels -> annotations, edits, segmentation prompts.

    A view with other tools (the volume planes) subclasses it with its own ``tools``, the tools it
    drags (``drag_kinds``) and those the view handles itself (``view_tools``)."""

    tools: dict[str, tuple[str, str]] = TOOLS
    drag_kinds: frozenset[str] = frozenset(_DRAG_KINDS)
    view_tools: tuple[str, ...] = ("select", "pan")

    def __init__(self, view: CanvasHost) -> None:
        self.view = view
        self.tool = "select"
        self.selection: dict | None = None  # the last drawn region, for analyze_selected_region
        self.refs: list[Ref] = []
        self.press_pos: QPointF | None = None
        self._drawing: list[QPointF] = []
        self._preview = QGraphicsPathItem()
        self._preview.setPen(cosmetic_pen(QColor(255, 255, 255), dashed=True))
        self._preview.setZValue(100)
        view.scene().addItem(self._preview)
        self.segment_state: dict[str, Any] = {"points": [], "labels": [], "box": None, "result": None}
        self._seg_item: QGraphicsPixmapItem | None = None
        self.ask_text: Callable[[], str | None] = self._ask_text

    def set_tool(self, name: str) -> None:
        view = self.view
        if name not in self.tools:
            raise ValueError(f"unknown tool {name!r}")
        self.tool = name
        view.schedule_sync()
        self._drawing = []
        self._preview.setPath(shape_path("polygon", []))
        view.setDragMode(QGraphicsView.DragMode.ScrollHandDrag if name == "pan" else
                         QGraphicsView.DragMode.RubberBandDrag if name == "select" else
                         QGraphicsView.DragMode.NoDrag)
        view.setCursor(Qt.CursorShape.OpenHandCursor if name == "pan" else
                       Qt.CursorShape.ArrowCursor if name == "select" else Qt.CursorShape.CrossCursor)
        action = view.actions_by_name.get(f"tool:{name}")
        if action is not None:
            action.setChecked(True)
        view.tool_changed.emit(name)

    # -- mouse and keys (the view maps events to image points) ---------------------------
    def press(self, button: Qt.MouseButton, point: QPointF) -> bool:
        """A mouse press; False when the view handles it (select, pan, other buttons)."""
        if button != Qt.MouseButton.LeftButton or self.tool in self.view_tools:
            return False
        if self.tool in self.drag_kinds or self.tool == "segment":
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
        self.update_preview(point)
        return True

    def move(self, buttons: Qt.MouseButton, point: QPointF) -> None:
        if self._drawing and buttons & Qt.MouseButton.LeftButton and self.tool == "freehand":
            self._drawing.append(point)
        self.update_preview(point)

    def release(self, button: Qt.MouseButton, point: QPointF) -> bool:
        """A mouse release; False when the view handles it."""
        moved = self.press_pos is not None and (point - self.press_pos).manhattanLength() > 4 / self.view.scale_factor()
        if button == Qt.MouseButton.RightButton:
            if self.tool == "segment" and not moved:
                self.segment_click(point.x(), point.y(), 0)
            return True
        if button == Qt.MouseButton.LeftButton and self.tool == "segment":
            if moved:
                self.segment_box([self.press_pos.x(), self.press_pos.y(), point.x(), point.y()])
            else:
                self.segment_click(point.x(), point.y(), 1)
            self._drawing = []
            self.update_preview(point)
            return True
        if button == Qt.MouseButton.LeftButton and self.tool in self.drag_kinds and self._drawing:
            if self.tool != "freehand":
                self._drawing.append(point)
            if moved:
                self.finish_drawing()
            else:
                self._drawing = []
            return True
        return False

    def double_click(self) -> bool:
        if self.tool in ("polygon", "area"):
            self.finish_drawing()
            return True
        return False

    def key_press(self, key: Qt.Key) -> bool:
        """Return/Enter finishes (or accepts the mask), Escape cancels; False for other keys."""
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if self.tool == "segment":
                self.accept_segmentation()
            else:
                self.finish_drawing()
        elif key == Qt.Key.Key_Escape:
            self._drawing = []
            self._preview.setPath(shape_path("polygon", []))
            self.clear_segmentation()
        else:
            return False
        return True

    def update_preview(self, cursor: QPointF) -> None:
        points = [*self._drawing, cursor] if self.tool in _CLICK_KINDS and self._drawing else list(self._drawing)
        if self.tool in ("bbox", "segment", "ellipse") and len(points) >= 1 and self._drawing:
            points = [self._drawing[0], cursor]
            x1, y1, x2, y2 = points[0].x(), points[0].y(), points[1].x(), points[1].y()
            self._preview.setPath(shape_path("ellipse", ellipse_of([x1, y1, x2, y2])) if self.tool == "ellipse"
                                  else shape_path("bbox", [x1, y1, x2, y2]))
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
        elif kind == "ellipse" and len(points) >= 2:
            self.create_annotation("ellipse", ellipse_of([*points[0], *points[-1]]))
        elif kind in ("polygon", "freehand") and len(points) >= 3:
            self.create_annotation(kind, points)
        elif kind == "distance" and len(points) >= 2:
            self.create_annotation("measurement", {"kind": "distance", "points": [points[0], points[-1]]})
        elif kind in ("angle", "area") and len(points) >= 3:
            self.create_annotation("measurement", {"kind": kind, "points": points[:3] if kind == "angle" else points})

    def _ask_text(self) -> str | None:
        text, ok = QInputDialog.getText(self.view, "Text annotation", "Text:")
        return text if ok else None

    # -- annotations (undoable) ------------------------------------------------------------
    def ref_for(self, annotation_id: str) -> Ref:
        for ref in self.refs:
            if ref.id == annotation_id:
                return ref
        self.refs.append(Ref(annotation_id))
        return self.refs[-1]

    def create_annotation(self, kind: str, coordinates: Any, label: str = "") -> Ref:
        """Draw -> a user annotation in the store, through the undo stack."""
        ref = Ref()
        self.refs.append(ref)
        annotation = {"image_id": self.view.image_id, "type": kind, "coordinates": coordinates, "label": label,
                      "source": "user"}
        self.view.undo_stack.push(CreateAnnotation(self.view, ref, annotation))
        if kind in ("bbox", "polygon", "freehand", "point"):
            self.selection = {"type": kind, "coordinates": coordinates}
            self.view.region_drawn.emit(self.selection)
        return ref

    def move_annotation(self, annotation_id: str, dx: float, dy: float) -> None:
        annotation = self.view.items[annotation_id].annotation
        moved = translated(annotation["type"], annotation["coordinates"], dx, dy)
        self.view.undo_stack.push(EditAnnotation(self.view, self.ref_for(annotation_id),
                                                 {"coordinates": annotation["coordinates"]},
                                                 {"coordinates": moved}, "Move annotation"))

    def edit_annotation(self, annotation_id: str, **after: Any) -> None:
        annotation = self.view.items[annotation_id].annotation
        before = {k: annotation.get(k) for k in after}
        self.view.undo_stack.push(EditAnnotation(self.view, self.ref_for(annotation_id), before, after))

    def delete_selected(self) -> None:
        undo_stack = self.view.undo_stack
        chosen = [item for item in self.view.scene().selectedItems() if isinstance(item, AnnotationItem)]
        if len(chosen) > 1:
            undo_stack.beginMacro("Delete annotations")
        for item in chosen:
            undo_stack.push(DeleteAnnotation(self.view, self.ref_for(item.annotation_id), dict(item.annotation)))
        if len(chosen) > 1:
            undo_stack.endMacro()

    def selected_region(self) -> dict | None:
        """The selected annotation as a region, else the last drawn region."""
        for item in self.view.scene().selectedItems():
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
        view = self.view
        engine, session_id, image_id = view.engine, view.session_id, view.image_id
        state = {k: (list(v) if isinstance(v, list) else v) for k, v in self.segment_state.items()}

        def work() -> dict:
            result = engine.segment_interactive(session_id, image_id, points=state["points"] or None,
                                                labels=state["labels"] or None, box=state["box"])
            best = result["masks"][result["best"]]
            result["overlay"] = mask_overlay(best["rle"], COLORS["interactive"], 120)
            return result

        return Op(view, work).progress("Segmenting").success(self._show_segmentation).run()

    def _show_segmentation(self, result: dict) -> None:
        view = self.view
        if result["image_id"] != view.image_id:
            return
        self.segment_state["result"] = result
        if self._seg_item is not None:
            view.scene().removeItem(self._seg_item)
            self._seg_item = None
        if result["overlay"] is not None:
            image, x0, y0 = result["overlay"]
            self._seg_item = QGraphicsPixmapItem(QPixmap.fromImage(image), view.layers["user"].group)
            self._seg_item.setOffset(x0, y0)
        view.mask_updated.emit(result)

    def accept_segmentation(self, label: str = "segmented region") -> Op | None:
        """Keep the current candidate mask as a user annotation."""
        result = self.segment_state["result"]
        if result is None:
            return None
        view = self.view
        engine, session_id, mask_id = view.engine, view.session_id, result["mask_id"]
        self.clear_segmentation()
        return Op(view, lambda: engine.accept_mask(session_id, mask_id, label)).progress("Accepting mask").success(
            lambda _r: view.schedule_refresh()).run()

    def clear_segmentation(self) -> None:
        self.segment_state = {"points": [], "labels": [], "box": None, "result": None}
        if self._seg_item is not None:
            self.view.scene().removeItem(self._seg_item)
            self._seg_item = None
