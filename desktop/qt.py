"""The one Qt import shim: every module in ``desktop`` imports Qt names from here.

Keeping Qt behind one module gives one place to fail with a clear message when the
GUI extra is missing, and one place to change bindings.
"""

from __future__ import annotations

try:
    from PySide6.QtCore import (
        QByteArray,
        QEvent,
        QLineF,
        QObject,
        QPoint,
        QPointF,
        QProcess,
        QRect,
        QRectF,
        QRunnable,
        QSettings,
        QSize,
        Qt,
        QThreadPool,
        QTimer,
        QUrl,
        QVariantAnimation,
        Signal,
        Slot,
    )
    from PySide6.QtGui import (
        QAction,
        QBrush,
        QColor,
        QFont,
        QIcon,
        QImage,
        QKeySequence,
        QPainter,
        QPainterPath,
        QPen,
        QPixmap,
        QPolygonF,
        QTextDocument,
        QTransform,
        QUndoCommand,
        QUndoStack,
    )
    from PySide6.QtWidgets import (
        QAbstractItemView,
        QApplication,
        QComboBox,
        QDialog,
        QDockWidget,
        QFileDialog,
        QFrame,
        QGraphicsEllipseItem,
        QGraphicsItem,
        QGraphicsLineItem,
        QGraphicsPathItem,
        QGraphicsPixmapItem,
        QGraphicsRectItem,
        QGraphicsScene,
        QGraphicsSimpleTextItem,
        QGraphicsView,
        QHBoxLayout,
        QHeaderView,
        QInputDialog,
        QLabel,
        QLineEdit,
        QListWidget,
        QListWidgetItem,
        QMainWindow,
        QMenu,
        QMessageBox,
        QProgressBar,
        QPushButton,
        QSlider,
        QSpinBox,
        QSplitter,
        QTextBrowser,
        QToolBar,
        QTreeWidget,
        QTreeWidgetItem,
        QVBoxLayout,
        QWidget,
    )
    from shiboken6 import isValid
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "The MedVision desktop needs PySide6 (pip install 'medvision[desktop]'); "
        f"importing it failed: {exc}"
    ) from exc

__all__ = [
    "QAbstractItemView", "QAction", "QApplication", "QBrush", "QByteArray", "QColor", "QComboBox",
    "QDialog", "QDockWidget", "QEvent", "QFileDialog", "QFont", "QFrame", "QGraphicsEllipseItem",
    "QGraphicsItem", "QGraphicsLineItem", "QGraphicsPathItem", "QGraphicsPixmapItem", "QGraphicsRectItem",
    "QGraphicsScene", "QGraphicsSimpleTextItem", "QGraphicsView", "QHBoxLayout", "QHeaderView",
    "QIcon", "QImage", "QInputDialog", "QKeySequence", "QLabel", "QLineEdit", "QLineF",
    "QListWidget", "QListWidgetItem", "QMainWindow", "QMenu", "QMessageBox", "QObject", "QPainter",
    "QPainterPath", "QPen", "QPixmap", "QPoint", "QPointF", "QPolygonF", "QProcess", "QTransform", "QProgressBar",
    "QPushButton", "QRect", "QRectF", "QRunnable", "QSettings", "QSize", "QSlider", "QSpinBox", "QSplitter",
    "QTextBrowser", "QTextDocument", "QThreadPool", "QTimer", "QToolBar", "QTreeWidget", "QTreeWidgetItem",
    "QUndoCommand", "QUndoStack", "QUrl", "QVBoxLayout", "QVariantAnimation", "QWidget", "Qt", "Signal", "Slot", "isValid",
]
