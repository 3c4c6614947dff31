"""The native canvas: a QGraphicsView over the full-resolution image, layers, tools, undo."""
