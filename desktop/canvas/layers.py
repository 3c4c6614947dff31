"""Canvas layers per the product spec, each a model that validates and announces changes.

Layer 0 original image, 1 AI masks, 2 AI boxes, 3 user drawings, 4 measurements,
5 labels. A layer owns a graphics group; its items are children, so visibility and
opacity apply to the whole layer. Panels subscribe to ``changed`` and write back
through the setters (napari's layer events, in small).
"""

from __future__ import annotations

from desktop.qt import QGraphicsItem, QObject, QPainter, QRectF, Signal

LAYERS = (
    ("original", "Original image"),
    ("ai_masks", "AI masks"),
    ("ai_boxes", "AI boxes"),
    ("user", "User drawings"),
    ("measurements", "Measurements"),
    ("labels", "Labels"),
)


def layer_for(annotation: dict) -> str:
    """Which canvas layer shows a stored annotation."""
    kind, source = annotation["type"], annotation.get("source")
    if kind == "measurement":
        return "measurements"
    if kind == "text":
        return "labels"
    if source == "ai":
        return "ai_masks" if kind == "mask" else "ai_boxes"
    return "user"


class LayerGroup(QGraphicsItem):
    """An invisible parent item: children inherit its visibility and opacity."""

    def __init__(self) -> None:
        super().__init__()
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemHasNoContents, True)

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt override
        return QRectF()

    def paint(self, painter: QPainter, option: object, widget: object = None) -> None:
        """Nothing: the children paint."""


class Layer(QObject):
    """One canvas layer: a title, a visibility switch and an opacity in 0..1."""

    changed = Signal()

    def __init__(self, key: str, title: str, z: int) -> None:
        super().__init__()
        self.key, self.title = key, title
        self.group = LayerGroup()
        self.group.setZValue(z)

    @property
    def visible(self) -> bool:
        return self.group.isVisible()

    @visible.setter
    def visible(self, value: bool) -> None:
        if bool(value) != self.visible:
            self.group.setVisible(bool(value))
            self.changed.emit()

    @property
    def opacity(self) -> float:
        return self.group.opacity()

    @opacity.setter
    def opacity(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"opacity must be within 0..1, got {value}")
        if abs(float(value) - self.opacity) > 1e-6:
            self.group.setOpacity(float(value))
            self.changed.emit()


class LayerModel(QObject):
    """The ordered layers of the canvas."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = [Layer(key, title, z) for z, (key, title) in enumerate(LAYERS)]
        self.by_key = {layer.key: layer for layer in self.layers}

    def __getitem__(self, key: str) -> Layer:
        return self.by_key[key]
