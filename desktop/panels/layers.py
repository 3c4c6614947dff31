"""Layer list: per-layer visibility and opacity, the annotations each layer holds, and the measurements
drawn on the volume planes (listed under their own heading: they belong to the volume, not to the image).

An annotation's context menu links it to a lesion across studies (:mod:`desktop.panels.lesions`);
a tracked one shows its Tracking Identifier."""

from __future__ import annotations

from desktop.canvas.layers import layer_for
from desktop.canvas.plane_tools import plane_of, roi_text
from desktop.panels.lesions import LesionLinker
from desktop.qt import (
    QHBoxLayout,
    QLabel,
    QMenu,
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
        self.annotations: dict[str, dict] = {}  # the listed annotations by id (their rows, for the menu)
        self.lesions = LesionLinker(canvas, self)
        self._updating = False
        for layer in canvas.layers.layers:
            item = QTreeWidgetItem([layer.title, ""])
            item.setData(0, Qt.ItemDataRole.UserRole, ("layer", layer.key))
            item.setCheckState(0, Qt.CheckState.Checked)
            item.setExpanded(True)
            self.tree.addTopLevelItem(item)
            self.layer_items[layer.key] = item
            layer.changed.connect(lambda layer=layer: self._layer_changed(layer))
        self.volume_item = QTreeWidgetItem(["Volume measurements (planes)", ""])
        self.volume_item.setData(0, Qt.ItemDataRole.UserRole, ("volume", None))
        self.volume_item.setExpanded(True)
        self.tree.addTopLevelItem(self.volume_item)
        canvas.layers.untrained_changed.connect(self._untrained_changed)
        self.tree.itemChanged.connect(self._item_changed)
        self.tree.currentItemChanged.connect(self._current_changed)
        self.opacity.valueChanged.connect(self._opacity_moved)
        canvas.annotations_changed.connect(self.set_annotations)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)

    def _context_menu(self, position) -> None:  # noqa: ANN001 - QPoint
        item = self.tree.itemAt(position)
        data = item.data(0, Qt.ItemDataRole.UserRole) if item is not None else None
        menu = self.annotation_menu(data[1]) if data and data[0] == "annotation" else None
        if menu is not None:
            menu.exec(self.tree.viewport().mapToGlobal(position))

    def annotation_menu(self, annotation_id: str) -> QMenu | None:
        """The lesion actions on one listed annotation (None: it cannot be a lesion)."""
        annotation = self.annotations.get(annotation_id)
        return None if annotation is None else self.lesions.menu(annotation, self)

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
        data = item.data(0, Qt.ItemDataRole.UserRole) if item is not None else None
        return data[1] if data and data[0] == "layer" else None

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
        self.annotations = {a["annotation_id"]: a for a in annotations}
        for annotation in annotations:
            label = annotation.get("label") or annotation["type"]
            tracking = annotation.get("tracking")
            lesion = f" · lesion {tracking['identifier']}" if tracking else ""
            child = QTreeWidgetItem([label, f"{annotation['source']} · {annotation['type']}{lesion}"])
            if tracking:
                child.setToolTip(1, f"Tracking Identifier {tracking['identifier']}, UID {tracking['uid']}")
            child.setData(0, Qt.ItemDataRole.UserRole, ("annotation", annotation["annotation_id"]))
            child.setFlags(child.flags() | Qt.ItemFlag.ItemIsEditable)
            self.layer_items[layer_for(annotation)].addChild(child)
        self._updating = False
        self.lesions.refresh()

    def set_volume_annotations(self, annotations: list[dict]) -> None:
        """The shown volume's 3D annotations (``MprPanel.annotations_changed``): plane, slice and result."""
        self._updating = True
        self.volume_item.takeChildren()
        for annotation in annotations:
            coordinates = annotation["coordinates"]
            drawn_on = plane_of(coordinates)
            where = f"{drawn_on[0]} {drawn_on[1] + 1}" if drawn_on else "across slices"
            label = annotation.get("label") or f"{coordinates['shape'].removeprefix('slice_')} ({where})"
            child = QTreeWidgetItem([label, f"{annotation['source']} · {roi_text(coordinates['stats'], '')}"])
            child.setData(0, Qt.ItemDataRole.UserRole, ("volume_annotation", annotation["annotation_id"]))
            self.volume_item.addChild(child)
        self.volume_item.setExpanded(True)
        self._updating = False

    def volume_annotation_ids(self) -> list[str]:
        """The volume measurements listed."""
        return [self.volume_item.child(i).data(0, Qt.ItemDataRole.UserRole)[1]
                for i in range(self.volume_item.childCount())]

    def annotation_ids(self) -> list[str]:
        """The annotation ids listed, for tests and the layer filter."""
        return [item.child(i).data(0, Qt.ItemDataRole.UserRole)[1]
                for item in self.layer_items.values() for i in range(item.childCount())]
