"""Drawing and measuring on the volume planes, in mm, over a real stored CT series with anisotropic spacing:
the ruler on the coronal plane, an ellipse ROI on the sagittal plane against numpy, a distance across planes,
annotations that come back with their slice, the layer list, and undo."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PySide6.QtCore import QLineF, QPointF

from desktop.canvas.plane_tools import display_annotations, roi_text
from desktop.canvas.planes import plane_pixels
from desktop.qt import Qt
from engine.analysis.volume.roi import roi_slice_stats
from tests.desktop.conftest import idle
from tests.volumes.ctseries import expected_lps, sub_volume, write_ct_series

FIRST, STOP = 40, 56  # slices of the shared example CT written as the series
SLICE_MM = 5.0  # the slices are written 5 mm apart; the in-plane spacing stays 3 mm
SPACING_ZYX = (SLICE_MM, 3.0, 3.0)


def anisotropic_ct() -> tuple[np.ndarray, np.ndarray]:
    data, affine = sub_volume(FIRST, STOP)
    affine = affine.copy()
    affine[:3, 2] *= SLICE_MM / np.linalg.norm(affine[:3, 2])
    return data, affine


def drag(qtbot, view, start: QPointF, end: QPointF) -> QLineF:  # noqa: ANN001
    """Left-drag between two scene points (mm) on a plane; the scene line the events really carried."""
    view.resetTransform()
    view.scale(4.0, 4.0)  # a screen pixel is a quarter mm: rounding to it stays far below half a voxel
    view.centerOn((start + end) / 2)
    a, b = view.mapFromScene(start), view.mapFromScene(end)
    qtbot.mousePress(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, a)
    qtbot.mouseMove(view.viewport(), b)
    qtbot.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, b)
    return QLineF(view.mapToScene(a), view.mapToScene(b))


def shown_ids(view) -> list[str]:  # noqa: ANN001 - PlaneView
    return [item.annotation["annotation_id"] for item in view.items.values()]


def stored(window) -> dict[str, dict]:  # noqa: ANN001
    rows = window.engine.get_annotations(window.session_id)["annotations"]
    return {a["annotation_id"]: a for a in rows if a["type"] == "volume_roi"}


def test_plane_tools_measure_in_mm_store_show_again_and_undo(qtbot, window, artefacts, tmp_path: Path) -> None:  # noqa: ANN001
    volume = anisotropic_ct()
    write_ct_series(tmp_path / "ct", volume=volume, seed=11)
    hu, affine = expected_lps(volume)
    window.open_paths([tmp_path / "ct"], analyze=False)
    qtbot.waitUntil(lambda: window.mpr.volume is not None, timeout=60000)
    idle(qtbot)
    mpr = window.mpr
    assert mpr.volume.spacing_zyx == SPACING_ZYX and np.array_equal(mpr.volume.voxels, hu)
    axial, coronal, sagittal = (mpr.views[p] for p in ("axial", "coronal", "sagittal"))

    # The ruler on the coronal plane (rows 5 mm, columns 3 mm): a 20 mm line (12 mm across, 16 mm down).
    mpr.set_tool("distance")
    start = QPointF(150.0, 30.0)
    line = drag(qtbot, coronal, start, start + QPointF(12.0, 16.0))
    idle(qtbot)
    result = mpr.last_result
    assert abs(result["length_mm"] - 20.0) <= min(SPACING_ZYX) / 2, result
    assert abs(result["length_mm"] - line.length()) < 0.01  # the scene is in mm: the same length
    p1, p2 = (np.array(p) for p in result["points_xyz"])
    assert abs(np.linalg.norm((p2 - p1) * [3.0, 3.0, SLICE_MM]) - result["length_mm"]) < 0.01
    assert p1[1] == p2[1] == coronal.index  # both ends on the coronal plane drawn on
    ruler = stored(window)[result["annotation_id"]]["coordinates"]
    assert ruler["geometry"]["plane"] == "coronal" and ruler["geometry"]["index"] == coronal.index
    assert [item.annotation["label"] for item in coronal.items.values()] == [f"{result['length_mm']:.1f} mm"]

    # An ellipse on the sagittal plane: the same statistics as numpy over the same voxels.
    mpr.set_tool("ellipse")
    corner = QPointF(120.0, 20.0)
    box = drag(qtbot, sagittal, corner, corner + QPointF(60.0, 45.0))
    idle(qtbot)
    roi = mpr.last_result
    geometry, stats = roi["roi"]["geometry"], roi["statistics"]
    (cx, cy), (rx, ry) = geometry["center"], geometry["radii"]
    assert abs(cx - ((box.p1().x() + box.p2().x()) / 2 / 3.0 - 0.5)) < 0.01  # columns are y, 3 mm
    assert abs(cy - ((box.p1().y() + box.p2().y()) / 2 / SLICE_MM - 0.5)) < 0.01  # rows are z, 5 mm
    assert abs(rx - 10.0) < 0.2 and abs(ry - 4.5) < 0.2  # 30 mm / 3 mm, 22.5 mm / 5 mm
    plane = plane_pixels(hu, "sagittal", sagittal.index).astype(np.float64)
    yy, xx = np.mgrid[: plane.shape[0], : plane.shape[1]]
    values = plane[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0]
    assert stats["voxel_count"] == values.size > 50
    assert abs(stats["mean_hu"] - values.mean()) < 1e-6 and abs(stats["sd_hu"] - values.std()) < 1e-6
    assert (stats["min_hu"], stats["max_hu"]) == (values.min(), values.max())
    assert abs(stats["area_mm2"] - values.size * SLICE_MM * 3.0) < 1e-6
    assert abs(stats["volume_ml"] - values.size * SLICE_MM * 3.0 * 3.0 / 1000) < 1e-9
    ellipse_id = roi["annotation_id"]
    shown = [item for item in sagittal.items.values() if item.annotation["annotation_id"] == ellipse_id]
    assert len(shown) == 1 and shown[0].annotation["label"].startswith(f"mean {values.mean():.1f} HU")
    assert set(window.layers.volume_annotation_ids()) == {result["annotation_id"], ellipse_id}

    # It persists: another sagittal slice does not show it, coming back does (read again from the store).
    index = sagittal.index
    sagittal.setFocus()
    qtbot.keyClick(sagittal, Qt.Key.Key_Down)
    assert sagittal.index == index + 1 and ellipse_id not in shown_ids(sagittal)
    mpr.refresh_annotations()
    idle(qtbot)
    qtbot.keyClick(sagittal, Qt.Key.Key_Up)
    assert shown_ids(sagittal).count(ellipse_id) == 1

    # A rectangle on the coronal plane holds the pixel centres inside it; a polygon on the axial plane is the
    # axial slice shape the engine already measures (roi_slice_stats over the same vertices).
    mpr.set_tool("bbox")
    rect = drag(qtbot, coronal, QPointF(100.0, 20.0), QPointF(130.0, 52.0))
    idle(qtbot)
    x1, y1, x2, y2 = mpr.last_result["roi"]["geometry"]
    assert abs(x1 - (rect.p1().x() / 3.0 - 0.5)) < 0.01 and abs(y2 - (rect.p2().y() / SLICE_MM - 0.5)) < 0.01
    block = plane_pixels(hu, "coronal", coronal.index)[math.ceil(y1): math.floor(y2) + 1,
                                                       math.ceil(x1): math.floor(x2) + 1].astype(np.float64)
    assert mpr.last_result["statistics"]["voxel_count"] == block.size == 10 * 6
    assert abs(mpr.last_result["statistics"]["mean_hu"] - block.mean()) < 1e-6
    mpr.set_tool("polygon")
    axial.resetTransform()
    axial.scale(2.0, 2.0)
    vertices = [QPointF(120.0, 90.0), QPointF(180.0, 100.0), QPointF(150.0, 150.0)]
    axial.centerOn(QPointF(150.0, 115.0))
    for vertex in vertices:
        qtbot.mouseClick(axial.viewport(), Qt.MouseButton.LeftButton, pos=axial.mapFromScene(vertex))
    axial.setFocus()
    qtbot.keyClick(axial, Qt.Key.Key_Return)
    idle(qtbot)
    polygon = mpr.last_result["roi"]["geometry"]
    assert len(polygon) == 3 and mpr.last_result["roi"]["plane"] == "axial"
    expected = roi_slice_stats(hu, SPACING_ZYX, axial.index, "polygon", polygon)
    assert mpr.last_result["statistics"]["voxel_count"] == expected.voxel_count > 100
    assert mpr.last_result["statistics"]["mean_hu"] == expected.mean_hu
    polygon_shown = [i for i in axial.items.values() if i.annotation["type"] == "polygon"]
    assert len(polygon_shown) == 1

    # A distance across planes: a point on the axial plane, then one on the coronal plane.
    mpr.set_tool("distance3d")
    mpr.set_position((3, 40, 50))
    for view, scene_point in ((axial, QPointF(50.5 * 3.0, 40.5 * 3.0)), (coronal, QPointF(70.5 * 3.0, 2.5 * SLICE_MM))):
        view.centerOn(scene_point)
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=view.mapFromScene(scene_point))
    idle(qtbot)
    across = mpr.last_result
    a, b = (np.array(p) for p in across["points_xyz"])
    assert np.allclose(a, [50, 40, 3], atol=0.3) and np.allclose(b, [70, 40, hu.shape[0] - 1 - 2], atol=0.3)
    patient = [(affine @ [*p, 1.0])[:3] for p in (a, b)]
    assert abs(across["length_mm"] - np.linalg.norm(patient[0] - patient[1])) < 1e-6
    assert len(stored(window)) == 5

    # Undo removes the last measurement (store, planes, layer list); redo stores it again.
    mpr.undo_button.click()
    idle(qtbot)
    assert across["annotation_id"] not in stored(window) and len(stored(window)) == 4
    assert across["annotation_id"] not in window.layers.volume_annotation_ids()
    for _ in range(3):  # the polygon, the rectangle, the ellipse
        mpr.undo_button.click()
        idle(qtbot)
    assert ellipse_id not in stored(window) and ellipse_id not in shown_ids(sagittal)
    mpr.redo_button.click()
    idle(qtbot)
    assert len(stored(window)) == 2 and len(window.layers.volume_annotation_ids()) == 2
    mpr.set_position((*mpr.position[:2], index))  # back to the sagittal slice the ellipse was drawn on
    assert any(item.annotation["type"] == "ellipse" for item in sagittal.items.values())  # stored again, new id
    for view in mpr.views.values():
        view.fit()
    artefacts(mpr, "mpr-tools")


def test_stored_shapes_show_on_their_plane_and_slice_only() -> None:
    """A shape drawn on a plane shows there at its index; a distance across slices shows its end points on the
    slices that hold them; a 3D box (no plane) shows on none; a box's text has no area."""
    shape_zyx, spacing = (10, 20, 30), (5.0, 2.0, 1.0)
    common = {"space": "voxel_xyz", "volume_shape": list(shape_zyx), "spacing_zyx": list(spacing), "method": "roi"}
    rows = [
        {"annotation_id": "ell", "type": "volume_roi", "source": "user", "coordinates": common | {
            "shape": "slice_ellipse", "geometry": {"plane": "sagittal", "index": 7, "center": [4.0, 2.0],
                                                   "radii": [3.0, 1.0]},
            "stats": {"voxel_count": 5, "volume_ml": 0.05, "mean_hu": 1.0, "sd_hu": 0.0, "min_hu": 1.0,
                      "max_hu": 1.0, "area_mm2": 50.0}}},
        {"annotation_id": "line", "type": "volume_roi", "source": "user", "coordinates": common | {
            "shape": "line", "geometry": {"points_xyz": [[3.0, 4.0, 1.0], [9.0, 4.0, 6.0]]},
            "stats": {"voxel_count": 0, "volume_ml": 0.0, "length_mm": 26.0}}},
        {"annotation_id": "box", "type": "volume_roi", "source": "user", "coordinates": common | {
            "shape": "box", "geometry": {"box": [0, 0, 0, 2, 2, 2]},
            "stats": {"voxel_count": 27, "volume_ml": 0.27, "mean_hu": 2.0, "sd_hu": 0.0, "min_hu": 2.0,
                      "max_hu": 2.0}}},
    ]
    sagittal = display_annotations(rows, "sagittal", 7, spacing, shape_zyx, "HU")
    assert [(s["annotation_id"], s["type"]) for s in sagittal] == [("ell", "ellipse")]
    ellipse = sagittal[0]["coordinates"]  # columns are y (2 mm), rows z (5 mm): (px + 0.5) * spacing
    assert ellipse == {"center": [9.0, 12.5], "radii": [6.0, 5.0]} and "50.0 mm²" in sagittal[0]["label"]
    assert display_annotations(rows, "sagittal", 6, spacing, shape_zyx, "HU") == []
    axial_1, axial_6 = (display_annotations(rows, "axial", z, spacing, shape_zyx, "HU") for z in (1, 6))
    assert [(s["type"], s["coordinates"], s["label"]) for s in axial_1] == [("point", [3.5, 9.0], "26.0 mm")]
    assert [s["coordinates"] for s in axial_6] == [[9.5, 9.0]]
    assert "mm²" not in roi_text(rows[2]["coordinates"]["stats"], "HU")
