"""Graphics items for stored annotations, in image pixel coordinates (scene = image)."""

from __future__ import annotations

import numpy as np

from desktop.qt import (
    QBrush,
    QColor,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsRectItem,
    QGraphicsSimpleTextItem,
    QImage,
    QPainterPath,
    QPen,
    QPixmap,
    QPointF,
    QPolygonF,
    Qt,
)
from engine.analysis.measurements import measure_annotation
from engine.imaging.masks import decode_rle

COLORS = {"user": QColor(255, 214, 0), "ai": QColor(0, 220, 255), "suggestion": QColor(255, 140, 0),
          "measurement": QColor(120, 255, 120), "interactive": QColor(0, 255, 100)}
ORGAN_COLORS = [QColor.fromHsv(h, 200, 255) for h in range(0, 360, 26)]


def mask_overlay(rle: dict, color: QColor, alpha: int = 110) -> tuple[QImage, int, int] | None:
    """A coloured ARGB image of a mask cropped to its bounds, with its (x, y) offset.

    Plain numpy + QImage, so it runs on a worker thread.
    """
    mask = decode_rle(rle) if isinstance(rle, dict) else rle
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = mask[y0:y1, x0:x1]
    argb = np.zeros(crop.shape, np.uint32)
    argb[crop] = (alpha << 24) | (color.red() << 16) | (color.green() << 8) | color.blue()
    image = QImage(argb.data, argb.shape[1], argb.shape[0], argb.strides[0], QImage.Format.Format_ARGB32)
    return image.copy(), int(x0), int(y0)


def heatmap_image(data: dict, alpha: int = 120) -> tuple[QImage, list[float]]:
    """A pushed heatmap layer's grid as a blue-to-red ARGB image, and the bbox it covers."""
    values = np.asarray(data["values"], dtype=np.float32)
    low, high = float(data["min"]), float(data["max"])
    t = np.clip((values - low) / ((high - low) or 1.0), 0.0, 1.0)
    red = (np.clip(2 * t, 0, 1) * 255).astype(np.uint32)
    blue = (np.clip(2 - 2 * t, 0, 1) * 255).astype(np.uint32)
    green = ((1 - np.abs(2 * t - 1)) * 255).astype(np.uint32)
    argb = np.ascontiguousarray((alpha << 24) | (red << 16) | (green << 8) | blue, dtype=np.uint32)
    image = QImage(argb.data, argb.shape[1], argb.shape[0], argb.strides[0], QImage.Format.Format_ARGB32)
    return image.copy(), [float(v) for v in data["region"]["coordinates"]]


def cosmetic_pen(color: QColor, dashed: bool = False, width: int = 2) -> QPen:
    """A pen of ``width`` screen pixels at any zoom."""
    pen = QPen(color, width)
    pen.setCosmetic(True)
    if dashed:
        pen.setStyle(Qt.PenStyle.DashLine)
    return pen


def translated(kind: str, coordinates: object, dx: float, dy: float) -> object:
    """Coordinates moved by (dx, dy); masks do not move."""
    def move(point: list) -> list:
        return [round(point[0] + dx, 2), round(point[1] + dy, 2)]
    if kind == "bbox":
        x1, y1, x2, y2 = coordinates
        return [round(x1 + dx, 2), round(y1 + dy, 2), round(x2 + dx, 2), round(y2 + dy, 2)]
    if kind == "point":
        return move(coordinates)
    if kind in ("polygon", "freehand"):
        return [move(p) for p in coordinates]
    if kind == "measurement":
        return {"kind": coordinates["kind"], "points": [move(p) for p in coordinates["points"]]}
    if kind == "text":
        return {"position": move(coordinates["position"]), "text": coordinates["text"]}
    return coordinates


