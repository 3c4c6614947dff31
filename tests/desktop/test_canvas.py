"""The canvas over a real engine: rendering, window/level, zoom anchoring, tools, undo."""

from __future__ import annotations

import numpy as np

from desktop.qt import QPoint, QPointF, Qt
from tests.desktop.conftest import idle, open_image


def grab_array(view) -> np.ndarray:
    """The rendered viewport as an (h, w) gray array."""
    image = view.viewport().grab().toImage().convertToFormat(view.viewport().grab().toImage().Format.Format_Grayscale8)
    array = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine())
    return array[:, : image.width()].copy()


def sample(view, array: np.ndarray, x: float, y: float, radius: int = 4) -> float:
    """Mean rendered gray value around image pixel (x, y)."""
    point = view.mapFromScene(QPointF(x, y))
    ratio = view.viewport().devicePixelRatio()
    px, py = int(point.x() * ratio), int(point.y() * ratio)
    return float(array[py - radius: py + radius, px - radius: px + radius].mean())


def stored_annotations(engine, window) -> list[dict]:
    return engine.get_annotations(window.session_id, window.canvas.image_id)["annotations"]


def test_open_rg1_shows_lungs_dark(qtbot, window, rg1_path) -> None:
    open_image(qtbot, window, rg1_path)
    view = window.canvas
    assert view.image.decoded.raw.dtype == np.uint16  # full 16-bit data, rendered through a LUT
    array = grab_array(view)
    lungs = [sample(view, array, 580, 550), sample(view, array, 1180, 550)]
    mediastinum, abdomen = sample(view, array, 925, 900), sample(view, array, 900, 1700)
    assert max(lungs) < 165 and max(lungs) < min(mediastinum, abdomen) - 45, (lungs, mediastinum, abdomen)


def test_window_level_drag_changes_pixels(qtbot, window, rg1_path) -> None:
    open_image(qtbot, window, rg1_path)
    view = window.canvas
    before = sample(view, grab_array(view), 925, 900)
    start = QPoint(400, 300)
    qtbot.mousePress(view.viewport(), Qt.MouseButton.RightButton, pos=start)
    # Dragging right widens the window: contrast drops, a bright region moves toward mid-gray.
    for step in range(1, 11):
        qtbot.mouseMove(view.viewport(), QPoint(400 + step * 40, 300))
    qtbot.mouseRelease(view.viewport(), Qt.MouseButton.RightButton, pos=QPoint(800, 300))
    qtbot.waitUntil(lambda: view.image_item.width is not None and view.image_item.width > 30000)
    center, width = view.image_item.effective_window()
    assert width > 30000 and center == 15000.0
    after = sample(view, grab_array(view), 925, 900)
    assert abs(after - 128) < abs(before - 128) - 10, (before, after)
    # The presets render the same pixels the engine's reference display would.
    view.apply_preset("Default")
    frame = view.image.render(None, None)
    rendered = np.frombuffer(frame.constBits(), np.uint8)
    assert np.array_equal(rendered.reshape(1955, -1)[:, :1841], view.image.decoded.display())


def test_zoom_and_pan_keep_a_box_anchored(qtbot, window, rg1_path, engine) -> None:
    open_image(qtbot, window, rg1_path)
    view = window.canvas
    view.set_tool("bbox")
    a, b = view.mapFromScene(QPointF(500, 600)), view.mapFromScene(QPointF(900, 1000))
    qtbot.mousePress(view.viewport(), Qt.MouseButton.LeftButton, pos=a)
    qtbot.mouseMove(view.viewport(), b)
    qtbot.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, pos=b)
    qtbot.waitUntil(lambda: len(view.items) == 1, timeout=10000)
    (stored,) = stored_annotations(engine, window)
    x1, y1, x2, y2 = stored["coordinates"]
    assert abs(x1 - 500) < 4 and abs(y2 - 1000) < 4
    item = next(iter(view.items.values()))
    for action in ("zoom_in", "zoom_in", "one_to_one"):
        view.actions_by_name[action].trigger()
        view.centerOn(QPointF(700, 800))
        view.horizontalScrollBar().setValue(view.horizontalScrollBar().value() + 37)  # pan
        corner = view.mapToScene(view.mapFromScene(item.sceneBoundingRect().topLeft()))
        assert abs(corner.x() - x1) < 3 and abs(corner.y() - y1) < 3
    assert view.scale_factor() == 1.0
    idle(qtbot)


