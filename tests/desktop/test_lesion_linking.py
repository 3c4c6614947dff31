"""Lesion linking in the desktop: the layer panel's menu tracks a measurement as a new lesion, links one to
a prior's lesion, untracks; the compare window lists each tracked lesion's change (real engine, two studies)."""

from __future__ import annotations

from pathlib import Path

from desktop.qt import QMenu
from tests.desktop.conftest import idle, open_image
from tests.tracking.studies import distance, rg1_study


def _action(menu: QMenu, text: str):  # noqa: ANN202 - QAction
    """The menu's (or a submenu's) action whose text starts with ``text``."""
    for action in menu.actions():
        if action.text().startswith(text):
            return action
        if action.menu() is not None and (found := _action(action.menu(), text)) is not None:
            return found
    return None


def test_link_to_a_prior_lesion_from_the_layer_panel_and_see_its_change(qtbot, window, engine, tmp_path: Path,
                                                                        monkeypatch) -> None:
    prior_file, current_file = tmp_path / "prior.dcm", tmp_path / "current.dcm"
    prior_file.write_bytes(rg1_study("20230115", "DESK-TRACK"))
    current_file.write_bytes(rg1_study("20240301", "DESK-TRACK"))
    prior = engine.create_study_session("prior")["session_id"]
    prior_image = engine.add_image_to_session(prior, prior_file, auto_analyze=False)["image_id"]
    seed = engine.track_lesion(prior, distance(prior, prior_image, engine, 400, 450, label="nodule")["annotation_id"])
    open_image(qtbot, window, current_file)
    session, image = window.session_id, window.canvas.image_id
    now = distance(session, image, engine, 400, 460, label="nodule now")["annotation_id"]
    other = distance(session, image, engine, 100, 150, label="node")["annotation_id"]
    layers = window.layers
    qtbot.waitUntil(lambda: {now, other} <= set(layers.annotation_ids()) and bool(layers.lesions.seeds), timeout=30000)
    assert [s["uid"] for s in layers.lesions.seeds] == [seed["tracking"]["uid"]]

    menu = layers.annotation_menu(now)
    assert not _action(menu, "Untrack").isEnabled()  # not tracked yet
    _action(menu, "nodule (20230115, 10 mm)").trigger()  # Link to prior lesion ▸ the prior's nodule
    qtbot.waitUntil(lambda: "lesion nodule" in _row(layers, now).text(1), timeout=30000)
    idle(qtbot)
    lesions = {lesion["annotation_id"]: lesion for lesion in engine.tracked_lesions(session)["lesions"]}
    assert lesions[now]["uid"] == seed["tracking"]["uid"] and lesions[now]["identifier"] == "nodule"
    assert not layers.lesions.seeds  # the prior's lesion is linked here now: nothing left to link

    monkeypatch.setattr("desktop.panels.lesions.QInputDialog.getText", lambda *_a, **_k: ("target 2", True))
    _action(layers.annotation_menu(other), "Track as lesion").trigger()
    qtbot.waitUntil(lambda: "lesion target 2" in _row(layers, other).text(1), timeout=30000)
    idle(qtbot)
    assert {lesion["identifier"] for lesion in engine.tracked_lesions(session)["lesions"]} == {"nodule", "target 2"}

    untrack = _action(layers.annotation_menu(other), "Untrack")
    assert untrack.text() == "Untrack (target 2)"
    untrack.trigger()
    qtbot.waitUntil(lambda: "lesion" not in _row(layers, other).text(1), timeout=30000)
    idle(qtbot)
    assert [lesion["annotation_id"] for lesion in engine.tracked_lesions(session)["lesions"]] == [now]

    window.compare_with_prior()
    qtbot.waitUntil(lambda: getattr(window, "compare_dialog", None) is not None, timeout=60000)
    idle(qtbot)
    table = window.compare_dialog.lesion_table
    assert table.isVisibleTo(window.compare_dialog) and table.topLevelItemCount() == 1
    row = table.topLevelItem(0)
    # 50 px then, 60 px now at 0.2 mm: 10 -> 12 mm, +2 mm, +20 %, 2023-01-15 -> 2024-03-01 is 411 days
    assert [row.text(i) for i in range(6)] == ["nodule", "10 mm", "12 mm", "+2 mm", "+20 %", "411"]


def _row(layers, annotation_id: str):  # noqa: ANN001, ANN202 - LayersPanel, QTreeWidgetItem
    for key in layers.layer_items:
        item = layers.layer_items[key]
        for i in range(item.childCount()):
            if item.child(i).data(0, 0x0100)[1] == annotation_id:  # Qt.ItemDataRole.UserRole
                return item.child(i)
    raise AssertionError(f"annotation {annotation_id} is not listed")
