"""Compare with prior in the desktop: current, aligned prior and difference share zoom, pan and window."""

from __future__ import annotations

from pathlib import Path

from tests.desktop.conftest import idle, open_image
from tests.priors.rg1 import rg1_variant, similarity


def test_compare_window_hangs_current_and_prior_in_sync(qtbot, window, engine, rg1_path: Path, tmp_path: Path) -> None:
    prior_file = tmp_path / "prior.dcm"
    prior_file.write_bytes(rg1_variant(study_date="20030115", transform=similarity(1955, 1841, 4.0, 1.05, (30, -20))))
    prior = engine.create_study_session("prior")["session_id"]
    engine.add_image_to_session(prior, prior_file, auto_analyze=False)
    open_image(qtbot, window, rg1_path)
    window.compare_with_prior()
    qtbot.waitUntil(lambda: getattr(window, "compare_dialog", None) is not None, timeout=60000)
    idle(qtbot)
    dialog = window.compare_dialog
    current, aligned, difference = dialog.views
    assert all(not view.pixmap.pixmap().isNull() for view in dialog.views)
    assert current.pixmap.pixmap().size() == aligned.pixmap.pixmap().size() == difference.pixmap.pixmap().size()
    assert "20030115" in dialog.summary.text() and "doubtful" not in dialog.summary.text()
    assert dialog.table.topLevelItemCount() > 5

    dialog.zoom(4.0)  # zoom in one place: all three
    assert {round(view.transform().m11(), 3) for view in dialog.views} == {4.0}
    qtbot.wait(20)
    current.horizontalScrollBar().setValue(current.horizontalScrollBar().maximum() // 2)
    assert aligned.horizontalScrollBar().value() == difference.horizontalScrollBar().value() == \
        current.horizontalScrollBar().value() > 0

    before = aligned.pixmap.pixmap().toImage()
    dialog.set_window(0.3, 0.4)  # window/level on current and prior together
    assert dialog.window == (0.3, 0.4) and aligned.pixmap.pixmap().toImage() != before
