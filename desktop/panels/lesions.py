"""Lesion links from the desktop: an annotation tracked as a new lesion, linked to a prior's lesion, or untracked.

The engine owns the links (``Engine.track_lesion``, ``untrack_lesion``, ``tracked_lesions``:
DICOM Tracking Identifier and Tracking Unique Identifier on the annotation). This object keeps
the shown session's *seeds* (the priors' lesions not linked here yet) for the menu, re-read on
the read lane whenever the canvas's annotations change; links are written on the engine lane
and the canvas re-reads its annotations afterwards (the store's event does the same for other
windows).
"""

from __future__ import annotations

from typing import Any

from desktop.qt import QInputDialog, QMenu, QObject, QWidget, Signal
from desktop.worker import Op
from engine.analysis.tracking import TRACKABLE_TYPES


def seed_text(seed: dict[str, Any]) -> str:
    """A prior lesion as a menu line: identifier, the prior's date, its value."""
    value = seed.get("value")
    measured = "" if value is None else f", {value:g} {seed.get('unit') or ''}".rstrip()
    return f"{seed['identifier']} ({seed.get('prior_study_date') or 'undated'}{measured})"


class LesionLinker(QObject):
    """The lesion actions on the canvas's annotations (see the module's docstring)."""

    seeds_changed = Signal()
    linked = Signal(dict)  # the engine's answer to a track or untrack

    def __init__(self, canvas, parent: QObject | None = None) -> None:  # noqa: ANN001 - CanvasView
        super().__init__(parent)
        self.canvas = canvas
        self.seeds: list[dict[str, Any]] = []
        self.seeds_session: str | None = None

    def refresh(self) -> Op | None:
        """Re-read the shown session's seeds (the priors' lesions not linked yet)."""
        engine, session_id = self.canvas.engine, self.canvas.session_id
        if engine is None or session_id is None:
            return None

        def done(tracked: dict) -> None:
            if tracked["session_id"] == self.canvas.session_id:
                self.seeds, self.seeds_session = tracked["seeds"], tracked["session_id"]
                self.seeds_changed.emit()

        return Op(self, lambda: engine.tracked_lesions(session_id), lane="read").success(done).run()

    def menu(self, annotation: dict[str, Any], parent: QWidget | None = None) -> QMenu | None:
        """Track as lesion…, Link to prior lesion ▸ (one entry per seed), Untrack; None for an
        annotation that cannot be a lesion (a text note)."""
        if annotation["type"] not in TRACKABLE_TYPES:
            return None
        annotation_id = annotation["annotation_id"]
        menu = QMenu(parent)
        tracking = annotation.get("tracking")
        menu.addAction("Track as lesion…").triggered.connect(
            lambda: self.ask_identifier(annotation_id, annotation.get("label") or "", parent))
        link = menu.addMenu("Link to prior lesion")
        for seed in self.seeds:
            link.addAction(seed_text(seed)).triggered.connect(
                lambda _=False, uid=seed["uid"]: self.track(annotation_id, uid=uid))
        link.setEnabled(bool(self.seeds))
        if not self.seeds:
            link.setToolTip("no lesion of a prior study of this patient is left to link")
        untrack = menu.addAction("Untrack" + (f" ({tracking['identifier']})" if tracking else ""))
        untrack.setEnabled(bool(tracking))
        untrack.triggered.connect(lambda: self.untrack(annotation_id))
        return menu

    def ask_identifier(self, annotation_id: str, default: str, parent: QWidget | None = None) -> Op | None:
        """Ask for the new lesion's Tracking Identifier (default: the annotation's label), then link."""
        text, ok = QInputDialog.getText(parent, "Track as lesion", "Tracking identifier (e.g. target 1):",
                                        text=default)
        if not ok:
            return None
        return self.track(annotation_id, identifier=text.strip() or None)

    def track(self, annotation_id: str, identifier: str | None = None, uid: str | None = None) -> Op | None:
        """Link the annotation to a new lesion (``uid`` None) or to a prior's lesion (its ``uid``)."""
        engine, session_id = self.canvas.engine, self.canvas.session_id
        if engine is None or session_id is None:
            return None
        return Op(self, lambda: engine.track_lesion(session_id, annotation_id, identifier, uid)).progress(
            "Linking the lesion").success(self._done).run()

    def untrack(self, annotation_id: str) -> Op | None:
        """Remove the annotation's lesion link (the annotation stays)."""
        engine, session_id = self.canvas.engine, self.canvas.session_id
        if engine is None or session_id is None:
            return None
        return Op(self, lambda: engine.untrack_lesion(session_id, annotation_id)).success(self._done).run()

    def _done(self, result: dict) -> None:
        self.linked.emit(result)
        self.canvas.refresh_annotations()  # the layer list shows the link; the seeds are re-read after it
