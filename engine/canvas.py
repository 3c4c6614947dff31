"""The canvas tools' engine half: the canvas's reported state and what agents push to it.

``sync_canvas_state`` stores what the canvas reports (viewport, active tool, current
image, the user's unsaved drawings, a pending selection) and answers what waits for
the user. ``push_to_canvas`` lets an agent add, change and remove display layers,
highlight a region, animate the viewport, or create real annotations with a message.

Every change appends one ``canvas.*`` event in the same transaction as its rows, so
the desktop, following the store's ``events`` outbox, shows an agent's push live:

- ``canvas.state_synced``   ``{"updated_at", "current_image_id", "active_tool", "keys"}``
- ``canvas.layer_added``    ``{"layer_id", "image_id", "type", "name"}``
- ``canvas.layer_updated``  ``{"layer_id", "image_id", "fields"}``
- ``canvas.layer_removed``  ``{"layer_id", "image_id"}``
- ``canvas.highlight``      ``{"image_id", "region", "style", "label", "duration_ms"}`` (transient)
- ``canvas.animate``        ``{"image_id", "from", "to", "duration"}`` (transient)
- ``canvas.annotations_added`` ``{"image_id", "annotation_ids", "suggestion_ids", "turn_id"}``
- ``canvas.message``        ``{"turn_id", "message"}`` (only when a message came along)

Coordinates follow the design's contract (image pixels of the displayed frame, or
``"format": "relative"``) and are validated against the image's size
(:mod:`engine.imaging.regions`); layers store them in pixels. The image a push refers
to is its ``image_id``, else the image the canvas last reported, else the session's
current image.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.errors import ErrorCode, MedVisionError
from engine.events import EventKind
from engine.imaging.masks import encode_rle
from engine.imaging.regions import annotation_coordinates, parse_region

if TYPE_CHECKING:
    from engine.services import Services
    from engine.store import Store

ACTIONS = ("add_layer", "update_layer", "remove_layer", "highlight", "animate", "add_annotations")
LAYER_TYPES = ("segmentation", "bbox", "annotation", "heatmap", "mask", "text")
TOOLS = ("select", "pan", "zoom", "window", "bbox", "polygon", "freehand", "point", "measure", "text",
         "eraser", "segment")
HIGHLIGHT_STYLES = ("pulse", "glow", "outline")
STATE_KEYS = ("viewport", "active_tool", "current_image_id", "user_drawings", "pending_selection")
LAYER_SOURCES = ("agent", "user", "system")
#: Animation length limits (ms); the spec's example uses 500.
ANIMATE_MS = (1, 10_000)
DEFAULT_ANIMATE_MS = 500
#: How long a highlight may stay (ms); None in the event lets the canvas choose.
HIGHLIGHT_MS = (1, 60_000)
#: Drawings one sync may report; the canvas keeps more only as real annotations.
MAX_USER_DRAWINGS = 500
#: Items one add_annotations call may create (annotations + suggestions).
MAX_PUSHED_ANNOTATIONS = 200
#: Heatmap grids are coarse (the canvas upsamples them): at most this many cells.
MAX_HEATMAP_CELLS = 512 * 512
NAME_MAX_CHARS = 200
MESSAGE_MAX_CHARS = 4000
#: Annotation-like keys a drawing or pushed annotation may carry (the spec's canvas
#: Annotation, appendix I.8.2, plus our ``coordinates`` contract).
ANNOTATION_ITEM_KEYS = frozenset({
    "id", "type", "source", "coordinates", "mask", "mask_id", "region", "label", "description", "note",
    "notes", "confidence", "finding", "style", "image_id", "visible", "locked", "interactive", "timestamp",
    "created_at", "relatedAnnotationIds", "suggestedBy",
})
TURN_KIND = "canvas_message"


def _bad(message: str, **details: Any) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_ARGUMENT, message, **details)


def _json_object(value: Any, what: str) -> dict:
    """``value`` as a plain-JSON object (no NaN); ``INVALID_ARGUMENT`` otherwise."""
    if not isinstance(value, dict):
        raise _bad(f"{what} must be a JSON object, not {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _bad(f"{what} is not plain JSON ({exc})") from exc
    return value


def _only_keys(value: dict, allowed: tuple[str, ...] | frozenset[str], what: str) -> None:
    unknown = sorted(str(k) for k in set(value) - set(allowed))
    if unknown:
        raise _bad(f"unknown key {unknown[0]!r} in {what}; allowed: {', '.join(sorted(allowed))}", key=unknown[0])


def _number(value: Any, what: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise _bad(f"{what} must be a finite number, not {value!r}")
    if positive and value <= 0:
        raise _bad(f"{what} must be greater than 0, not {value!r}")
    return float(value)


def _text(value: Any, what: str, limit: int, *, default: str | None = None) -> str | None:
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > limit:
        raise _bad(f"{what} must be a string of at most {limit} characters")
    return value


def _milliseconds(value: Any, what: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or not (low <= value <= high):
        raise _bad(f"{what} must be a number of milliseconds in {low}..{high}, not {value!r}")
    return int(round(value))


def _viewport(value: Any, what: str, *, partial: bool) -> dict:
    """A viewport ``{"zoom" > 0, "pan": {"x", "y"}, "window"?: {"center", "width" > 0}}``.

    ``partial`` (animation ends) makes every key optional but wants at least one.
    """
    value = _json_object(value, what)
    _only_keys(value, ("zoom", "pan", "window"), what)
    if partial and not value:
        raise _bad(f"{what} needs at least one of zoom, pan, window")
    out: dict[str, Any] = {}
    if "zoom" in value or not partial:
        if "zoom" not in value:
            raise _bad(f"{what} needs 'zoom'")
        out["zoom"] = _number(value["zoom"], f"{what}.zoom", positive=True)
    if "pan" in value or not partial:
        pan = _json_object(value.get("pan"), f"{what}.pan")
        _only_keys(pan, ("x", "y"), f"{what}.pan")
        if set(pan) != {"x", "y"}:
            raise _bad(f"{what}.pan needs 'x' and 'y'")
        out["pan"] = {axis: _number(pan[axis], f"{what}.pan.{axis}") for axis in ("x", "y")}
    if value.get("window") is not None:
        window = _json_object(value["window"], f"{what}.window")
        _only_keys(window, ("center", "width"), f"{what}.window")
        if set(window) != {"center", "width"}:
            raise _bad(f"{what}.window needs 'center' and 'width'")
        out["window"] = {"center": _number(window["center"], f"{what}.window.center"),
                         "width": _number(window["width"], f"{what}.window.width", positive=True)}
    return out


def _style(value: Any, what: str = "style") -> dict:
    return {} if value is None else dict(_json_object(value, what))


def _default_state(current_image_id: str | None) -> dict:
    return {"viewport": {"zoom": 1.0, "pan": {"x": 0.0, "y": 0.0}}, "active_tool": "select",
            "current_image_id": current_image_id, "user_drawings": [], "pending_selection": None}


def _layer(row: dict) -> dict:
    """The public form of a layer row (as :meth:`engine.store.canvas.CanvasRepository.layers` reads it)."""
    return {"layer_id": row["id"], "image_id": row["image_id"], "type": row["kind"], "name": row["name"],
            "data": row["data"], "style": row["style"], "visible": bool(row["visible"]), "source": row["source"],
            "created_at": row["created_at"], "updated_at": row["updated_at"]}


def _request(row: dict) -> dict:
    """The public form of a pending user-input request (as ``get_user_input`` gives it)."""
    return {"request_id": row["id"], "run_id": row["run_id"], "step_id": row["step_id"],
            "input_type": row["input_type"], "prompt": row["prompt"], "options": row["options"],
            "status": row["status"], "created_at": row["created_at"]}


class Canvas:
    """The canvas logic over the engine's services (its store and annotations)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.actions: dict[str, Callable[[str, dict], dict]] = {
            "add_layer": self._add_layer, "update_layer": self._update_layer, "remove_layer": self._remove_layer,
            "highlight": self._highlight, "animate": self._animate, "add_annotations": self._add_annotations,
        }

    @property
    def store(self) -> Store:
        return self.services.store

    # -- reading ---------------------------------------------------------------------------
    def _stored_state(self, session_id: str) -> tuple[dict, str | None]:
        """The stored state merged over the defaults, and when it was last synced."""
        session = self.store.sessions.get(session_id)
        state = _default_state(session["current_image_id"])
        stored, updated_at = self.store.canvas.state(session_id)
        if stored is None:
            return state, None
        if stored.get("current_image_id") is None:  # synced before any image: follow the session
            stored.pop("current_image_id", None)
        state.update(stored)
        return state, updated_at

    def layers(self, session_id: str) -> list[dict]:
        """A session's canvas layers, oldest first."""
        return [_layer(r) for r in self.store.canvas.layers(session_id)]

    def _pending_requests(self, session_id: str) -> list[dict]:
        return [_request(r) for r in self.store.inputs.in_session(session_id, "pending")]

    def get_state(self, session_id: str) -> dict:
        """The stored canvas state (defaults when the canvas never synced), with the layers."""
        state, updated_at = self._stored_state(session_id)
        return {"session_id": session_id, "state": state, "updated_at": updated_at,
                "layers": self.layers(session_id)}

    def _image(self, session_id: str, image_id: Any) -> dict:
        """The image a call refers to: ``image_id``, else the canvas's, else the session's current one."""
        if image_id is None:
            state, _ = self._stored_state(session_id)
            image_id = state.get("current_image_id")
            if image_id is not None and not self.store.images.exists(image_id, session_id):
                image_id = None  # the image the canvas showed is gone: fall back to the session's
            if image_id is None:
                image_id = self.store.sessions.get(session_id)["current_image_id"]
            if image_id is None:
                raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, "the session has no images yet")
        if not isinstance(image_id, str):
            raise _bad("image_id must be a string")
        return self.store.images.get(image_id, session_id=session_id)

    # -- sync_canvas_state ---------------------------------------------------------------------
    def sync_state(self, session_id: str, canvas_state: Any) -> dict:
        """Validate and store what the canvas reports (``canvas.state_synced``).

        Keys given replace the stored ones; keys left out keep their stored value; a
        key given as None goes back to its default. Returns the pending user-input
        requests and the layers, so the canvas learns what waits for the user.
        """
        self.store.sessions.get(session_id)
        canvas_state = _json_object(canvas_state, "canvas_state")
        _only_keys(canvas_state, STATE_KEYS, "canvas_state")
        with self.store.db.transaction():
            state, _ = self._stored_state(session_id)
            defaults = _default_state(self.store.sessions.get(session_id)["current_image_id"])
            given = {k: (defaults[k] if v is None else v) for k, v in canvas_state.items()}
            if "viewport" in canvas_state and canvas_state["viewport"] is not None:
                given["viewport"] = _viewport(given["viewport"], "viewport", partial=False)
            if "active_tool" in given and given["active_tool"] not in TOOLS:
                raise _bad(f"active_tool must be one of {', '.join(TOOLS)}, not {given['active_tool']!r}")
            state.update(given)
            image = self._image(session_id, state["current_image_id"]) if state["current_image_id"] else None
            # Drawings and the selection name the image they were checked against, so a
            # later change of image alone leaves them valid.
            if "user_drawings" in given:
                state["user_drawings"] = self._drawings(session_id, image, given["user_drawings"])
            if given.get("pending_selection") is not None:
                selection = _json_object(given["pending_selection"], "pending_selection")
                target = image if selection.get("image_id") in (None, image and image["id"]) \
                    else self._image(session_id, selection["image_id"])
                if target is None:
                    raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, "the session has no images yet")
                region = parse_region(selection, target["rows"], target["columns"])
                state["pending_selection"] = {**region.to_dict(), "image_id": target["id"]}
            stamp, event_id = self.store.canvas.save_state(session_id, state, keys=list(canvas_state))
        return {"session_id": session_id, "synced": True, "updated_at": stamp, "event_id": event_id,
                "state": state, "pending_requests": self._pending_requests(session_id),
                "layers": self.layers(session_id)}

    def _drawings(self, session_id: str, image: dict | None, drawings: Any) -> list[dict]:
        """The user's drawings, each checked like an annotation against its image."""
        if not isinstance(drawings, list):
            raise _bad("user_drawings must be a list")
        if len(drawings) > MAX_USER_DRAWINGS:
            raise _bad(f"user_drawings holds at most {MAX_USER_DRAWINGS} items, got {len(drawings)}")
        out = []
        for index, drawing in enumerate(drawings):
            what = f"user_drawings[{index}]"
            drawing = _json_object(drawing, what)
            target = image if drawing.get("image_id") in (None, image and image["id"]) \
                else self._image(session_id, drawing["image_id"])
            out.append(self._annotation_item(drawing, target, what))
        return out

    @staticmethod
    def _annotation_item(item: dict, image: dict | None, what: str) -> dict:
        """An annotation-like dict with its coordinates validated (and stored in pixels)."""
        _only_keys(item, ANNOTATION_ITEM_KEYS, what)
        if image is None:
            raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, "the session has no images yet")
        annotation_type, coordinates = item.get("type"), item.get("coordinates")
        if "region" in item:  # the spec's suggestion shape: {"region": {"type", "coordinates"}}
            region = _json_object(item["region"], f"{what}.region")
            annotation_type = annotation_type or region.get("type")
            coordinates = {k: v for k, v in region.items() if k != "type"}
        elif annotation_type == "mask" and coordinates is None and isinstance(item.get("mask"), dict):
            # the spec's {"mask": {"data": base64 PNG, "width", "height"}}
            mask = item["mask"]
            if [mask.get("height"), mask.get("width")] != [image["rows"], image["columns"]]:
                raise MedVisionError(ErrorCode.INVALID_REGION,
                                     f"{what}: mask size {mask.get('width')}x{mask.get('height')} does not match"
                                     f" the image ({image['columns']}x{image['rows']})")
            coordinates = {"png_base64": mask.get("data")}
        if not isinstance(annotation_type, str):
            raise _bad(f"{what} needs a 'type'")
        if coordinates is None:
            raise MedVisionError(ErrorCode.INVALID_REGION, f"{what} needs 'coordinates'")
        try:
            stored = annotation_coordinates(annotation_type, coordinates, image["rows"], image["columns"])
        except MedVisionError as exc:
            raise MedVisionError(exc.code, f"{what}: {exc.message}", **exc.details) from exc
        out = {k: v for k, v in item.items() if k not in ("coordinates", "mask", "region")}
        out.update(type=annotation_type, coordinates=stored, image_id=image["id"])
        if "style" in out:
            out["style"] = _style(out["style"], f"{what}.style")
        return out

    # -- push_to_canvas ----------------------------------------------------------------------
    def push(self, session_id: str, action: Any, payload: Any) -> dict:
        """Run one push action; every result has ``session_id``, ``action`` and ``event_id``."""
        self.store.sessions.get(session_id)
        if action not in ACTIONS:
            raise _bad(f"unknown canvas action {action!r}; expected one of {', '.join(ACTIONS)}", action=repr(action))
        payload = _json_object({} if payload is None else payload, "payload")
        result = self.actions[action](session_id, payload)
        return {"session_id": session_id, "action": action, **result}

    def _add_layer(self, session_id: str, payload: dict) -> dict:
        _only_keys(payload, ("type", "data", "name", "image_id", "style", "visible", "source"), "add_layer payload")
        kind = payload.get("type")
        if kind not in LAYER_TYPES:
            raise _bad(f"layer type must be one of {', '.join(LAYER_TYPES)}, not {kind!r}")
        if "data" not in payload:
            raise _bad("add_layer needs 'data'")
        name = _text(payload.get("name"), "name", NAME_MAX_CHARS, default="")
        style = _style(payload.get("style"))
        visible = payload.get("visible", True)
        if not isinstance(visible, bool):
            raise _bad("visible must be true or false")
        source = payload.get("source", "agent")
        if source not in LAYER_SOURCES:
            raise _bad(f"source must be one of {', '.join(LAYER_SOURCES)}, not {source!r}")
        image = self._image(session_id, payload.get("image_id"))
        data = self._layer_data(session_id, image, kind, payload["data"])
        layer_id, event_id = self.store.canvas.add_layer(session_id, image["id"], kind=kind, name=name, data=data,
                                                         style=style, visible=visible, source=source)
        return {"layer_id": layer_id, "image_id": image["id"], "event_id": event_id}

    def _update_layer(self, session_id: str, payload: dict) -> dict:
        _only_keys(payload, ("layer_id", "data", "style", "visible", "name"), "update_layer payload")
        changes = {k: v for k, v in payload.items() if k != "layer_id" and v is not None}
        if not changes:
            raise _bad("update_layer needs at least one of data, style, visible, name")
        if "name" in changes:
            changes["name"] = _text(changes["name"], "name", NAME_MAX_CHARS)
        if "style" in changes:
            changes["style"] = _style(changes["style"])
        if "visible" in changes and not isinstance(changes["visible"], bool):
            raise _bad("visible must be true or false")
        with self.store.db.transaction():
            row = self._layer_row(session_id, payload.get("layer_id"))
            current = _layer(row)
            if "data" in changes:
                image = self.store.images.get(row["image_id"], session_id=session_id)
                changes["data"] = self._layer_data(session_id, image, row["kind"], changes["data"])
            fields = sorted(k for k, v in changes.items() if current[k] != v)
            event_id = None
            if fields:
                event_id = self.store.canvas.update_layer(session_id, row, {k: changes[k] for k in fields})
        return {"layer_id": row["id"], "image_id": row["image_id"], "fields": fields, "event_id": event_id}

    def _remove_layer(self, session_id: str, payload: dict) -> dict:
        _only_keys(payload, ("layer_id",), "remove_layer payload")
        with self.store.db.transaction():
            row = self._layer_row(session_id, payload.get("layer_id"))
            event_id = self.store.canvas.remove_layer(session_id, row)
        return {"layer_id": row["id"], "image_id": row["image_id"], "removed": True, "event_id": event_id}

    def _layer_row(self, session_id: str, layer_id: Any) -> dict:
        if not isinstance(layer_id, str) or not layer_id:
            raise _bad("the payload needs 'layer_id'")
        row = self.store.canvas.layer(session_id, layer_id)
        if row is None:
            raise _bad(f"no canvas layer {layer_id!r} in this session", layer_id=layer_id)
        return row

    def _highlight(self, session_id: str, payload: dict) -> dict:
        _only_keys(payload, ("region", "style", "label", "duration_ms", "image_id"), "highlight payload")
        style = payload.get("style", "outline")
        if style not in HIGHLIGHT_STYLES:
            raise _bad(f"highlight style must be one of {', '.join(HIGHLIGHT_STYLES)}, not {style!r}")
        label = _text(payload.get("label"), "label", NAME_MAX_CHARS)
        duration = payload.get("duration_ms")
        duration = None if duration is None else _milliseconds(duration, "duration_ms", HIGHLIGHT_MS)
        if "region" not in payload:
            raise MedVisionError(ErrorCode.INVALID_REGION, "highlight needs a 'region'")
        image = self._image(session_id, payload.get("image_id"))
        region = parse_region(payload["region"], image["rows"], image["columns"]).to_dict()
        event = {"image_id": image["id"], "region": region, "style": style, "label": label,
                 "duration_ms": duration}
        event_id = self.store.events.append_now(session_id, EventKind.CANVAS_HIGHLIGHT, event)
        return {**event, "event_id": event_id}

    def _animate(self, session_id: str, payload: dict) -> dict:
        _only_keys(payload, ("from", "to", "duration", "image_id"), "animate payload")
        start = None if payload.get("from") is None else _viewport(payload["from"], "from", partial=True)
        if payload.get("to") is None:
            raise _bad("animate needs 'to'")
        end = _viewport(payload["to"], "to", partial=True)
        duration = _milliseconds(payload.get("duration", DEFAULT_ANIMATE_MS), "duration", ANIMATE_MS)
        image = self._image(session_id, payload.get("image_id"))
        event = {"image_id": image["id"], "from": start, "to": end, "duration": duration}
        event_id = self.store.events.append_now(session_id, EventKind.CANVAS_ANIMATE, event)
        return {**event, "event_id": event_id}

    def _add_annotations(self, session_id: str, payload: dict) -> dict:
        """Real annotations (source ai) and suggestions (layer ai_suggestions), all or nothing."""
        from engine.agent.memory import ConversationMemory
        from engine.agent.tools import SUGGESTION_LAYER, SUGGESTION_STYLE

        _only_keys(payload, ("annotations", "related_suggestions", "message", "image_id"), "add_annotations payload")
        groups = {}
        for key in ("annotations", "related_suggestions"):
            items = payload.get(key) or []
            if not isinstance(items, list):
                raise _bad(f"{key} must be a list")
            groups[key] = items
        total = len(groups["annotations"]) + len(groups["related_suggestions"])
        if total == 0:
            raise _bad("add_annotations needs at least one item in annotations or related_suggestions")
        if total > MAX_PUSHED_ANNOTATIONS:
            raise _bad(f"add_annotations takes at most {MAX_PUSHED_ANNOTATIONS} items, got {total}")
        message = payload.get("message")
        if message is not None and (not isinstance(message, str) or not message.strip()
                                    or len(message) > MESSAGE_MAX_CHARS):
            raise _bad(f"message must be a non-empty string of at most {MESSAGE_MAX_CHARS} characters")
        default_image = self._image(session_id, payload.get("image_id"))
        ids: dict[str, list[str]] = {"annotations": [], "related_suggestions": []}
        id_map: dict[str, str] = {}
        turn_id = None
        with self.store.db.transaction():
            for key, items in groups.items():
                suggestion = key == "related_suggestions"
                for index, raw in enumerate(items):
                    what = f"{key}[{index}]"
                    item = _json_object(raw, what)
                    image = default_image if item.get("image_id") in (None, default_image["id"]) \
                        else self._image(session_id, item["image_id"])
                    checked = self._annotation_item(item, image, what)
                    if checked.get("source", "agent") not in ("agent", "ai"):
                        raise _bad(f"{what}: pushed annotations come from the agent (source 'ai')")
                    style = checked.get("style")
                    if suggestion:
                        style = {**SUGGESTION_STYLE, **(style or {})}
                    added = self.services.annotations.add(
                        session_id, image["id"], checked["type"], checked["coordinates"],
                        label=checked.get("label") or "",
                        notes=_notes(checked, what), source="ai", confidence=checked.get("confidence"),
                        layer=SUGGESTION_LAYER if suggestion else None, style=style)
                    ids[key].append(added["annotation_id"])
                    if isinstance(checked.get("id"), str):
                        id_map[checked["id"]] = added["annotation_id"]
            if message is not None:
                turn_id = ConversationMemory(self.store).add(session_id, "agent", TURN_KIND, message,
                                                             image_id=default_image["id"])
                self.store.events.append_now(session_id, EventKind.CANVAS_MESSAGE,
                                             {"turn_id": turn_id, "message": message})
            event_id = self.store.events.append_now(session_id, EventKind.CANVAS_ANNOTATIONS_ADDED, {
                "image_id": default_image["id"], "annotation_ids": ids["annotations"],
                "suggestion_ids": ids["related_suggestions"], "turn_id": turn_id})
        return {"image_id": default_image["id"], "annotation_ids": ids["annotations"],
                "suggestion_ids": ids["related_suggestions"], "id_map": id_map, "turn_id": turn_id,
                "event_id": event_id}

    # -- layer data ---------------------------------------------------------------------------
    def _layer_data(self, session_id: str, image: dict, kind: str, data: Any) -> dict:
        """A layer's data validated against its image and stored in pixels."""
        rows, columns = image["rows"], image["columns"]
        if kind == "bbox":
            items = data if isinstance(data, list) and data and not isinstance(data[0], numbers.Real) else [data]
            boxes = []
            for index, item in enumerate(items):
                what = f"data[{index}]"
                extra: dict[str, Any] = {}
                if isinstance(item, dict):
                    _only_keys(item, ("type", "coordinates", "format", "label", "confidence"), what)
                    if item.get("type", "bbox") != "bbox":
                        raise MedVisionError(ErrorCode.INVALID_REGION, f"{what}: a bbox layer holds bboxes only")
                    extra = {k: item[k] for k in ("label", "confidence") if item.get(k) is not None}
                    item = {k: v for k, v in item.items() if k in ("coordinates", "format")}
                boxes.append({"coordinates": annotation_coordinates("bbox", item, rows, columns), **extra})
            return {"boxes": boxes}
        if kind == "annotation":
            items = data if isinstance(data, list) else [data]
            return {"annotations": [self._annotation_item(_json_object(item, f"data[{i}]"), image, f"data[{i}]")
                                    for i, item in enumerate(items)]}
        if kind == "text":
            data = _json_object(data, "data")
            return annotation_coordinates("text", data, rows, columns)
        if kind == "heatmap":
            return _heatmap(_json_object(data, "data"), rows, columns)
        items = data if isinstance(data, list) else [data]  # segmentation / mask
        if not items:
            raise MedVisionError(ErrorCode.INVALID_REGION, f"a {kind} layer needs at least one mask")
        return {"masks": [self._mask(session_id, image, item, f"data[{i}]") for i, item in enumerate(items)]}

    def _mask(self, session_id: str, image: dict, item: Any, what: str) -> dict:
        """A mask entry: a stored mask id of the image, or an RLE/PNG of the image's size."""
        if isinstance(item, str):
            item = {"mask_id": item}
        item = _json_object(item, what)
        if "mask_id" in item:
            _only_keys(item, ("mask_id", "label"), what)
            row = self.store.masks.get(session_id, str(item["mask_id"]))
            if row["image_id"] != image["id"]:
                raise _bad(f"{what}: mask {row['id']!r} belongs to another image")
            return {"mask_id": row["id"], "label": item.get("label") or row["label"], "area_px": row["area_px"]}
        label = _text(item.get("label"), f"{what}.label", NAME_MAX_CHARS, default="")
        spec = {"coordinates": item} if "counts" in item else \
            {k: v for k, v in item.items() if k in ("coordinates", "rle", "png_base64")}
        try:
            region = parse_region({**spec, "type": "mask"}, image["rows"], image["columns"])
        except MedVisionError as exc:
            raise MedVisionError(exc.code, f"{what}: {exc.message}", **exc.details) from exc
        return {"rle": encode_rle(region.mask), "label": label, "area_px": int(region.mask.sum())}