def test_undo_redo_round_trips_the_store(qtbot, window, rg1_path, engine) -> None:
    open_image(qtbot, window, rg1_path)
    view = window.canvas

    def coordinates() -> list:
        return [a["coordinates"] for a in stored_annotations(engine, window)]

    view.create_annotation("bbox", [100.0, 100.0, 300.0, 260.0])
    idle(qtbot)
    assert coordinates() == [[100.0, 100.0, 300.0, 260.0]]
    qtbot.waitUntil(lambda: len(view.items) == 1)
    (annotation_id,) = view.items
    view.move_annotation(annotation_id, 50, 20)
    idle(qtbot)
    assert coordinates() == [[150.0, 120.0, 350.0, 280.0]]
    qtbot.waitUntil(lambda: view.items and next(iter(view.items.values())).annotation["coordinates"][0] == 150.0)
    next(iter(view.items.values())).setSelected(True)
    view.actions_by_name["delete"].trigger()
    idle(qtbot)
    assert coordinates() == []
    for expected in ([[150.0, 120.0, 350.0, 280.0]], [[100.0, 100.0, 300.0, 260.0]], []):
        view.actions_by_name["undo"].trigger()
        idle(qtbot)
        assert coordinates() == expected
    for expected in ([[100.0, 100.0, 300.0, 260.0]], [[150.0, 120.0, 350.0, 280.0]], []):
        view.actions_by_name["redo"].trigger()
        idle(qtbot)
        assert coordinates() == expected
    qtbot.waitUntil(lambda: not view.items)


def test_measure_tool_and_layers(qtbot, window, rg1_path, engine) -> None:
    open_image(qtbot, window, rg1_path)
    view = window.canvas
    view.set_tool("distance")
    a, b = view.mapFromScene(QPointF(200, 200)), view.mapFromScene(QPointF(800, 200))
    qtbot.mousePress(view.viewport(), Qt.MouseButton.LeftButton, pos=a)
    qtbot.mouseMove(view.viewport(), b)
    qtbot.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, pos=b)
    qtbot.waitUntil(lambda: len(view.items) == 1, timeout=10000)
    (stored,) = stored_annotations(engine, window)
    assert stored["type"] == "measurement" and stored["coordinates"]["kind"] == "distance"
    assert window.layers.layer_items["measurements"].childCount() == 1
    layer = view.layers["measurements"]
    window.layers.layer_items["measurements"].setCheckState(0, Qt.CheckState.Unchecked)
    assert not layer.visible
    layer.opacity = 0.4  # the model announces, the panel follows
    assert window.layers.layer_items["measurements"].text(1) == "40%"
    assert "stored" in view.readout(700, 900)


def test_dragging_a_vertex_reshapes_a_polygon_and_undo_restores_it(qtbot, window, rg1_path, engine) -> None:
    open_image(qtbot, window, rg1_path)
    view = window.canvas
    view.set_tool("select")
    square = [[400.0, 400.0], [800.0, 400.0], [800.0, 800.0], [400.0, 800.0]]
    view.create_annotation("polygon", square)
    idle(qtbot)
    qtbot.waitUntil(lambda: len(view.items) == 1)
    (item,) = view.items.values()
    assert not item.handles
    item.setSelected(True)
    assert [(h.pos().x(), h.pos().y()) for h in item.handles] == [tuple(p) for p in square]

    a, b = view.mapFromScene(QPointF(800, 800)), view.mapFromScene(QPointF(900, 950))
    qtbot.mousePress(view.viewport(), Qt.MouseButton.LeftButton, pos=a)
    qtbot.mouseMove(view.viewport(), b)
    qtbot.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, pos=b)
    idle(qtbot)
    (stored,) = stored_annotations(engine, window)
    moved = stored["coordinates"]
    pixel = 2 / view.scale_factor()  # one screen pixel in image pixels, and some
    assert moved[:2] == square[:2] and moved[3] == square[3]  # only the dragged corner changed
    assert abs(moved[2][0] - 900) <= pixel and abs(moved[2][1] - 950) <= pixel
    qtbot.waitUntil(lambda: next(iter(view.items.values())).annotation["coordinates"] == moved)
    (item,) = view.items.values()
    assert item.isSelected() and len(item.handles) == 4  # still selected, handles on the new shape

    view.actions_by_name["undo"].trigger()
    idle(qtbot)
    assert stored_annotations(engine, window)[0]["coordinates"] == square


def test_vertex_edits_of_boxes_and_measurements_keep_their_form() -> None:
    from desktop.canvas.items import vertices, with_vertex

    assert vertices("bbox", [10, 20, 30, 40]) == [[10, 20], [30, 40]]
    assert with_vertex("bbox", [10, 20, 30, 40], 1, 5, 50) == [5, 20, 10, 50]  # dragged past: still x1 <= x2
    distance = {"kind": "distance", "points": [[0, 0], [10, 0]]}
    assert with_vertex("measurement", distance, 0, 3, 4) == {"kind": "distance", "points": [[3, 4], [10, 0]]}
    assert distance["points"][0] == [0, 0]  # the stored annotation's copy is left alone
    assert vertices("freehand", [[0, 0], [1, 1], [2, 0]]) == [] and vertices("point", [1, 2]) == []
