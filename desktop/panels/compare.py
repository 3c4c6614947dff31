"""Current and prior side by side: the prior registered onto the current, and their difference.

Three views over the current's pixel grid (current, aligned prior, difference) share one
zoom and pan: a wheel or a scroll in any of them moves all three. Window/level (right-drag
in the current or the prior) is applied to both, since both are normalised to 0..1 by the
engine; the difference keeps its own symmetric window. The table lists each finding then
and now, with the models named; the lesion table each tracked lesion's value then and now,
its change (in the unit and %) and the days between. The engine computes everything
(``compare_images``, ``compare_with_prior``, ``lesion_changes``) on the engine lane; this
window only draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from desktop.qt import (
    QDialog,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QImage,
    QLabel,
    QPixmap,
    Qt,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
)


def grey_image(values: np.ndarray, center: float, width: float) -> QImage:
    """``values`` (0..1) through a linear window as an 8-bit grey QImage (owning its buffer)."""
    low = center - width / 2
    scaled = np.clip((values - low) / max(width, 1e-6), 0, 1)
    data = np.ascontiguousarray((scaled * 255).astype(np.uint8))
    image = QImage(data.data, data.shape[1], data.shape[0], data.shape[1], QImage.Format.Format_Grayscale8)
    return image.copy()


def _measured(value: float | None, unit: str | None) -> str:
    return "-" if value is None else f"{value:g} {unit or ''}".rstrip()


def lesion_rows(changes: dict[str, Any]) -> list[list[str]]:
    """The lesion table's rows from ``Engine.lesion_changes``: identifier, prior, current, change,
    change %, days; then the lesions first seen now and those of the prior not measured now."""
    rows = []
    for pair in changes["lesions"]:
        unit = pair.get("unit")
        signed = "-" if pair["change"] is None else f"{pair['change']:+g} {unit or ''}".rstrip()
        percent = "-" if pair["change_percent"] is None else f"{pair['change_percent']:+g} %"
        rows.append([pair["identifier"] or pair["uid"], _measured(pair["prior"], unit),
                     _measured(pair["current"], unit), signed + (f" ({pair['note']})" if pair.get("note") else ""),
                     percent, "-" if pair["days"] is None else str(pair["days"])])
    for lesion in changes["new"]:
        rows.append([lesion["identifier"] or lesion["uid"], "-", _measured(lesion["value"], lesion["unit"]),
                     "new (not in the prior)", "-", "-"])
    for lesion in changes["not_followed"]:
        rows.append([lesion["identifier"] or lesion["uid"], _measured(lesion["value"], lesion["unit"]), "-",
                     "not measured now", "-", "-"])
    return rows


class SyncedView(QGraphicsView):
    """One of the three views; zoom, pan and window/level go through the dialog to all."""

    def __init__(self, dialog: CompareDialog, title: str) -> None:
        super().__init__()
        self.dialog, self.title = dialog, title
        self.setScene(QGraphicsScene(self))
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.pixmap = self.scene().addPixmap(QPixmap())
        self._drag: tuple[float, float, float, float] | None = None
        self.horizontalScrollBar().valueChanged.connect(lambda _v: dialog.pan_from(self))
        self.verticalScrollBar().valueChanged.connect(lambda _v: dialog.pan_from(self))

    def wheelEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        self.dialog.zoom(1.25 if event.angleDelta().y() > 0 else 0.8)

    def mousePressEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if event.button() == Qt.MouseButton.RightButton:
            self._drag = (event.position().x(), event.position().y(), *self.dialog.window)
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if self._drag is not None:
            x0, y0, center, width = self._drag
            self.dialog.set_window(center - (event.position().y() - y0) / 500,
                                   max(0.02, width + (event.position().x() - x0) / 500))
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        self._drag = None
        super().mouseReleaseEvent(event)


class CompareDialog(QDialog):
    """Current, aligned prior and difference with one zoom, pan and window; findings then and now."""

    def __init__(self, parent: Any, images: dict, result: dict, lesions: dict | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compare with prior")
        self.images, self.result, self.lesions = images, result, lesions
        self.window = (0.5, 1.0)
        self._syncing = False
        self.views = [SyncedView(self, "current"), SyncedView(self, "prior (aligned)"),
                      SyncedView(self, "difference")]
        row = QHBoxLayout()
        for view in self.views:
            column = QVBoxLayout()
            column.addWidget(QLabel(view.title))
            column.addWidget(view)
            row.addLayout(column)
        quality = images["quality"]
        transform = images["transform"]
        self.summary = QLabel(
            f"prior {result['prior_study']['study_date'] or 'undated'} -> current "
            f"{result['current_study']['study_date'] or 'undated'}; registration: rotation "
            f"{transform['rotation_deg']} deg, scale {transform['scale']}, correlation {quality['ncc_before']} -> "
            f"{quality['ncc_after']}{'' if quality['good'] else ' (doubtful: check by eye)'}")
        self.table = QTreeWidget()
        self.table.setHeaderLabels(["Finding", "Prior", "Current", "Change"])
        findings = result["findings"]
        for finding in findings["findings"]:
            def p(value: float | None) -> str:
                return "-" if value is None else f"{value:.2f}"
            self.table.addTopLevelItem(QTreeWidgetItem([finding["label"], p(finding["prior_probability"]),
                                                        p(finding["current_probability"]), finding["change"]]))
        self.table.setToolTip(f"models: prior {findings['prior_model']}, current {findings['current_model']}"
                              + (f"; {findings['note']}" if findings["note"] else ""))
        self.lesion_table = QTreeWidget()
        self.lesion_table.setHeaderLabels(["Lesion", "Prior", "Current", "Change", "Change %", "Days"])
        self.lesion_table.setRootIsDecorated(False)
        for cells in lesion_rows(lesions) if lesions else []:
            self.lesion_table.addTopLevelItem(QTreeWidgetItem(cells))
        self.lesion_table.setVisible(self.lesion_table.topLevelItemCount() > 0)  # no tracked lesion: no table
        layout = QVBoxLayout(self)
        layout.addLayout(row, 3)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.lesion_table, 1)
        self.views[2].pixmap.setPixmap(QPixmap.fromImage(grey_image(images["difference"] + 0.5, 0.5, 0.5)))
        self.set_window(*self.window)
        self.resize(1200, 800)

    def set_window(self, center: float, width: float) -> None:
        """One window/level for the current and the aligned prior."""
        self.window = (center, width)
        for view, key in zip(self.views[:2], ("current", "aligned"), strict=True):
            view.pixmap.setPixmap(QPixmap.fromImage(grey_image(self.images[key], center, width)))

    def zoom(self, factor: float) -> None:
        for view in self.views:
            view.scale(factor, factor)

    def pan_from(self, source: SyncedView) -> None:
        """Every view scrolled to where ``source`` is."""
        if self._syncing:
            return
        self._syncing = True
        try:
            for view in self.views:
                if view is not source:
                    view.horizontalScrollBar().setValue(source.horizontalScrollBar().value())
                    view.verticalScrollBar().setValue(source.verticalScrollBar().value())
        finally:
            self._syncing = False
