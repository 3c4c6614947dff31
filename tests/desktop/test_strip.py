"""The image strip shows one thumbnail per volume stack, not one per slice."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file

from desktop.panels.strip import ImageStrip, strip_entries
from tests.volumes.ctseries import sub_volume, write_ct_series


def test_a_stack_is_one_thumbnail(qtbot, engine, tmp_path: Path, shared_ct_dir: Path) -> None:  # noqa: ANN001
    folder = tmp_path / "ct"
    write_ct_series(folder, volume=sub_volume(40, 46), seed=4)
    session_id = engine.create_study_session("strip")["session_id"]
    single = engine.add_image_to_session(session_id, get_testdata_file("CT_small.dcm"), auto_analyze=False)
    slices = [engine.add_image_to_session(session_id, path, auto_analyze=False)["image_id"]
              for path in sorted(folder.iterdir())]
    images = engine.get_session_status(session_id)["images"]
    entries = strip_entries(images)
    assert [sorted(members) for _, members in entries] == [[single["image_id"]], sorted(slices)]
    assert entries[1][0]["z"] == 3  # the middle slice stands for the stack

    strip = ImageStrip()
    qtbot.addWidget(strip)
    strip.engine = engine
    strip.set_session(session_id)
    qtbot.waitUntil(lambda: strip.count() == 2, timeout=20000)
    assert strip.item(1).text() == "CT 6 slices"
    strip.select_image(slices[0])  # any slice of the stack selects the stack's thumbnail
    assert strip.currentRow() == 1
