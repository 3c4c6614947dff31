"""Layer list: per-layer visibility and opacity, and the annotations each layer holds."""

from __future__ import annotations

from desktop.canvas.layers import layer_for
from desktop.qt import (
    QHBoxLayout,
    QLabel,
    QSlider,
    Qt,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)


class LayersPanel(QWidget):
    """Subscribes to the canvas's layer models and annotation list; writes back through them."""

    def __init__(self, canvas, parent: QWidget | None = None) -> None:  # noqa: ANN001 - CanvasView
        super().__init__(parent)
        self.canvas = canvas
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Layer / annotation", "Source"])
        self.tree.setColumnWidth(0, 200)
        self.opacity = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=100, value=100)
        row = QHBoxLayout()
        row.addWidget(QLabel("Opacity"))
        row.addWidget(self.opacity)
        self.untrained_banner = QLabel()
        self.untrained_banner.setWordWrap(True)
        self.untrained_banner.setStyleSheet("background:#7a1f1f;color:white;padding:3px")
        self.untrained_banner.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.untrained_banner)
        layout.addWidget(self.tree)
        layout.addLayout(row)
        self.layer_items: dict[str, QTreeWidgetItem] = {}
        self._updating = False
        for layer in canvas.layers.layers:
            item = QTreeWidgetItem([layer.title, ""])
            item.setData(0, Qt.ItemDataRole.UserRole, ("layer", layer.key))
            item.setCheckState(0, Qt.CheckState.Checked)
            item.setExpanded(True)
            self.tree.addTopLevelItem(item)
            self.layer_items[layer.key] = item
            layer.changed.connect(lambda layer=layer: self._layer_changed(layer))
        canvas.layers.untrained_changed.connect(self._untrained_changed)
        self.tree.itemChanged.connect(self._item_changed)
        self.tree.currentItemChanged.connect(self._current_changed)
        self.opacity.valueChanged.connect(self._opacity_moved)
        canvas.annotations_changed.connect(self.set_annotations)

    def _untrained_changed(self) -> None:
        note = self.canvas.layers.untrained_note
        self.untrained_banner.setText(note)
        self.untrained_banner.setVisible(bool(note))

    def _layer_changed(self, layer) -> None:  # noqa: ANN001
        self._updating = True  # a blocker: the model's own change must not echo back
        item = self.layer_items[layer.key]
        item.setText(0, layer.title)
        item.setCheckState(0, Qt.CheckState.Checked if layer.visible else Qt.CheckState.Unchecked)
        item.setText(1, "" if layer.opacity >= 0.999 else f"{layer.opacity:.0%}")
        self._updating = False

    def _item_changed(self, item: QTreeWidgetItem, column: int) -> None:
        data = item.data(0, Qt.ItemDataRole.UserRole)
        if self._updating or not data:
            return
        if data[0] == "layer" and column == 0:
            self.canvas.layers[data[1]].visible = item.checkState(0) == Qt.CheckState.Checked
        elif data[0] == "annotation" and column == 0:
            label = item.text(0)
            if label != (self.canvas.items[data[1]].annotation.get("label") or ""):
                self.canvas.edit_annotation(data[1], label=label)

    def _current_layer(self) -> str | None:
        item = self.tree.currentItem()
        while item is not None and item.parent() is not None:
            item = item.parent()
        return item.data(0, Qt.ItemDataRole.UserRole)[1] if item is not None else None

    def _current_changed(self, current: QTreeWidgetItem, _previous: QTreeWidgetItem) -> None:
        key = self._current_layer()
        if key is not None:
            self.opacity.blockSignals(True)
            self.opacity.setValue(round(self.canvas.layers[key].opacity * 100))
            self.opacity.blockSignals(False)
        data = current.data(0, Qt.ItemDataRole.UserRole) if current is not None else None
        if data and data[0] == "annotation" and data[1] in self.canvas.items:
            self.canvas.scene().clearSelection()
            self.canvas.items[data[1]].setSelected(True)

    def _opacity_moved(self, value: int) -> None:
        key = self._current_layer()
        if key is not None:
            self.canvas.layers[key].opacity = value / 100

    def set_annotations(self, annotations: list[dict]) -> None:
        self._updating = True
        for item in self.layer_items.values():
            item.takeChildren()
        for annotation in annotations:
            label = annotation.get("label") or annotation["type"]
            child = QTreeWidgetItem([label, f"{annotation['source']} · {annotation['type']}"])
            child.setData(0, Qt.ItemDataRole.UserRole, ("annotation", annotation["annotation_id"]))
            child.setFlags(child.flags() | Qt.ItemFlag.ItemIsEditable)
            self.layer_items[layer_for(annotation)].addChild(child)
        self._updating = False

    def annotation_ids(self) -> list[str]:
        """The annotation ids listed, for tests and the layer filter."""
        return [item.child(i).data(0, Qt.ItemDataRole.UserRole)[1]
                for item in self.layer_items.values() for i in range(item.childCount())]
