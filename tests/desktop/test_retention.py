"""The desktop's retention cleanup timer and the worklist's Pin / Delete study actions."""

from __future__ import annotations

from desktop.qt import QMessageBox, Qt
from engine.errors import MedVisionError
from tests.desktop.conftest import open_image
from tests.erasure import age, consistency_problems


def _code(engine, session_id: str) -> str | None:  # noqa: ANN001
    try:
        engine.get_session_status(session_id)
    except MedVisionError as exc:
        return exc.code.value
    return None


def _row(window, session_id: str):  # noqa: ANN001, ANN202
    tree = window.worklist.tree
    for i in range(tree.topLevelItemCount()):
        if tree.topLevelItem(i).data(0, Qt.ItemDataRole.UserRole) == session_id:
            return tree.topLevelItem(i)
    return None


def test_cleanup_pin_and_delete_study_from_the_worklist(qtbot, window, engine, rg1_path, monkeypatch) -> None:
    expired = engine.create_study_session("agent study", source="mcp")["session_id"]
    study = engine.create_study_session("chest", source="mcp")["session_id"]
    engine.add_image_to_session(study, rg1_path, auto_analyze=False)
    age(engine.store, expired, days=2)
    window.purge_expired()  # what the timer runs every cleanup interval
    qtbot.waitUntil(lambda: _code(engine, expired) == "SESSION_EXPIRED", timeout=10000)
    assert window._timers["retention"].interval() == 3600 * 1000

    qtbot.waitUntil(lambda: _row(window, study) is not None and _row(window, expired) is None, timeout=5000)
    pin, delete = window.worklist.session_menu(study).actions()
    assert pin.text().startswith("Pin")
    pin.trigger()
    qtbot.waitUntil(lambda: _row(window, study) is not None and "pinned" in _row(window, study).text(2),
                    timeout=5000)
    age(engine.store, study, days=2)
    assert engine.purge_expired_sessions()["sessions"] == []  # pinned: kept
    assert window.worklist.session_menu(study).actions()[0].text() == "Unpin"

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    delete.trigger()
    qtbot.waitUntil(lambda: _code(engine, study) == "SESSION_NOT_FOUND", timeout=10000)
    qtbot.waitUntil(lambda: _row(window, study) is None, timeout=5000)
    assert engine.store.blobs.ids_on_disk() == set() and consistency_problems(engine.store) == []


def test_deleting_the_study_on_screen_clears_the_canvas(qtbot, window, engine, rg1_path) -> None:
    open_image(qtbot, window, rg1_path)
    shown = window.session_id
    assert engine.list_sessions()[0]["source"] == "file"  # opened in the desktop
    window.delete_study(shown, confirm=False)
    qtbot.waitUntil(lambda: window.canvas.image_item is None and window.session_id is None, timeout=10000)
    assert window.strip.count() == 0 and _code(engine, shown) == "SESSION_NOT_FOUND"
    assert engine.store.blobs.ids_on_disk() == set()
