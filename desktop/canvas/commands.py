"""Undoable annotation edits: each command writes the store on the engine lane.

A deleted annotation re-created by undo gets a new id from the store, so commands
name annotations through a shared :class:`Ref` that always holds the current id.
The engine calls run in order on the single engine thread; ``Ref.id`` is set there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from desktop.qt import QUndoCommand


class Ref:
    """The current store id of one annotation across delete/re-create."""

    def __init__(self, annotation_id: str | None = None) -> None:
        self.id = annotation_id


def _fields(annotation: dict) -> dict[str, Any]:
    return {k: annotation.get(k) for k in ("label", "notes", "source", "confidence", "layer", "style")}


class CreateAnnotation(QUndoCommand):
    """Add an annotation; undo deletes it.

    ``add`` (engine -> the new id) stores it another way than ``add_annotation``: a volume plane's
    shape is measured by the engine and stored with its statistics."""

    def __init__(self, canvas, ref: Ref, annotation: dict,  # noqa: ANN001 - CanvasView or MprPanel
                 add: Callable[[Any], str] | None = None) -> None:
        super().__init__(f"Create {annotation['type']}")
        self.canvas, self.ref, self.annotation, self.add = canvas, ref, annotation, add

    def redo(self) -> None:
        def create(engine) -> None:  # noqa: ANN001
            if self.add is not None:
                self.ref.id = self.add(engine)
                return
            a = self.annotation
            self.ref.id = engine.add_annotation(self.canvas.session_id, a["image_id"], a["type"], a["coordinates"],
                                                **_fields(a))["annotation_id"]
        self.canvas.engine_write(create)

    def undo(self) -> None:
        def delete(engine) -> None:  # noqa: ANN001 - runs after the creation on the one engine lane
            if self.ref.id is not None:  # None: the store refused it (an empty shape), nothing to take back
                engine.delete_annotation(self.canvas.session_id, self.ref.id)
        self.canvas.engine_write(delete)


class DeleteAnnotation(CreateAnnotation):
    """Delete an annotation; undo re-creates it with the same fields."""

    def __init__(self, canvas, ref: Ref, annotation: dict) -> None:  # noqa: ANN001
        super().__init__(canvas, ref, annotation)
        self.setText(f"Delete {annotation['type']}")

    def redo(self) -> None:
        CreateAnnotation.undo(self)

    def undo(self) -> None:
        CreateAnnotation.redo(self)


class EditAnnotation(QUndoCommand):
    """Change coordinates/label of an annotation; undo restores the previous values."""

    def __init__(self, canvas, ref: Ref, before: dict, after: dict, text: str = "Edit annotation") -> None:  # noqa: ANN001
        super().__init__(text)
        self.canvas, self.ref, self.before, self.after = canvas, ref, before, after

    def _apply(self, values: dict) -> Callable:
        return lambda engine: engine.update_annotation(self.canvas.session_id, self.ref.id, **values)

    def redo(self) -> None:
        self.canvas.engine_write(self._apply(self.after))

    def undo(self) -> None:
        self.canvas.engine_write(self._apply(self.before))
