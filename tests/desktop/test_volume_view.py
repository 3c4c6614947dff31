"""The volume panel over a real stored CT series: scroll, presets, crosshair sync, HU readout, cine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PySide6.QtCore import QLineF, QPoint, QPointF
from PySide6.QtGui import QWheelEvent

from desktop.canvas.image import CT_PRESETS
from desktop.canvas.planes import plane_pixels
from desktop.qt import QApplication, Qt
from engine.imaging.decode import window_to_uint8
from tests.desktop.conftest import idle
from tests.volumes.ctseries import expected_lps, sub_volume, write_ct_series

FIRST, STOP = 40, 52  # slices of the shared example CT written as the series


def rendered(view) -> np.ndarray:  # noqa: ANN001 - PlaneView
    """The plane's current 8-bit pixmap as an array."""
    image = view.pixmap_item.pixmap().toImage().convertToFormat(view.pixmap_item.pixmap().toImage().Format.Format_Grayscale8)
    array = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine())
    return array[:, : image.width()].copy()


def open_series(qtbot, window, tmp_path: Path) -> np.ndarray:  # noqa: ANN001
    """Store the series in a session through the window; wait for the volume panel. Returns the expected HU."""
    volume = sub_volume(FIRST, STOP)
    write_ct_series(tmp_path / "ct", volume=volume, seed=7)
    window.open_paths([tmp_path / "ct"], analyze=False)
    qtbot.waitUntil(lambda: window.mpr.volume is not None, timeout=60000)
    idle(qtbot)
    return expected_lps(volume)[0]


