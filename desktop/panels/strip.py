"""Image strip: thumbnails of the current session's images, one per volume stack (not one per slice)."""

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


def strip_entries(images: list[dict]) -> list[tuple[dict, list[str]]]:
    """One entry per image, except the slices of a volume stack: one entry for the stack, shown by its
    middle slice. Each entry is (the image shown, the ids of every image it stands for)."""
    stacks: dict[tuple[str, str], list[dict]] = {}
    order: list[tuple[str, str] | dict] = []
    for image in images:
        if image.get("stack") is None:
            order.append(image)
            continue
        key = (image.get("series_uid") or "", image["stack"])
        if key not in stacks:
            stacks[key] = []
            order.append(key)
        stacks[key].append(image)
    entries = []
    for item in order:
        if isinstance(item, dict):
            entries.append((item, [item["image_id"]]))
            continue
        members = sorted(stacks[item], key=lambda i: i["z"])
        entries.append((members[len(members) // 2], [i["image_id"] for i in members]))
    return entries


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
        self._row_of: dict[str, int] = {}  # every image id -> the row that stands for it
        self.itemClicked.connect(lambda item: self.image_chosen.emit(item.data(Qt.ItemDataRole.UserRole)))

    def set_session(self, session_id: str) -> Op:
        self.session_id = session_id
        engine = self.engine

        def work() -> list[tuple[dict, list[str], QImage]]:
            out = []
            for image, members in strip_entries(engine.get_session_status(session_id)["images"]):
                _, decoded = engine.decoded_image(session_id, image["image_id"])
                out.append((image, members, thumbnail(decoded)))
            return out

        return Op(self, work, lane="read").success(self._populate).run()

    def _populate(self, entries: list[tuple[dict, list[str], QImage]]) -> None:
        self.clear()
        self._row_of = {}
        for row, (image, members, thumb) in enumerate(entries):
            label = f"{image['type']} {'✓' if image['analyzed'] else ''}"
            if len(members) > 1:
                label = f"{image['modality'] or image['type']} {len(members)} slices"
            item = QListWidgetItem(QIcon(QPixmap.fromImage(thumb)), label)
            item.setData(Qt.ItemDataRole.UserRole, image["image_id"])
            item.setToolTip(image["source_name"] if len(members) == 1 else f"series {image.get('series_uid')}")
            self.addItem(item)
            self._row_of.update((image_id, row) for image_id in members)

    def select_image(self, image_id: str) -> None:
        row = self._row_of.get(image_id)
        if row is not None:
            self.setCurrentRow(row)
