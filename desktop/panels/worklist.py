"""Worklist: sessions with their images and analysis status; received ones get a badge."""

from __future__ import annotations

from desktop.qt import (
    QFont,
    QLineEdit,
    Qt,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
    Signal,
)
from desktop.worker import Op


class WorklistPanel(QWidget):
    """Sessions newest first; a search box filters by name, type or file."""

    session_chosen = Signal(str)
    image_chosen = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.engine = None
        self.search = QLineEdit(placeholderText="Search sessions, studies…")
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Session / image", "Images", "Status"])
        self.tree.setColumnWidth(0, 200)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.search)
        layout.addWidget(self.tree)
        self.received: set[str] = set()  # sessions announced by other processes, not opened yet
        self.job_status: dict[str, str] = {}
        self.search.textChanged.connect(self._filter)
        self.tree.itemActivated.connect(self._activated)
        self.tree.itemClicked.connect(self._activated)

    def refresh(self) -> Op | None:
        if self.engine is None:
            return None
        engine = self.engine

        def work() -> list[dict]:
            return [engine.get_session_status(s["session_id"]) for s in engine.list_sessions(100)]

        return Op(self, work, lane="read").success(self._populate).run()

    def _populate(self, sessions: list[dict]) -> None:
        self.tree.clear()
        for status in sessions:
            images = status["images"]
            analysed = sum(1 for i in images if i["analyzed"])
            state = self.job_status.get(status["session_id"]) or (
                f"analysed {analysed}/{len(images)}" if images else "empty")
            name = status["name"] or status["session_id"]
            badge = "● " if status["session_id"] in self.received else ""
            priors = status.get("priors") or []
            if priors:
                state += f" · {len(priors)} prior{'s' if len(priors) > 1 else ''}"
            item = QTreeWidgetItem([badge + name, str(len(images)), state])
            item.setData(0, Qt.ItemDataRole.UserRole, status["session_id"])
            if priors:
                item.setToolTip(2, "priors ready to compare: " + ", ".join(
                    f"{p.get('study_date') or 'undated'} {p.get('modality') or ''}".strip() for p in priors))
            if badge:
                font = QFont(item.font(0))
                font.setBold(True)
                item.setFont(0, font)
                item.setToolTip(0, "received while the app was open")
            for image in images:
                child = QTreeWidgetItem([f"{image['type']}  {image['source_name']}", "",
                                         "analysed" if image["analyzed"] else "—"])
                child.setData(0, Qt.ItemDataRole.UserRole, status["session_id"])
                child.setData(1, Qt.ItemDataRole.UserRole, image["image_id"])
                item.addChild(child)
            self.tree.addTopLevelItem(item)
        self._filter(self.search.text())

    def _filter(self, text: str) -> None:
        needle = text.casefold().strip()
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            words = [item.text(0)] + [item.child(j).text(0) for j in range(item.childCount())]
            item.setHidden(bool(needle) and not any(needle in w.casefold() for w in words))

    def _activated(self, item: QTreeWidgetItem, _column: int = 0) -> None:
        session_id = item.data(0, Qt.ItemDataRole.UserRole)
        image_id = item.data(1, Qt.ItemDataRole.UserRole)
        if session_id in self.received:
            self.received.discard(session_id)
            item.setText(0, item.text(0).removeprefix("● "))
        if image_id:
            self.image_chosen.emit(session_id, image_id)
        else:
            self.session_chosen.emit(session_id)
