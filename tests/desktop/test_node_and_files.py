"""The window's own DICOM node, files dropped on the window, exports started from the window."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from PySide6.QtCore import QMimeData, QPointF, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent

from desktop.qt import QApplication, Qt
from tests.desktop.conftest import idle, open_image
from tests.dicom_node.conftest import echoscu, free_port, storescu


def _drag_events(window, mime: QMimeData) -> tuple[QDragEnterEvent, QDropEvent]:  # noqa: ANN001
    centre = QPointF(window.rect().center())
    enter = QDragEnterEvent(centre, Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                            Qt.KeyboardModifier.NoModifier)
    drop = QDropEvent(centre, Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                      Qt.KeyboardModifier.NoModifier)
    return enter, drop


def test_a_dropped_radiograph_opens_and_dropped_text_is_ignored(qtbot, window, rg1_path: Path) -> None:
    text = QMimeData()
    text.setText("not a file")
    enter, _ = _drag_events(window, text)
    QApplication.sendEvent(window, enter)
    assert not enter.isAccepted()

    files = QMimeData()
    files.setUrls([QUrl.fromLocalFile(str(rg1_path))])
    enter, drop = _drag_events(window, files)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(window, drop)
    qtbot.waitUntil(lambda: window.canvas.image_item is not None, timeout=30000)
    idle(qtbot)
    (image,) = window.engine.get_session_status(window.session_id)["images"]
    assert image["source_name"] == "RG1_UNCR.dcm" and image["type"] == "CXR"


def test_export_from_the_window_writes_the_file(qtbot, window, rg1_path: Path, tmp_path: Path) -> None:
    open_image(qtbot, window, rg1_path)
    target = tmp_path / "out" / "report.json"
    target.parent.mkdir()
    window.export("json", target)
    idle(qtbot)
    document = json.loads(target.read_text())
    (image,) = document["images"]
    assert image["image_id"] == window.canvas.image_id
    assert str(target) in window.statusBar().currentMessage()


def test_the_window_runs_its_dicom_node_on_its_own_store(qtbot, window, rg1_path: Path) -> None:
    """Start from the menu's action, receive RG1 from DCMTK storescu, see it in the
    worklist as received, stop: the node serves this window's data directory even though
    MEDVISION_HOME points elsewhere."""
    port = free_port()
    window.settings.setValue("dicom/port", port)
    window.settings.setValue("dicom/ae_title", "MVDESK")
    window.start_dicom_node()
    try:
        qtbot.waitUntil(lambda: window.node_label.text() == "DICOM node: running", timeout=30000)
        qtbot.waitUntil(lambda: echoscu(port, called="MVDESK").returncode == 0, timeout=60000)
        sent = storescu(port, [rg1_path], "-aec", "MVDESK")
        assert sent.returncode == 0, sent.stderr[-800:]
        qtbot.waitUntil(lambda: bool(window.worklist.received), timeout=30000)
        (session_id,) = window.worklist.received
        (image,) = window.engine.store.list_images(session_id)
        uid = pydicom.dcmread(rg1_path, stop_before_pixels=True).SOPInstanceUID
        assert image["sop_instance_uid"] == uid and image["type"] == "CXR"
    finally:
        window.stop_dicom_node()
    assert window.node_label.text() == "DICOM node: stopped" and window.dicom_node is None
    assert echoscu(port, called="MVDESK").returncode != 0
