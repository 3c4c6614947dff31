"""Start the desktop as ``python -m desktop`` does, on whatever display the environment names,
open a file, wait until its image is on the canvas and the analysis is done, then save a
grab of the whole screen (through the platform plugin: on xcb, the X server's root window)
and quit. Prints ``platform=NAME`` and ``screen=PATH``.

    python tests/desktop/xcb_desktop.py IMAGE OUT.png
"""

from __future__ import annotations

import sys
import time

from desktop import platform_check


def main(image: str, out: str) -> int:
    platform_check.ensure()  # exactly what python -m desktop does before the QApplication
    from desktop.app import MainWindow
    from desktop.qt import QApplication, QTimer
    from desktop.worker import tracker, wait_idle

    app = QApplication(sys.argv[:1])
    window = MainWindow(open_paths=[image])
    window.show()
    deadline = time.monotonic() + 240
    state = {"code": 1, "quiet_since": None}

    def poll() -> None:
        ready = window.canvas.image_item is not None and not tracker.busy()
        if ready and state["quiet_since"] is None:
            state["quiet_since"] = time.monotonic()
        elif not ready:
            state["quiet_since"] = None
        if state["quiet_since"] is not None and time.monotonic() - state["quiet_since"] > 1.0:
            shot = app.primaryScreen().grabWindow(0)
            state["code"] = 0 if shot.save(out) else 3
            app.quit()
        elif time.monotonic() > deadline:
            sys.stderr.write("the image never appeared on the canvas\n")
            app.quit()

    timer = QTimer()
    timer.timeout.connect(poll)
    timer.start(100)
    app.exec()
    sys.stdout.write(f"platform={app.platformName()}\nscreen={out}\n")
    window.close()
    wait_idle(60000)
    if window.engine is not None:
        window.engine.close()
    return state["code"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
