"""Desktop fixtures: a real MainWindow over a real Engine and store in a temp home."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from desktop.qt import QSettings


@pytest.fixture
def window(qtbot, engine, tmp_path: Path):
    """The main window over the test engine; settings kept in the temp dir."""
    from desktop.app import MainWindow
    from desktop.worker import tracker, wait_idle

    settings = QSettings(str(tmp_path / "desktop.ini"), QSettings.Format.IniFormat)
    main = MainWindow(engine=engine, settings=settings)
    qtbot.addWidget(main)
    main.resize(1280, 860)
    main.show()
    qtbot.waitExposed(main)
    yield main
    main.close()
    assert wait_idle(60000), "background ops still running after the test"
    tracker.cancel_all()  # results arriving after the window closed are dropped


@pytest.fixture
def artefacts(tmp_path: Path):
    """Save screenshots in the test's tmp dir and copy them to $MEDVISION_TEST_ARTIFACTS."""
    def save(widget, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        assert widget.grab().save(str(path)), path
        target = os.environ.get("MEDVISION_TEST_ARTIFACTS")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(target) / path.name)
        return path
    return save


def idle(qtbot, timeout: int = 30000) -> None:
    """Wait until no op is running and queued callbacks have run."""
    from desktop.worker import tracker

    qtbot.waitUntil(lambda: not tracker.busy(), timeout=timeout)
    qtbot.wait(20)
    qtbot.waitUntil(lambda: not tracker.busy(), timeout=timeout)


def open_image(qtbot, window, path: Path, analyze: bool = False) -> None:
    window.open_paths([path], analyze=analyze)
    qtbot.waitUntil(lambda: window.canvas.image_item is not None, timeout=30000)
    idle(qtbot)
