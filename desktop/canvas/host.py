"""What the tool controller and the agent overlays need from the view that holds them.

``CanvasView`` satisfies :class:`CanvasHost`; the helpers type against this protocol, so
they do not import the view that imports them.
"""

from __future__ import annotations

from typing import Any, Protocol

from desktop.canvas.layers import LayerModel


class CanvasHost(Protocol):
    """The view's side of the helpers: its scene, undo stack, image, layers and signals."""

    engine: Any
    session_id: str | None
    image_id: str | None
    layers: LayerModel
    items: dict[str, Any]
    undo_stack: Any
    actions_by_name: dict[str, Any]
    region_drawn: Any  # Signal(dict)
    mask_updated: Any  # Signal
    tool_changed: Any  # Signal(str)

    def scene(self) -> Any: ...
    def scale_factor(self) -> float: ...
    def viewport_state(self) -> dict: ...
    def set_viewport(self, state: dict) -> None: ...
    def schedule_refresh(self) -> None: ...
    def schedule_sync(self) -> None: ...
    def setDragMode(self, mode: Any) -> None: ...  # noqa: N802 - Qt's name
    def setCursor(self, cursor: Any) -> None: ...  # noqa: N802 - Qt's name