def vertices(kind: str, coordinates: object) -> list[list[float]]:
    """The points a user can drag one by one: polygon corners, measurement points, the two
    corners of a box. Freehand outlines (hundreds of points) and the rest have none."""
    if kind == "polygon":
        return [list(p) for p in coordinates]
    if kind == "measurement":
        return [list(p) for p in coordinates["points"]]
    if kind == "bbox":
        x1, y1, x2, y2 = coordinates
        return [[x1, y1], [x2, y2]]
    return []


def with_vertex(kind: str, coordinates: object, index: int, x: float, y: float) -> object:
    """Coordinates with vertex ``index`` (see :func:`vertices`) moved to (x, y)."""
    points = vertices(kind, coordinates)
    points[index] = [round(x, 2), round(y, 2)]
    if kind == "measurement":
        return {**coordinates, "points": points}
    if kind == "bbox":
        (x1, y1), (x2, y2) = points
        return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    return points


def ellipse_of(box: list[float]) -> dict[str, list[float]]:
    """The axis-aligned ellipse ``{"center", "radii"}`` inscribed in a box ``[x1, y1, x2, y2]``."""
    x1, y1, x2, y2 = box
    return {"center": [round((x1 + x2) / 2, 2), round((y1 + y2) / 2, 2)],
            "radii": [round(abs(x2 - x1) / 2, 2), round(abs(y2 - y1) / 2, 2)]}


def shape_path(kind: str, coordinates: object, point_radius: float = 6.0) -> QPainterPath:
    """The outline of an annotation (or of a shape being drawn); ``line`` is an open polyline."""
    path = QPainterPath()
    if kind == "ellipse":
        (cx, cy), (rx, ry) = coordinates["center"], coordinates["radii"]
        path.addEllipse(QPointF(cx, cy), rx, ry)
    elif kind == "line":
        path.addPolygon(QPolygonF([QPointF(x, y) for x, y in coordinates]))
    elif kind == "bbox":
        x1, y1, x2, y2 = coordinates
        path.addRect(min(x1, x2), min(y1, y2), abs(x2 - x1), abs(y2 - y1))
    elif kind == "point":
        path.addEllipse(QPointF(*coordinates), point_radius, point_radius)
    elif kind in ("polygon", "freehand", "measurement"):
        points = coordinates["points"] if kind == "measurement" else coordinates
        polygon = QPolygonF([QPointF(x, y) for x, y in points])
        path.addPolygon(polygon)
        if kind != "measurement" or coordinates["kind"] == "area":
            path.closeSubpath()
    return path