def _heatmap(data: dict, rows: int, columns: int) -> dict:
    """A coarse grid of values over a bbox of the image (the whole image by default)."""
    _only_keys(data, ("values", "region", "min", "max"), "heatmap data")
    values = data.get("values")
    if not isinstance(values, list) or not values or not all(isinstance(r, list) and r for r in values):
        raise _bad("heatmap values must be a non-empty 2-D list of numbers")
    width = len(values[0])
    if any(len(r) != width for r in values):
        raise _bad("heatmap values must be rectangular (every row the same length)")
    if len(values) * width > MAX_HEATMAP_CELLS:
        raise _bad(f"heatmap grids hold at most {MAX_HEATMAP_CELLS} cells")
    grid = [[_number(v, "heatmap value") for v in r] for r in values]
    region = data.get("region")
    if region is None:
        box = [0.0, 0.0, float(columns), float(rows)]
    else:
        parsed = parse_region(_json_object(region, "heatmap region"), rows, columns)
        if parsed.type != "bbox":
            raise MedVisionError(ErrorCode.INVALID_REGION, "a heatmap covers a bbox region")
        box = list(parsed.coordinates)
    flat = [v for r in grid for v in r]
    low = _number(data.get("min", min(flat)), "heatmap min")
    high = _number(data.get("max", max(flat)), "heatmap max")
    if high < low:
        raise _bad("heatmap max must not be below min")
    return {"values": grid, "region": {"type": "bbox", "coordinates": box}, "min": low, "max": high}


def _notes(item: dict, what: str) -> str | None:
    """An annotation's notes: its description (or note), then the finding it names."""
    parts = []
    for key in ("description", "note", "notes"):
        text = _text(item.get(key), f"{what}.{key}", MESSAGE_MAX_CHARS)
        if text:
            parts.append(text)
    finding = _text(item.get("finding"), f"{what}.finding", NAME_MAX_CHARS)
    if finding:
        parts.append(f"finding: {finding}")
    return "\n".join(parts) or None
