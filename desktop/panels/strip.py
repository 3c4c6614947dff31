"""Image strip: thumbnails of the current session's images."""

from __future__ import annotations

import numpy as np

from desktop.qt import QIcon, QImage, QListWidget, QListWidgetItem, QPixmap, QSize, Qt, Signal
from desktop.worker import Op

THUMB = 96


def thumbnail(decoded) -> QImage:  # noqa: ANN001 - DecodedImage
    """A small 8-bit rendering (default window), made on a worker thread."""
    step = max(1, max(decoded.rows, decoded.columns) // THUMB)
    small = np.ascontiguousarray(decoded.display()[::step, ::step])
    if small.ndim == 3:
        return QImage(small.data, small.shape[1], small.shape[0], small.strides[0], QImage.Format.Format_RGB888).copy()
    return QImage(small.data, small.shape[1], small.shape[0], small.strides[0], QImage.Format.Format_Grayscale8).copy()


class ImageStrip(QListWidget):
    """One icon per image; choosing one switches the canvas."""

    image_chosen = Signal(str)

    def __init__(self, parent=None) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setFlow(QListWidget.Flow.LeftToRight)
        self.setWrapping(False)
        self.setFixedHeight(THUMB + 40)
        self.engine = None
        self.session_id: str | None = None
        self.itemClicked.connect(lambda item: self.image_chosen.emit(item.data(Qt.ItemDataRole.UserRole)))

    def set_session(self, session_id: str) -> Op:
        self.session_id = session_id
        engine = self.engine

        def work() -> list[tuple[dict, QImage]]:
            out = []
            for image in engine.get_session_status(session_id)["images"]:
                _, decoded = engine.decoded_image(session_id, image["image_id"])
                out.append((image, thumbnail(decoded)))
            return out

        return Op(self, work, lane="read").success(self._populate).run()

    def _populate(self, entries: list[tuple[dict, QImage]]) -> None:
        self.clear()
        for image, thumb in entries:
            item = QListWidgetItem(QIcon(QPixmap.fromImage(thumb)), f"{image['type']} {'✓' if image['analyzed'] else ''}")
            item.setData(Qt.ItemDataRole.UserRole, image["image_id"])
            item.setToolTip(image["source_name"])
            self.addItem(item)

    def select_image(self, image_id: str) -> None:
        for i in range(self.count()):
            if self.item(i).data(Qt.ItemDataRole.UserRole) == image_id:
                self.setCurrentRow(i)
