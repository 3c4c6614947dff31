"""What agents push onto the canvas: layers and heatmaps, highlights and viewport glides."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from desktop.canvas.items import COLORS, cosmetic_pen, heatmap_image, mask_overlay, shape_path
from desktop.qt import (
    QColor,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QPixmap,
    Qt,
    QTransform,
    QVariantAnimation,
)
from desktop.worker import Op
from engine.events import EventKind

if TYPE_CHECKING:
    from desktop.canvas.host import CanvasHost


class AgentOverlays:
    """Items agents pushed (by layer id), drawn over the view's layers and cleared with its image."""

    def __init__(self, view: CanvasHost) -> None:
        self.view = view
        self.pushed: dict[str, list[QGraphicsItem]] = {}
        self.animation: QVariantAnimation | None = None

    def clear(self) -> None:
        """Drop every pushed item (a new image is shown)."""
        for item in [i for v in self.pushed.values() for i in v]:
            self.view.scene().removeItem(item)
        self.pushed = {}
        self.animation = None

    def on_canvas_event(self, kind: str, payload: dict) -> None:
        """React to an agent's ``canvas.*`` store event for the shown image."""
        view = self.view
        if kind == EventKind.CANVAS_HIGHLIGHT:
            self.highlight(payload)
        elif kind == EventKind.CANVAS_ANIMATE:
            self.animate(payload)
        elif kind in (EventKind.CANVAS_LAYER_ADDED, EventKind.CANVAS_LAYER_UPDATED):
            engine, session_id, layer_id = view.engine, view.session_id, payload.get("layer_id")
            Op(view, lambda: [la for la in engine.get_canvas_state(session_id).get("layers", [])
                              if la["layer_id"] == layer_id], lane="read").success(
                lambda found: found and self.show_pushed_layer(found[0])).run()
        elif kind == EventKind.CANVAS_LAYER_REMOVED:
            for item in self.pushed.pop(str(payload.get("layer_id") or payload.get("id")), []):
                view.scene().removeItem(item)

    def show_pushed_layer(self, payload: dict) -> None:
        view = self.view
        layer_id = str(payload.get("layer_id") or payload.get("id") or payload.get("name") or "agent")
        for item in self.pushed.pop(layer_id, []):
            view.scene().removeItem(item)
        items = []
        if payload.get("visible") is False or payload.get("image_id") not in (None, view.image_id):
            return
        if payload.get("type") == "heatmap":
            image, (x1, y1, x2, y2) = heatmap_image(payload["data"])
            item = QGraphicsPixmapItem(QPixmap.fromImage(image))
            item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
            item.setTransform(QTransform.fromScale((x2 - x1) / image.width(), (y2 - y1) / image.height()))
            item.setPos(x1, y1)
            item.setParentItem(view.layers["ai_masks"].group)
            self.pushed[layer_id] = [item]
            return
        dashed = bool((payload.get("style") or {}).get("lineDash"))
        for region in regions_in(payload):
            item = region_item(region, COLORS["ai"], dashed=dashed)
            if item is not None:
                item.setParentItem(view.layers["ai_masks" if region["type"] == "mask" else "ai_boxes"].group)
                items.append(item)
        self.pushed[layer_id] = items

    def highlight(self, payload: dict) -> None:
        """A pulsing outline around the pushed region(s) for three seconds."""
        for region in regions_in(payload):
            item = region_item(region, QColor(255, 60, 60), dashed=False, width=3)
            if item is None:
                continue
            item.setParentItem(self.view.layers["ai_boxes"].group)
            pulse = QVariantAnimation(self.view, startValue=1.0, endValue=0.2, duration=500, loopCount=6)
            pulse.valueChanged.connect(item.setOpacity)
            pulse.finished.connect(lambda item=item: item.scene() and item.scene().removeItem(item))
            pulse.start(QVariantAnimation.DeletionPolicy.DeleteWhenStopped)
            self.pushed.setdefault("highlight", []).append(item)

    def animate(self, payload: dict) -> None:
        """An agent's ``canvas.animate``: glide from ``from`` (default: now) to ``to`` in ``duration`` ms."""
        view = self.view
        start, end = {**view.viewport_state(), **(payload.get("from") or {})}, payload.get("to") or {}

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
            view.set_viewport(state)

        glide = QVariantAnimation(view, startValue=0.0, endValue=1.0, duration=int(payload.get("duration") or 500))
        glide.valueChanged.connect(step)
        glide.start(QVariantAnimation.DeletionPolicy.DeleteWhenStopped)
        self.animation = glide


def region_item(region: dict, color: QColor, dashed: bool, width: int = 2) -> QGraphicsItem | None:
    """A graphics item drawing one pushed region, or None when it cannot be drawn."""
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
    item.setPen(cosmetic_pen(color, dashed=dashed, width=width))
    return item


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
