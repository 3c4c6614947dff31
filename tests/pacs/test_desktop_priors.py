"""The desktop looks for an opened study's priors: the same road as the node's (C-FIND by Patient ID and
issuer, C-GET of the chosen ones, recorded on the session), off the GUI thread; the worklist shows them."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom

from desktop.qt import Qt
from tests.desktop.conftest import window  # noqa: F401 - the real MainWindow fixture
from tests.pacs.conftest import CLIENT_AE
from tests.priors.rg1 import rg1_variant


def _uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def _row(worklist, session_id: str):  # noqa: ANN001, ANN202 - WorklistPanel, QTreeWidgetItem
    for i in range(worklist.tree.topLevelItemCount()):
        item = worklist.tree.topLevelItem(i)
        if item.data(0, Qt.ItemDataRole.UserRole) == session_id:
            return item
    return None


def _state(worklist, session_id: str) -> str:  # noqa: ANN001 - WorklistPanel
    """The worklist's status cell of the session ("" while it is not listed)."""
    row = _row(worklist, session_id)
    return "" if row is None else row.text(2)


def test_opening_a_study_fetches_its_priors_and_the_worklist_shows_them(qtbot, window, engine,  # noqa: F811
                                                                        orthanc, tmp_path: Path) -> None:
    prior, older = (rg1_variant(study_date=d, patient_id="DESK-PRIORS") for d in ("20230115", "20190301"))
    elsewhere = rg1_variant(study_date="20230701", patient_id="DESK-PRIORS", issuer="ELSEWHERE")
    orthanc.upload([prior, older, elsewhere])
    (engine.settings.home / "pacs.toml").write_text(
        f'calling_ae = "{CLIENT_AE}"\n[[archive]]\nname = "main"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\npriors = true\n")
    current_file = tmp_path / "current.dcm"
    current_file.write_bytes(rg1_variant(study_date="20240301", patient_id="DESK-PRIORS"))
    session = engine.create_study_session("current")["session_id"]
    engine.add_image_to_session(session, current_file, auto_analyze=False)
    window.worklist.refresh()
    qtbot.waitUntil(lambda: _row(window.worklist, session) is not None, timeout=30000)
    assert "prior" not in _state(window.worklist, session)

    window.worklist.tree.itemActivated.emit(_row(window.worklist, session), 0)  # double-click: open
    assert window.session_id == session and session in window.priors_looked_for
    assert engine.get_session_status(session)["priors"] == []  # the GUI thread went on: the fetch runs behind
    qtbot.waitUntil(lambda: "2 priors" in _state(window.worklist, session), timeout=60000)

    priors = engine.get_session_status(session)["priors"]
    assert [p["study_uid"] for p in priors] == [_uid(prior), _uid(older)]  # most recent first; never ELSEWHERE's
    assert all(engine.store.session_of_study(p["study_uid"]) for p in priors)  # retrieved into the store
    assert engine.store.session_of_study(_uid(elsewhere)) is None
    assert "20230115 CR" in _row(window.worklist, session).toolTip(2)
    assert window.look_for_priors(session) is None  # once per session: opening it again asks no archive


def test_an_archive_that_cannot_be_reached_is_said_in_the_status_bar_and_nothing_is_recorded(
        qtbot, window, engine, tmp_path: Path) -> None:  # noqa: F811
    from tests.pacs.orthanc import free_port

    (engine.settings.home / "pacs.toml").write_text(
        f'calling_ae = "{CLIENT_AE}"\nretries = 1\nbackoff_s = 0.05\n[[archive]]\nname = "gone"\n'
        f'ae_title = "NOBODY"\nhost = "127.0.0.1"\nport = {free_port()}\npriors = true\n')
    current_file = tmp_path / "current.dcm"
    current_file.write_bytes(rg1_variant(study_date="20240301", patient_id="DESK-NOWHERE"))
    session = engine.create_study_session("current")["session_id"]
    engine.add_image_to_session(session, current_file, auto_analyze=False)
    op = window.look_for_priors(session)
    assert op is not None and op.lane == "network"
    qtbot.waitUntil(lambda: window.statusBar().currentMessage().startswith("Priors not fetched: PACS_"),
                    timeout=30000)
    assert "priors" not in (engine.store.get_session(session)["metadata"] or {})  # nothing recorded
    assert window.look_for_priors(session) is not None  # opening the study again asks again