def wheel(view, steps: int) -> None:  # noqa: ANN001
    centre = QPointF(view.viewport().rect().center())
    event = QWheelEvent(centre, QPointF(view.viewport().mapToGlobal(centre.toPoint())), QPoint(0, 0),
                        QPoint(0, 120 * steps), Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                        Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(view.viewport(), event)


def test_stack_scroll_presets_crosshair_and_hu(qtbot, window, tmp_path: Path, shared_ct_dir: Path) -> None:  # noqa: ANN001
    expected = open_series(qtbot, window, tmp_path)
    mpr = window.mpr
    assert window.docks["volume"].isVisible()
    assert np.array_equal(mpr.volume.voxels, expected)  # the engine's assembly of the stored series
    axial, coronal, sagittal = (mpr.views[p] for p in ("axial", "coronal", "sagittal"))
    shown_z = next(i for i in window.engine.get_session_status(window.session_id)["images"]
                   if i["image_id"] == window.canvas.image_id)["z"]
    assert axial.index == shown_z  # the planes open at the slice on the canvas

    # The canvas scrolls the stack too (Down, wheel), keeping its window; the planes follow it.
    canvas = window.canvas
    qtbot.waitUntil(lambda: canvas.scrolls_stack, timeout=10000)
    canvas.apply_window_now(-600.0, 1500.0)
    start = 0 if shown_z > 2 else shown_z + 2
    window.show_image(window.session_id, window.stack_ids[start])
    qtbot.waitUntil(lambda: canvas.image_id == window.stack_ids[start], timeout=10000)
    idle(qtbot)
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Down)
    qtbot.waitUntil(lambda: canvas.image_id == window.stack_ids[start + 1] and axial.index == start + 1, timeout=10000)
    wheel(canvas, -1)
    qtbot.waitUntil(lambda: canvas.image_id == window.stack_ids[start + 2] and axial.index == start + 2, timeout=10000)
    idle(qtbot)
    assert canvas.image_item.effective_window() == (-600.0, 1500.0)
    assert np.allclose(canvas.image.decoded.pixels, expected[start + 2])  # the stored slice is the volume's slice
    stack_lines = canvas.corner_text()["bottom_right"][:3]
    assert stack_lines == [f"slice {start + 3}/{STOP - FIRST}", axial.corner_text()["top_left"][2],
                           "thick 3.00 mm  spacing 3.00 x 3.00 mm"], stack_lines
    affine = expected_lps(sub_volume(FIRST, STOP))[1]  # the written ImagePositionPatient along the slice normal
    normal = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    assert stack_lines[1] == f"pos {(affine @ [0, 0, start + 2, 1])[:3] @ normal:.1f} mm"

    # Scroll: wheel, keys and Ctrl+drag move the axial index; the pixels follow.
    mpr.set_position((5, 50, 60))
    wheel(axial, -1)  # wheel down: one slice on
    assert axial.index == 6
    qtbot.keyClick(axial, Qt.Key.Key_Up)
    qtbot.keyClick(axial, Qt.Key.Key_Up)
    assert axial.index == 4
    qtbot.keyClick(axial, Qt.Key.Key_PageDown)
    assert axial.index == STOP - FIRST - 1  # clamped at the last slice
    start = axial.viewport().rect().center()
    qtbot.mousePress(axial.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, start)
    qtbot.mouseMove(axial.viewport(), start - QPoint(0, 12))
    qtbot.mouseRelease(axial.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier,
                       start - QPoint(0, 12))
    assert axial.index == STOP - FIRST - 1 - 3  # 4 screen pixels a slice
    assert mpr.position[1:] == (50, 60)  # scrolling the axial plane leaves the crosshair's x, y alone

    # Presets: OHIF's lung window, rendered exactly.
    mpr.presets.textActivated.emit("Lung")
    assert mpr.window == CT_PRESETS["Lung"] == (-600.0, 1500.0)
    z = axial.index
    assert np.array_equal(rendered(axial), window_to_uint8(expected[z], -600.0, 1500.0))
    assert "WL -600  WW 1500" in axial.corner_text()["bottom_left"]
    assert axial.corner_text()["top_left"][1] == f"slice {z + 1}/{STOP - FIRST}"
    assert "thick 3.00 mm  spacing 3.00 x 3.00 mm" in axial.corner_text()["bottom_left"]

    # Crosshair sync: a click in the coronal plane sets z and x; the axial and sagittal planes follow.
    target = (3, mpr.position[1], 70)  # z, y (the coronal index), x
    rows = expected.shape[0]
    point = coronal.mapFromScene(QPointF((target[2] + 0.5) * 3.0, (rows - 1 - target[0] + 0.5) * 3.0))
    qtbot.mouseClick(coronal.viewport(), Qt.MouseButton.LeftButton, pos=point)
    assert mpr.position == target
    assert axial.index == 3 and sagittal.index == 70
    assert np.array_equal(rendered(axial), window_to_uint8(expected[3], -600.0, 1500.0))
    assert np.array_equal(rendered(sagittal), window_to_uint8(plane_pixels(expected, "sagittal", 70), -600.0, 1500.0))
    vertical = axial.lines[0].line()
    assert abs(vertical.x1() - (70 + 0.5) * 3.0) < 1e-6  # the axial plane's crosshair at x = 70

    # HU under the cursor equals the volume's value there.
    hover = axial.mapFromScene(QPointF((30 + 0.5) * 3.0, (40 + 0.5) * 3.0))
    qtbot.mouseMove(axial.viewport(), hover)
    z, y, x = axial.voxel_at(axial.mapToScene(hover))  # the view is small: a voxel is about a screen pixel
    assert z == 3 and abs(y - 40) <= 1 and abs(x - 30) <= 1
    assert axial.readout_text.endswith(f"x {x}  y {y}  z 3  {expected[3, y, x]:.0f} HU"), axial.readout_text
    assert window.cursor_label.text() == axial.readout_text

    # Shift+drag measures in mm on any plane: 20 columns x 3 mm on the coronal plane is 60 mm.
    a = coronal.mapFromScene(QPointF(10 * 3.0, 5 * 3.0))
    b = coronal.mapFromScene(QPointF(30 * 3.0, 5 * 3.0))
    qtbot.mousePress(coronal.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, a)
    qtbot.mouseMove(coronal.viewport(), b)
    qtbot.mouseRelease(coronal.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, b)
    exact = QLineF(coronal.mapToScene(a), coronal.mapToScene(b)).length()
    assert abs(coronal.measurement_mm - exact) < 1e-9 and abs(exact - 60.0) < 2 / coronal.transform().m11()
    assert coronal.ruler_label.text() == f"{exact:.1f} mm"
    assert mpr.position == (3, target[1], 70)  # measuring moves no crosshair

    # Cine steps the axial plane forward and wraps.
    mpr.fps.setValue(50)
    before = axial.index
    mpr.play.setChecked(True)
    qtbot.waitUntil(lambda: axial.index != before, timeout=5000)
    mpr.play.setChecked(False)
    assert not mpr.cine.isActive() and mpr.play.text() == "Play"

    shot = tmp_path / "voldesk-mpr.png"
    assert window.grab().save(str(shot))
    if os.environ.get("MEDVISION_TEST_ARTIFACTS"):
        shutil.copy(shot, Path(os.environ["MEDVISION_TEST_ARTIFACTS"]) / shot.name)