class AnnotationItem(QGraphicsPathItem):
    """One stored annotation: an outline (or mask pixmap) plus a label that ignores zoom."""

    def __init__(self, annotation: dict, spacing: tuple | None, spacing_source: str,
                 overlay: tuple[QImage, int, int] | None = None, editable: bool = True) -> None:
        super().__init__()
        self.annotation, self.editable = annotation, editable
        kind, coords = annotation["type"], annotation["coordinates"]
        suggestion = annotation.get("layer") in ("suggestions", "ai_suggestions") or bool(
            (annotation.get("style") or {}).get("lineDash"))
        role = ("suggestion" if suggestion else "measurement" if kind == "measurement"
                else "ai" if annotation.get("source") == "ai" else "user")
        pen = QPen(COLORS[role], 2)
        pen.setCosmetic(True)
        if suggestion:
            pen.setStyle(Qt.PenStyle.DashLine)
        self.setPen(pen)
        text = annotation.get("label") or ""
        if kind == "text":
            text, anchor = coords["text"], coords["position"]
        elif kind == "mask":
            anchor = None
            if overlay is not None:
                image, x0, y0 = overlay
                pixmap = QGraphicsPixmapItem(QPixmap.fromImage(image), self)
                pixmap.setOffset(x0, y0)
                anchor = [x0, y0]
        else:
            self.setPath(shape_path(kind, coords))
            anchor = self.path().boundingRect().topLeft()
            anchor = [anchor.x(), anchor.y()]
        if kind == "measurement":
            value = measure_annotation(coords, spacing, spacing_source)
            text = f"{value['value']:.1f} {value['unit']}" + ("" if value["calibrated"] else " (uncal.)")
        if annotation.get("confidence") is not None and kind != "text":
            text += f" {annotation['confidence']:.2f}"
        if text and anchor is not None:
            label = QGraphicsSimpleTextItem(text, self)
            label.setBrush(QBrush(COLORS[role]))
            label.setPos(anchor[0], anchor[1])
            label.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
            label.setY(anchor[1] - 2)
        movable = kind != "mask" and editable
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsSelectable, True)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsMovable, movable)
        self.handles: list[VertexHandle] = []

    @property
    def annotation_id(self) -> str:
        return self.annotation["annotation_id"]

    def shape(self) -> QPainterPath:
        """Easier to grab: the children's area counts (labels, mask pixmaps)."""
        path = QPainterPath(self.path())
        path.addRect(self.childrenBoundingRect())
        return path

    def mouseReleaseEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        super().mouseReleaseEvent(event)
        offset = self.pos()
        if offset.manhattanLength() > 0.5 and self.scene() is not None:
            self.setPos(0, 0)  # the store is the truth: the moved copy comes back from it
            self._view().move_annotation(self.annotation_id, offset.x(), offset.y())

    def itemChange(self, change, value):  # noqa: ANN001, ANN201, N802 - Qt override
        """Selected: one drag handle per vertex (see :func:`vertices`); deselected: none."""
        if change == QGraphicsItem.GraphicsItemChange.ItemSelectedHasChanged:
            for handle in self.handles:
                handle.setParentItem(None)
                if handle.scene() is not None:
                    handle.scene().removeItem(handle)
            self.handles = []
            if value and self.editable:
                coordinates = self.annotation["coordinates"]
                self.handles = [VertexHandle(self, i, QPointF(x, y))
                                for i, (x, y) in enumerate(vertices(self.annotation["type"], coordinates))]
        return super().itemChange(change, value)

    def drag_vertex(self, index: int, point: QPointF) -> None:
        """Show the shape with one vertex moved (nothing stored yet)."""
        kind = self.annotation["type"]
        self.setPath(shape_path(kind, with_vertex(kind, self.annotation["coordinates"], index, point.x(), point.y())))

    def release_vertex(self, index: int, point: QPointF) -> None:
        """Store the moved vertex through the undo stack; the item comes back from the store."""
        kind, before = self.annotation["type"], self.annotation["coordinates"]
        after = with_vertex(kind, before, index, point.x(), point.y())
        if after != before and self.scene() is not None:
            self._view().edit_annotation(self.annotation_id, coordinates=after)

    def _view(self):  # noqa: ANN202 - CanvasView
        return self.scene().views()[0]


class VertexHandle(QGraphicsRectItem):
    """A small square on one vertex of a selected annotation, the same size at any zoom;
    dragging it reshapes the annotation (not moving it as a whole)."""

    SIZE = 9.0

    def __init__(self, owner: AnnotationItem, index: int, point: QPointF) -> None:
        half = self.SIZE / 2
        super().__init__(-half, -half, self.SIZE, self.SIZE, owner)
        self.owner, self.index = owner, index
        self.setPos(point)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        pen = QPen(owner.pen().color(), 1)
        pen.setCosmetic(True)
        self.setPen(pen)
        self.setBrush(QBrush(QColor(255, 255, 255, 220)))
        self.setCursor(Qt.CursorShape.SizeAllCursor)
        self.setZValue(1)

    def mousePressEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        event.accept()  # this drag is the vertex's, not the annotation's

    def mouseMoveEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        point = self.owner.mapFromScene(event.scenePos())
        self.setPos(point)
        self.owner.drag_vertex(self.index, point)

    def mouseReleaseEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        self.owner.release_vertex(self.index, self.pos())
