"""The volume panel: axial, coronal and sagittal planes of one stack with a shared position.

The stack is assembled by the engine (``Engine.get_volume``, cached there) on the read lane;
every plane after that is a numpy view of the cached voxels rendered on the GUI thread (no
engine call per frame). A click in one plane moves the crosshair of all three; scrolling a
plane moves its index; the CT presets are OHIF's (:data:`desktop.canvas.image.CT_PRESETS`);
cine steps the axial plane at the chosen frames per second.
"""

from __future__ import annotations

from typing import Any

from desktop.canvas.image import CT_PRESETS
from desktop.canvas.planes import AXIS, PLANES, PlaneView
from desktop.qt import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTimer,
    QVBoxLayout,
    QWidget,
    Signal,
)
from desktop.worker import Op


class MprPanel(QWidget):
    """Three planes of one volume stack, window presets and cine."""

    volume_shown = Signal(dict)
    cursor_moved = Signal(str)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.engine = None
        self.volume: Any = None
        self.key: tuple[str, str | None, str | None] | None = None  # (session, series, stack) shown
        self.position: tuple[int, int, int] = (0, 0, 0)
        self.window: tuple[float, float] = CT_PRESETS["Soft tissue (mediastinum, abdomen)"]
        self.views = {plane: PlaneView(plane, self) for plane in PLANES}
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
        for widget in (QLabel("Window", self), self.presets, self.play, self.fps, self.status):
            controls.addWidget(widget)
        controls.addStretch(1)
        planes = QHBoxLayout()
        for view in self.views.values():
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

    def set_playing(self, playing: bool) -> None:
        self.play.setText("Pause" if playing else "Play")
        if playing and self.volume is not None:
            self.cine.start()
        else:
            self.cine.stop()
            self.play.setChecked(False)


__all__ = ["MprPanel"]
