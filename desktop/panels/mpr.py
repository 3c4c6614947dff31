"""The volume panel: axial, coronal and sagittal planes of one stack with a shared position.

The stack is assembled by the engine (``Engine.get_volume``, cached there) on the read lane;
every plane after that is a numpy view of the cached voxels rendered on the GUI thread (no
engine call per frame). A click in one plane moves the crosshair of all three; scrolling a
plane moves its index; the CT presets are OHIF's (:data:`desktop.canvas.image.CT_PRESETS`);
cine steps the axial plane at the chosen frames per second.

The drawing tools (:mod:`desktop.canvas.plane_tools`: ruler, rectangle, ellipse and polygon
ROIs, a distance across slices or planes) work on every plane in mm: the engine measures each
shape on the read volume and stores it as a ``volume_roi`` annotation (plane, index, voxel
coordinates, statistics), through one undo stack for the three planes; the stored ones show
again on the plane and slice they were drawn on and are listed (``annotations_changed``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from desktop.canvas.commands import CreateAnnotation, Ref
from desktop.canvas.image import CT_PRESETS
from desktop.canvas.plane_tools import PLANE_TOOLS, roi_text
from desktop.canvas.planes import AXIS, PLANES, PlaneView
from desktop.qt import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTimer,
    QUndoStack,
    QVBoxLayout,
    QWidget,
    Signal,
)
from desktop.worker import Op
from engine.analysis.volume.annotation import VOLUME_ROI
from engine.events import ANNOTATION_KINDS


class MprPanel(QWidget):
    """Three planes of one volume stack, window presets and cine."""

    volume_shown = Signal(dict)
    cursor_moved = Signal(str)
    annotations_changed = Signal(list)  # the shown volume's stored 3D annotations

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.engine = None
        self.volume: Any = None
        self.key: tuple[str, str | None, str | None] | None = None  # (session, series, stack) shown
        self.position: tuple[int, int, int] = (0, 0, 0)
        self.window: tuple[float, float] = CT_PRESETS["Soft tissue (mediastinum, abdomen)"]
        self.views = {plane: PlaneView(plane, self) for plane in PLANES}
        self.undo_stack = QUndoStack(self)
        self.annotations: list[dict] = []
        self.pending_point: list[float] | None = None  # the first point of a 3D distance
        self.last_result: dict | None = None  # the engine's answer for the last shape stored
        self.tool = QComboBox(self)
        for name, (_key, title) in PLANE_TOOLS.items():
            self.tool.addItem(title, name)
        self.tool.setToolTip("Drawing and measuring tool of the three planes")
        self.tool.currentIndexChanged.connect(lambda _i: self.set_tool(self.tool.currentData()))
        self.undo_button, self.redo_button = QPushButton("Undo", self), QPushButton("Redo", self)
        self.undo_button.clicked.connect(self.undo_stack.undo)
        self.redo_button.clicked.connect(self.undo_stack.redo)
        self.undo_stack.canUndoChanged.connect(self.undo_button.setEnabled)
        self.undo_stack.canRedoChanged.connect(self.redo_button.setEnabled)
        self.undo_button.setEnabled(False)
        self.redo_button.setEnabled(False)
        self._refresh_timer = QTimer(self, singleShot=True, interval=0)
        self._refresh_timer.timeout.connect(self.refresh_annotations)
        self.presets = QComboBox(self)
        self.presets.addItems(list(CT_PRESETS))
        self.presets.setToolTip("CT window presets of OHIF Viewers")
        self.presets.textActivated.connect(self.apply_preset)
        self.play = QPushButton("Play", self)
        self.play.setCheckable(True)
        self.play.toggled.connect(self.set_playing)
        self.fps = QSpinBox(self, minimum=1, maximum=60, value=15, suffix=" fps")
        self.fps.valueChanged.connect(lambda value: self.cine.setInterval(int(1000 / value)))
        self.cine = QTimer(self, interval=int(1000 / 15))
        self.cine.timeout.connect(lambda: self.step("axial", 1, wrap=True))
        self.status = QLabel("No volume", self)
        controls = QHBoxLayout()
        for widget in (QLabel("Window", self), self.presets, self.play, self.fps, QLabel("Tool", self), self.tool,
                       self.undo_button, self.redo_button, self.status):
            controls.addWidget(widget)
        controls.addStretch(1)
        planes = QHBoxLayout()
        for view in self.views.values():
            view.host = self
            planes.addWidget(view, 1)
            view.position_picked.connect(self.set_position)
            view.index_stepped.connect(self.step)
            view.cursor_moved.connect(self.cursor_moved)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(controls)
        layout.addLayout(planes, 1)

    # -- loading ---------------------------------------------------------------------------------
    def load(self, session_id: str, series_uid: str | None = None, stack: str | None = None,
             z: int | None = None) -> Op | None:
        """Assemble (or take from the engine's cache) a stack on the read lane, then show it at slice ``z``."""
        key = (session_id, series_uid, stack)
        if key == self.key and self.volume is not None:
            if z is not None:
                self.set_position((z, *self.position[1:]))
            return None
        engine = self.engine
        self.status.setText("Assembling the volume…")
        return Op(self, lambda: engine.get_volume(session_id, series_uid, stack), lane="read").progress(
            "Assembling the volume").success(lambda volume: self.set_volume(volume, key, z)).failure(
            lambda exc: self.status.setText(f"No volume: {exc}")).run()

    def follow_image(self, session_id: str, image: dict) -> Op | None:
        """Show the stack an image (a ``get_session_status`` entry) belongs to, at its slice; else nothing."""
        if image.get("stack") is None:
            return None
        return self.load(session_id, image.get("series_uid"), image["stack"], image.get("z"))

    def set_volume(self, volume: Any, key: tuple | None = None, z: int | None = None) -> None:
        if key != self.key:
            self.undo_stack.clear()  # the edits were of another volume
            self.annotations, self.pending_point = [], None
            for view in self.views.values():
                view.annotations = []
        self.volume, self.key = volume, key
        depth, rows, columns = volume.voxels.shape
        for view in self.views.values():
            view.set_volume(volume)
        self.position = (depth // 2 if z is None else min(max(int(z), 0), depth - 1), rows // 2, columns // 2)
        self.status.setText(f"{volume.modality} {columns} x {rows} x {depth}")
        self.refresh()
        for view in self.views.values():
            view.fit()
        self.volume_shown.emit({"shape_zyx": [depth, rows, columns], "key": key})
        self.refresh_annotations()

    # -- state -------------------------------------------------------------------------------------
    def refresh(self, planes: tuple[str, ...] = PLANES) -> None:
        for plane in planes:
            self.views[plane].show_state(self.position, self.window)

    def set_position(self, position: tuple[int, int, int]) -> None:
        """Move the shared position (z, y, x): every plane re-renders with its crosshair there."""
        if self.volume is None:
            return
        shape = self.volume.voxels.shape
        self.position = tuple(min(max(int(v), 0), n - 1) for v, n in zip(position, shape, strict=True))
        self.refresh()

    def step(self, plane: str, step: int, wrap: bool = False) -> None:
        """Scroll one plane by ``step`` slices (cine wraps around); the other planes move their crosshair."""
        if self.volume is None:
            return
        axis, size = AXIS[plane], self.volume.voxels.shape[AXIS[plane]]
        position = list(self.position)
        position[axis] = (position[axis] + step) % size if wrap else min(max(position[axis] + step, 0), size - 1)
        if tuple(position) != self.position:
            self.position = tuple(position)
            self.refresh((plane,))  # the other planes only move their crosshair
            for other in PLANES:
                if other != plane:
                    self.views[other].move_crosshair(self.position)

    def set_window(self, center: float, width: float) -> None:
        self.window = (float(center), float(max(width, 1.0)))
        self.refresh()

    def apply_preset(self, name: str) -> None:
        self.presets.setCurrentText(name)
        self.set_window(*CT_PRESETS[name])

    # -- drawing and measuring (3D annotations) ------------------------------------------------------
    @property
    def session_id(self) -> str | None:
        return None if self.key is None else self.key[0]

    def set_tool(self, name: str) -> None:
        """The same tool on the three planes (``navigate``: a click moves the crosshair)."""
        for view in self.views.values():
            view.tools.set_tool(name)
        index = self.tool.findData(name)
        if index != self.tool.currentIndex():
            self.tool.setCurrentIndex(index)
        self.pending_point = None

    def engine_write(self, fn: Callable[[Any], Any]) -> Op:
        """Run a store edit on the engine lane, then re-read the volume's annotations."""
        engine = self.engine
        return Op(self, lambda: fn(engine)).progress("Saving the measurement").success(
            lambda _result: self.schedule_refresh()).failure(
            lambda exc: self.status.setText(f"Not stored: {exc}")).run()

    def schedule_refresh(self) -> None:
        self._refresh_timer.start()

    def _store(self, title: str, call: Callable[..., dict], label: str) -> Ref:
        """Push an undoable creation: the engine measures and stores the shape (its answer in ``last_result``)."""
        session_id, series_uid, stack = self.key
        ref = Ref()

        def add(engine: Any) -> str:
            self.last_result = call(engine, session_id, series_uid=series_uid, stack=stack, annotate=True,
                                    label=label)
            return self.last_result["annotation_id"]

        self.undo_stack.push(CreateAnnotation(self, ref, {"type": title}, add=add))
        return ref

    def store_plane_roi(self, plane: str, index: int, shape: str, geometry: Any, label: str = "") -> Ref:
        """A rectangle, ellipse or polygon drawn on ``plane`` at ``index`` (plane pixel coordinates)."""
        return self._store(f"{shape} ROI", lambda engine, session_id, **where: engine.volume_roi(
            session_id, plane=plane, index=index, shape=shape, geometry=geometry, **where), label)

    def store_distance(self, points_xyz: list[list[float]], plane: str | None = None, index: int | None = None,
                       label: str = "") -> Ref:
        """A distance between two voxel positions (on one plane at ``index``, or across slices and planes)."""
        return self._store("distance", lambda engine, session_id, **where: engine.volume_distance(
            session_id, points_xyz, plane=plane, index=index, **where), label)

    def pick_distance_point(self, point_xyz: list[float]) -> Ref | None:
        """One end of a 3D distance; the second end (on any slice or plane) stores it."""
        if self.pending_point is None:
            self.pending_point = point_xyz
            self.status.setText("3D distance: pick the second point (any slice or plane)")
            return None
        first, self.pending_point = self.pending_point, None
        return self.store_distance([first, point_xyz])

    def refresh_annotations(self) -> Op | None:
        """Re-read the volume's stored 3D annotations (read lane) and show them on the planes."""
        if self.engine is None or self.volume is None or self.key is None:
            return None
        engine, key, volume = self.engine, self.key, self.volume
        stack_key = volume.stack_key or "main"

        def work() -> list[dict]:
            rows = engine.get_annotations(key[0])["annotations"]
            return [a for a in rows if a["type"] == VOLUME_ROI
                    and a["coordinates"].get("series_uid") == volume.series_uid
                    and (a["coordinates"].get("stack_key") or "main") == stack_key
                    and a["coordinates"].get("volume_shape") == list(volume.voxels.shape)]

        def show(rows: list[dict]) -> None:
            if key != self.key:
                return
            self.annotations = rows
            for view in self.views.values():
                view.show_annotations(rows)
            if self.last_result is not None:
                stats = self.last_result.get("statistics") or {"length_mm": self.last_result.get("length_mm")}
                self.status.setText(roi_text(stats, "HU" if volume.modality == "CT" else ""))
            self.annotations_changed.emit(rows)

        return Op(self, work, lane="read").success(show).run()

    def on_store_event(self, event: dict) -> None:
        """Another writer's annotation change in the shown session: re-read the volume's annotations."""
        if event.get("session_id") == self.session_id and event.get("kind") in ANNOTATION_KINDS:
            self.schedule_refresh()

    def set_playing(self, playing: bool) -> None:
        self.play.setText("Pause" if playing else "Play")
        if playing and self.volume is not None:
            self.cine.start()
        else:
            self.cine.stop()
            self.play.setChecked(False)


__all__ = ["MprPanel"]
