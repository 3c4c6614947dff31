"""The canvas tools over a real engine: sync_canvas_state, push_to_canvas, get_canvas_state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.api import Engine
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.masks import encode_rle

# RG1_UNCR.dcm: 1955 rows x 1841 columns.
ROWS, COLUMNS = 1955, 1841


@pytest.fixture
def canvas(engine: Engine, rg1_path: Path) -> tuple[Engine, str, str]:
    """A session holding the CR chest radiograph: (engine, session_id, image_id)."""
    session_id = engine.create_study_session()["session_id"]
    image_id = engine.add_image_to_session(session_id, rg1_path, auto_analyze=False)["image_id"]
    return engine, session_id, image_id


def _events(engine: Engine, session_id: str, since: int) -> list[dict]:
    return engine.store.events_since(since, session_id)


def _square_rle(x1: int, y1: int, x2: int, y2: int, rows: int = ROWS, columns: int = COLUMNS) -> dict:
    mask = np.zeros((rows, columns), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return encode_rle(mask)


def _code(call) -> ErrorCode:  # noqa: ANN001 - a zero-argument callable
    with pytest.raises(MedVisionError) as err:
        call()
    return err.value.code


def test_add_update_remove_layer_persist_and_announce(canvas: tuple[Engine, str, str]) -> None:
    engine, session_id, image_id = canvas
    since = engine.store.last_event_id()
    added = engine.push_to_canvas(session_id, "add_layer", {
        "type": "bbox", "name": "nodules", "data": [[100, 200, 300, 400], {"coordinates": [0.5, 0.5, 0.6, 0.6],
                                                                          "format": "relative", "label": "b"}],
        "style": {"color": "#FF6B6B"}})
    assert added["session_id"] == session_id and added["action"] == "add_layer" and added["image_id"] == image_id
    [event] = _events(engine, session_id, since)
    assert event["kind"] == "canvas.layer_added" and event["id"] == added["event_id"]
    assert event["payload"] == {"layer_id": added["layer_id"], "image_id": image_id, "type": "bbox",
                                "name": "nodules"}
    [layer] = engine.get_canvas_state(session_id)["layers"]
    assert layer["layer_id"] == added["layer_id"] and layer["visible"] is True and layer["source"] == "agent"
    assert layer["data"]["boxes"][0] == {"coordinates": [100.0, 200.0, 300.0, 400.0]}
    assert layer["data"]["boxes"][1]["label"] == "b"  # relative box converted to pixels
    assert layer["data"]["boxes"][1]["coordinates"][0] == pytest.approx(0.5 * COLUMNS - 0.5)

    since = engine.store.last_event_id()
    updated = engine.push_to_canvas(session_id, "update_layer", {
        "layer_id": added["layer_id"], "visible": False, "name": "nodules", "style": {"color": "#00FF00"}})
    assert updated["fields"] == ["style", "visible"]  # the unchanged name is not reported
    [event] = _events(engine, session_id, since)
    assert event["kind"] == "canvas.layer_updated" and event["payload"]["fields"] == ["style", "visible"]
    [layer] = engine.get_canvas_state(session_id)["layers"]
    assert layer["visible"] is False and layer["style"] == {"color": "#00FF00"}

    since = engine.store.last_event_id()
    removed = engine.push_to_canvas(session_id, "remove_layer", {"layer_id": added["layer_id"]})
    assert removed["removed"] is True
    assert [e["kind"] for e in _events(engine, session_id, since)] == ["canvas.layer_removed"]
    assert engine.get_canvas_state(session_id)["layers"] == []


def test_layer_types_validate_their_data(canvas: tuple[Engine, str, str]) -> None:
    engine, session_id, image_id = canvas
    mask_id = engine.store.add_masks(session_id, image_id, [
        {"label": "left_lung", "rle": _square_rle(10, 10, 50, 50), "area_px": 1600}], source="organ_seg")[0]
    layers = {
        "segmentation": [mask_id, {"rle": _square_rle(100, 100, 120, 130), "label": "lesion"}],
        "mask": _square_rle(0, 0, 4, 4),
        "annotation": {"type": "polygon", "coordinates": [[10, 10], [60, 10], [30, 50]], "label": "p"},
        "text": {"position": [20, 30], "text": "look here"},
        "heatmap": {"values": [[0.0, 0.5], [1.0, 0.25]], "region": {"type": "bbox", "coordinates": [0, 0, 200, 200]}},
    }
    for layer_type, data in layers.items():
        engine.push_to_canvas(session_id, "add_layer", {"type": layer_type, "data": data, "image_id": image_id})
    stored = {layer["type"]: layer["data"] for layer in engine.get_canvas_state(session_id)["layers"]}
    assert stored["segmentation"]["masks"][0] == {"mask_id": mask_id, "label": "left_lung", "area_px": 1600}
    assert stored["segmentation"]["masks"][1]["area_px"] == 20 * 30
    assert stored["mask"]["masks"][0]["rle"]["size"] == [ROWS, COLUMNS]
    assert stored["annotation"]["annotations"][0]["coordinates"] == [[10.0, 10.0], [60.0, 10.0], [30.0, 50.0]]
    assert stored["text"] == {"position": [20.0, 30.0], "text": "look here"}
    assert stored["heatmap"]["min"] == 0.0 and stored["heatmap"]["max"] == 1.0

    def add(layer_type: str, data: object) -> ErrorCode:
        return _code(lambda: engine.push_to_canvas(session_id, "add_layer", {"type": layer_type, "data": data}))

    assert add("bbox", [0, 0, COLUMNS + 50, 10]) == ErrorCode.INVALID_REGION  # leaves the image
    assert add("bbox", [300, 10, 100, 20]) == ErrorCode.INVALID_REGION  # corners in the wrong order
    assert add("mask", _square_rle(0, 0, 4, 4, rows=64, columns=64)) == ErrorCode.INVALID_REGION  # wrong size
    assert add("segmentation", "nosuchmask") == ErrorCode.INVALID_ARGUMENT
    assert add("annotation", {"type": "point", "coordinates": [5, ROWS + 10]}) == ErrorCode.INVALID_REGION
    assert add("heatmap", {"values": [[1.0, 2.0], [3.0]]}) == ErrorCode.INVALID_ARGUMENT
    assert add("volume", {}) == ErrorCode.INVALID_ARGUMENT
    assert len(engine.get_canvas_state(session_id)["layers"]) == len(layers)  # nothing stored on error


def test_update_data_revalidates_and_unknown_layer_fails(canvas: tuple[Engine, str, str]) -> None:
    engine, session_id, _ = canvas
    layer_id = engine.push_to_canvas(session_id, "add_layer", {"type": "bbox", "data": [1, 1, 9, 9]})["layer_id"]
    assert _code(lambda: engine.push_to_canvas(session_id, "update_layer", {
        "layer_id": layer_id, "data": [1, 1, 9, ROWS + 5]})) == ErrorCode.INVALID_REGION
    engine.push_to_canvas(session_id, "update_layer", {"layer_id": layer_id, "data": [2, 2, 8, 8]})
    [layer] = engine.get_canvas_state(session_id)["layers"]
    assert layer["data"]["boxes"] == [{"coordinates": [2.0, 2.0, 8.0, 8.0]}]
    for action in ("update_layer", "remove_layer"):
        payload = {"layer_id": "nosuchlayer"} | ({"visible": False} if action == "update_layer" else {})
        with pytest.raises(MedVisionError) as err:
            engine.push_to_canvas(session_id, action, payload)
        assert err.value.code == ErrorCode.INVALID_ARGUMENT and "nosuchlayer" in err.value.message
    other = engine.create_study_session()["session_id"]  # another session's layer is not found either
    assert _code(lambda: engine.push_to_canvas(other, "remove_layer", {"layer_id": layer_id})) \
        == ErrorCode.INVALID_ARGUMENT


def test_highlight_and_animate_are_transient_events(canvas: tuple[Engine, str, str]) -> None:
    engine, session_id, image_id = canvas
    since = engine.store.last_event_id()
    highlight = engine.push_to_canvas(session_id, "highlight", {
        "region": {"type": "bbox", "coordinates": [100, 200, 300, 400]}, "style": "pulse", "label": "可疑區域"})
    animate = engine.push_to_canvas(session_id, "animate", {
        "from": {"zoom": 1, "pan": {"x": 0, "y": 0}}, "to": {"zoom": 2.5, "pan": {"x": 100, "y": 50}},
        "duration": 500})
    first, second = _events(engine, session_id, since)
    assert (first["kind"], first["id"]) == ("canvas.highlight", highlight["event_id"])
    assert first["payload"]["region"]["coordinates"] == [100.0, 200.0, 300.0, 400.0]
    assert first["payload"]["style"] == "pulse" and first["payload"]["label"] == "可疑區域"
    assert first["payload"]["image_id"] == image_id
    assert (second["kind"], second["id"]) == ("canvas.animate", animate["event_id"])
    assert second["payload"]["to"] == {"zoom": 2.5, "pan": {"x": 100.0, "y": 50.0}}
    assert second["payload"]["duration"] == 500
    assert engine.get_canvas_state(session_id)["layers"] == []  # no layer rows

    def push(action: str, payload: dict) -> ErrorCode:
        return _code(lambda: engine.push_to_canvas(session_id, action, payload))

    assert push("highlight", {"region": {"type": "bbox", "coordinates": [0, 0, 10, ROWS + 40]},
                              "style": "glow"}) == ErrorCode.INVALID_REGION
    assert push("highlight", {"region": {"type": "circle", "coordinates": [1, 2]}}) == ErrorCode.INVALID_REGION
    assert push("highlight", {"region": {"type": "point", "coordinates": [5, 5]},
                              "style": "blink"}) == ErrorCode.INVALID_ARGUMENT
    assert push("animate", {"to": {"zoom": 2}, "duration": 20_000}) == ErrorCode.INVALID_ARGUMENT
    assert push("animate", {"to": {"zoom": 0}}) == ErrorCode.INVALID_ARGUMENT
    assert push("animate", {"to": {"rotate": 90}}) == ErrorCode.INVALID_ARGUMENT


def test_add_annotations_creates_ai_annotations_suggestions_and_message(canvas: tuple[Engine, str, str]) -> None:
    from engine.agent.tools import SUGGESTION_LAYER

    engine, session_id, image_id = canvas
    since = engine.store.last_event_id()
    result = engine.push_to_canvas(session_id, "add_annotations", {
        "annotations": [
            {"id": "agent-finding-001", "type": "bbox", "source": "agent", "coordinates": [120, 80, 200, 160],
             "label": "右肺結節", "description": "約 1.2cm 的實質性結節", "confidence": 0.92, "finding": "nodule",
             "style": {"color": "#FF6B6B", "opacity": 0.8, "strokeWidth": 2, "fill": False},
             "interactive": True},
            {"type": "mask", "coordinates": _square_rle(300, 300, 340, 330), "label": "outline"},
        ],
        "related_suggestions": [
            {"region": {"type": "bbox", "coordinates": [300, 200, 380, 280]}, "note": "also check this area",
             "style": {"color": "#FFE66D"}},
        ],
        "message": "Two findings pushed to the canvas.",
    })
    assert result["action"] == "add_annotations" and len(result["annotation_ids"]) == 2
    assert result["id_map"] == {"agent-finding-001": result["annotation_ids"][0]}
    listed = {a["annotation_id"]: a for a in engine.get_annotations(session_id, image_id, "ai")["annotations"]}
    assert set(listed) == {*result["annotation_ids"], *result["suggestion_ids"]}
    finding = listed[result["annotation_ids"][0]]
    assert finding["layer"] is None and finding["confidence"] == pytest.approx(0.92)
    assert finding["label"] == "右肺結節" and "finding: nodule" in finding["notes"]
    [suggestion_id] = result["suggestion_ids"]
    suggestion = listed[suggestion_id]
    assert suggestion["layer"] == SUGGESTION_LAYER and suggestion["notes"] == "also check this area"
    assert suggestion["style"]["color"] == "#FFE66D" and suggestion["style"]["lineDash"] == [5, 5]
    kinds = [e["kind"] for e in _events(engine, session_id, since)]
    assert kinds.count("annotation.created") == 3
    assert kinds[-3:] == ["agent.turn", "canvas.message", "canvas.annotations_added"]
    assert _events(engine, session_id, since)[-1]["id"] == result["event_id"]
    [turn] = engine.store.list_agent_turns(session_id)
    assert (turn["role"], turn["kind"], turn["content"]) == ("agent", "canvas_message",
                                                             "Two findings pushed to the canvas.")


def test_a_bad_item_in_add_annotations_leaves_nothing(canvas: tuple[Engine, str, str]) -> None:
    engine, session_id, _ = canvas
    since = engine.store.last_event_id()
    good = {"type": "bbox", "coordinates": [10, 10, 50, 50], "label": "ok"}
    for bad, code in (
        ({"type": "bbox", "coordinates": [10, 10, COLUMNS + 100, 50]}, ErrorCode.INVALID_REGION),
        ({"type": "bbox", "coordinates": [10, 10, 50, 50], "confidence": 7}, ErrorCode.INVALID_ARGUMENT),
        ({"type": "hexagon", "coordinates": [1, 2]}, ErrorCode.INVALID_ARGUMENT),
        ({"type": "bbox", "coordinates": [1, 1, 5, 5], "colour": "red"}, ErrorCode.INVALID_ARGUMENT),
    ):
        assert _code(lambda bad=bad: engine.push_to_canvas(session_id, "add_annotations", {
            "annotations": [good, good], "related_suggestions": [bad], "message": "hi"})) == code
    assert engine.get_annotations(session_id)["count"] == 0
    assert engine.store.list_agent_turns(session_id) == []
    assert _events(engine, session_id, since) == []


def test_sync_canvas_state_round_trip_and_pending_requests(canvas: tuple[Engine, str, str]) -> None:
    engine, session_id, image_id = canvas
    defaults = engine.get_canvas_state(session_id)
    assert defaults["updated_at"] is None and defaults["state"]["current_image_id"] == image_id
    assert defaults["state"]["active_tool"] == "select"
    layer_id = engine.push_to_canvas(session_id, "add_layer", {"type": "bbox", "data": [1, 1, 9, 9]})["layer_id"]
    request = engine.request_user_input(session_id, "confirm", "Analyse this region?")
    since = engine.store.last_event_id()
    synced = engine.sync_canvas_state(session_id, {
        "viewport": {"zoom": 1.5, "pan": {"x": 10, "y": -20}, "window": {"center": 2000, "width": 4000}},
        "active_tool": "polygon",
        "current_image_id": image_id,
        "user_drawings": [{"id": "u1", "type": "point", "coordinates": [0.5, 0.5], "label": "here"},
                          {"type": "measurement", "coordinates": {"kind": "distance", "points": [[0, 0], [3, 4]]}}],
        "pending_selection": {"type": "bbox", "coordinates": [0.1, 0.1, 0.3, 0.5], "format": "relative"},
    })
    assert synced["synced"] is True and synced["session_id"] == session_id
    assert [r["request_id"] for r in synced["pending_requests"]] == [request["request_id"]]
    assert synced["pending_requests"][0]["prompt"] == "Analyse this region?"
    assert [layer["layer_id"] for layer in synced["layers"]] == [layer_id]
    [event] = _events(engine, session_id, since)
    assert event["kind"] == "canvas.state_synced" and event["payload"]["active_tool"] == "polygon"
    stored = engine.get_canvas_state(session_id)
    assert stored["updated_at"] == synced["updated_at"] and stored["state"] == synced["state"]
    state = stored["state"]
    assert state["viewport"]["zoom"] == 1.5 and state["user_drawings"][0]["coordinates"] == [0.5, 0.5]
    assert state["user_drawings"][1]["image_id"] == image_id
    assert state["pending_selection"]["coordinates"][0] == pytest.approx(0.1 * COLUMNS - 0.5)

    partial = engine.sync_canvas_state(session_id, {"active_tool": "pan", "pending_selection": None})
    assert partial["state"]["active_tool"] == "pan" and partial["state"]["pending_selection"] is None
    assert partial["state"]["viewport"]["zoom"] == 1.5  # keys left out keep their value
    engine.answer_user_input(request["request_id"], True)
    assert engine.sync_canvas_state(session_id, {})["pending_requests"] == []


def test_sync_canvas_state_rejects_bad_input(canvas: tuple[Engine, str, str]) -> None:
    engine, session_id, _ = canvas

    def sync(state: object) -> MedVisionError:
        with pytest.raises(MedVisionError) as err:
            engine.sync_canvas_state(session_id, state)
        return err.value

    unknown = sync({"viewport": {"zoom": 1, "pan": {"x": 0, "y": 0}}, "layers": []})
    assert unknown.code == ErrorCode.INVALID_ARGUMENT and "'layers'" in unknown.message
    assert sync({"viewport": {"zoom": -1, "pan": {"x": 0, "y": 0}}}).code == ErrorCode.INVALID_ARGUMENT
    assert sync({"viewport": {"zoom": 1}}).code == ErrorCode.INVALID_ARGUMENT  # pan missing
    assert sync({"active_tool": "lasso"}).code == ErrorCode.INVALID_ARGUMENT
    assert sync({"current_image_id": "nosuchimage"}).code == ErrorCode.IMAGE_NOT_FOUND
    assert sync({"user_drawings": [{"type": "bbox", "coordinates": [0, 0, 10, ROWS + 9]}]}).code \
        == ErrorCode.INVALID_REGION
    assert sync({"pending_selection": {"type": "polygon", "coordinates": [[0, 0], [1, 1], [2, 2]]}}).code \
        == ErrorCode.INVALID_REGION  # collinear
    assert sync(["not", "a", "dict"]).code == ErrorCode.INVALID_ARGUMENT
    assert engine.get_canvas_state(session_id)["updated_at"] is None  # nothing stored


def test_unknown_action_and_session(canvas: tuple[Engine, str, str]) -> None:
    engine, session_id, _ = canvas
    with pytest.raises(MedVisionError) as err:
        engine.push_to_canvas(session_id, "explode", {})
    assert err.value.code == ErrorCode.INVALID_ARGUMENT and "add_annotations" in err.value.message
    for call in (lambda: engine.push_to_canvas("nosession", "highlight", {}),
                 lambda: engine.sync_canvas_state("nosession", {}),
                 lambda: engine.get_canvas_state("nosession")):
        assert _code(call) == ErrorCode.SESSION_NOT_FOUND


def test_layers_and_state_go_with_the_session(canvas: tuple[Engine, str, str]) -> None:
    engine, session_id, _ = canvas
    engine.push_to_canvas(session_id, "add_layer", {"type": "text", "data": {"position": [5, 5], "text": "x"}})
    engine.sync_canvas_state(session_id, {"active_tool": "zoom"})
    engine.delete_session(session_id)
    for table in ("canvas_layers", "canvas_state"):
        rows = engine.store.db.query(f"SELECT count(*) AS n FROM {table} WHERE session_id = ?", (session_id,))
        assert rows[0]["n"] == 0


def test_each_action_has_one_handler_and_odd_actions_are_refused(canvas: tuple[Engine, str, str]) -> None:
    from engine.canvas import ACTIONS, Canvas

    engine, session_id, _ = canvas
    handlers = Canvas(engine.services).actions
    assert tuple(handlers) == ACTIONS and all(callable(h) for h in handlers.values())
    for action in (["add_layer"], {"a": 1}, None, "_add_layer", "__init__"):
        assert _code(lambda action=action: engine.push_to_canvas(session_id, action, {})) \
            == ErrorCode.INVALID_ARGUMENT


def test_canvas_events_are_catalogued_kinds(canvas: tuple[Engine, str, str]) -> None:
    from engine.events import EventKind

    engine, session_id, _ = canvas
    since = engine.store.last_event_id()
    layer_id = engine.push_to_canvas(session_id, "add_layer", {"type": "bbox", "data": [1, 1, 9, 9]})["layer_id"]
    engine.push_to_canvas(session_id, "update_layer", {"layer_id": layer_id, "visible": False})
    engine.push_to_canvas(session_id, "remove_layer", {"layer_id": layer_id})
    engine.sync_canvas_state(session_id, {"active_tool": "pan"})
    engine.push_to_canvas(session_id, "highlight", {"region": {"type": "point", "coordinates": [5, 5]}})
    engine.push_to_canvas(session_id, "animate", {"to": {"zoom": 2}})
    kinds = [EventKind(e["kind"]) for e in _events(engine, session_id, since)]
    assert kinds == [EventKind.CANVAS_LAYER_ADDED, EventKind.CANVAS_LAYER_UPDATED, EventKind.CANVAS_LAYER_REMOVED,
                     EventKind.CANVAS_STATE_SYNCED, EventKind.CANVAS_HIGHLIGHT, EventKind.CANVAS_ANIMATE]
