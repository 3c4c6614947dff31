"""Worklist: sessions with their images and analysis status; received ones get a badge.

A session's context menu pins it (kept past the retention policy) or deletes the study."""

from __future__ import annotations

from desktop.qt import (
    QFont,
    QLineEdit,
    QMenu,
    Qt,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
    Signal,
)
from desktop.worker import Op
from engine.errors import ErrorCode, MedVisionError


class WorklistPanel(QWidget):
    """Sessions newest first; a search box filters by name, type or file."""

    session_chosen = Signal(str)
    image_chosen = Signal(str, str)
    pin_requested = Signal(str, bool)
    delete_requested = Signal(str)

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
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self.pinned: set[str] = set()

    def refresh(self) -> Op | None:
        if self.engine is None:
            return None
        engine = self.engine

        def work() -> list[dict]:
            statuses = []
            for listed in engine.list_sessions(100):
                try:
                    statuses.append(engine.get_session_status(listed["session_id"]) | {"pinned": listed["pinned"]})
                except MedVisionError as exc:  # erased (deleted or expired) since it was listed
                    if exc.code not in (ErrorCode.SESSION_NOT_FOUND, ErrorCode.SESSION_EXPIRED):
                        raise
            return statuses

        return Op(self, work, lane="read").success(self._populate).run()

    def _populate(self, sessions: list[dict]) -> None:
        self.tree.clear()
        self.pinned = {s["session_id"] for s in sessions if s.get("pinned")}
        for status in sessions:
            images = status["images"]
            analysed = sum(1 for i in images if i["analyzed"])
            state = self.job_status.get(status["session_id"]) or (
                f"analysed {analysed}/{len(images)}" if images else "empty")
            if status["session_id"] in self.pinned:
                state += ", pinned"
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

    def _context_menu(self, position) -> None:  # noqa: ANN001 - QPoint
        item = self.tree.itemAt(position)
        if item is None:
            return
        menu = self.session_menu(item.data(0, Qt.ItemDataRole.UserRole))
        menu.exec(self.tree.viewport().mapToGlobal(position))

    def session_menu(self, session_id: str) -> QMenu:
        """The actions on one session: Pin / Unpin, Delete study."""
        menu = QMenu(self)
        pinned = session_id in self.pinned
        menu.addAction("Unpin" if pinned else "Pin (keep past the retention policy)").triggered.connect(
            lambda: self.pin_requested.emit(session_id, not pinned))
        menu.addAction("Delete study…").triggered.connect(lambda: self.delete_requested.emit(session_id))
        return menu

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
