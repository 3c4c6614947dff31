"""One GUI path for every error: a non-blocking dialog naming the error code."""

from __future__ import annotations

import logging

from desktop.qt import QMessageBox, QWidget
from engine.errors import MedVisionError

log = logging.getLogger(__name__)

#: The last error shown (code, message): tests and the status bar read it.
last_error: tuple[str, str] | None = None


def describe(exc: BaseException) -> tuple[str, str]:
    """The (code, message) pair of any exception; non-MedVision ones are INTERNAL_ERROR."""
    if isinstance(exc, MedVisionError):
        return str(getattr(exc.code, "value", exc.code)), exc.message
    return "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"


def show_error(parent: QWidget | None, exc: BaseException, context: str = "") -> QMessageBox:
    """Show ``exc`` in a window-modal, non-blocking message box and log it by code."""
    global last_error
    code, message = describe(exc)
    last_error = (code, message)
    if not isinstance(exc, MedVisionError):
        log.error("unexpected error in %s", context or "the desktop", exc_info=exc)
    else:
        log.warning("%s failed: %s", context or "operation", code)
    box = QMessageBox(QMessageBox.Icon.Warning, "MedVision", f"{context + ': ' if context else ''}{message}",
                      QMessageBox.StandardButton.Ok, parent)
    box.setInformativeText(f"Error code: {code}")
    box.setObjectName("errorDialog")
    box.open()  # never exec(): the event loop (and live sync) keeps running
    return box
