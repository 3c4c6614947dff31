"""Corner text over an image view (the viewer's usual four corners), drawn in viewport pixels."""

from __future__ import annotations

from desktop.qt import QColor, QFont, QPainter, QRect, Qt

_FLAGS = {"top_left": Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft,
          "top_right": Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignRight,
          "bottom_left": Qt.AlignmentFlag.AlignBottom | Qt.AlignmentFlag.AlignLeft,
          "bottom_right": Qt.AlignmentFlag.AlignBottom | Qt.AlignmentFlag.AlignRight}


def paint_corner_text(painter: QPainter, viewport: QRect, corners: dict[str, list[str]], *,
                      point_size: int, margin: tuple[int, int]) -> None:
    """Each corner's non-empty lines, in the corner of ``viewport`` (``margin``: x, y pixels)."""
    if not corners:
        return
    painter.save()
    painter.resetTransform()
    painter.setFont(QFont("Sans", point_size))
    painter.setPen(QColor(230, 230, 120))
    dx, dy = margin
    area = viewport.adjusted(dx, dy, -dx, -dy)
    for corner, lines in corners.items():
        painter.drawText(area, _FLAGS[corner], "\n".join(line for line in lines if line))
    painter.restore()
