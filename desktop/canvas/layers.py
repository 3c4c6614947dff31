"""Canvas layers per the product spec, each a model that validates and announces changes.

Layer 0 original image, 1 AI masks, 2 AI boxes, 3 user drawings, 4 measurements,
5 labels. A layer owns a graphics group; its items are children, so visibility and
opacity apply to the whole layer. With untrained models the model-output layers (AI
masks, AI boxes: organ masks, region boxes, agent heatmaps) start hidden and say so in
their title; the user can still show them. Panels subscribe to ``changed`` and write back
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


#: Layers that show model output (masks, boxes, agent heatmaps): hidden when the models are untrained.
MODEL_OUTPUT_LAYERS = ("ai_masks", "ai_boxes")
#: Added to the title of a layer holding untrained models' output.
UNTRAINED_SUFFIX = " (untrained model)"


class Layer(QObject):
    """One canvas layer: a title, a visibility switch and an opacity in 0..1."""

    changed = Signal()

    def __init__(self, key: str, title: str, z: int) -> None:
        super().__init__()
        self.key, self.base_title = key, title
        self.untrained = False
        self.group = LayerGroup()
        self.group.setZValue(z)

    @property
    def title(self) -> str:
        return self.base_title + (UNTRAINED_SUFFIX if self.untrained else "")

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
    """The ordered layers of the canvas, and whether the models feeding them are untrained."""

    untrained_changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.layers = [Layer(key, title, z) for z, (key, title) in enumerate(LAYERS)]
        self.by_key = {layer.key: layer for layer in self.layers}
        self.untrained_note = ""

    def __getitem__(self, key: str) -> Layer:
        return self.by_key[key]

    def set_models_untrained(self, untrained: bool, note: str = "") -> None:
        """Mark the model-output layers as untrained (titled so, and hidden until the user shows
        them) or trained again (shown). ``note`` says why, for the panel's banner."""
        self.untrained_note = note if untrained else ""
        for key in MODEL_OUTPUT_LAYERS:
            layer = self.by_key[key]
            if layer.untrained == untrained:
                continue
            layer.untrained = untrained
            layer.visible = not untrained
            layer.changed.emit()  # the title changed even when the visibility did not
        self.untrained_changed.emit()
