"""The agent's trace: schema-valid export, events in the store's outbox, error attribution."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from engine.agent.attribution import attribute_errors
from engine.agent.trace import EVENT_FIELDS, validate_trace
from engine.api import Engine
from engine.config import Settings
from engine.errors import MedVisionError


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, model_pack: Path):
    home = tmp_path_factory.mktemp("trace-home")
    with Engine(Settings(home=home, model_pack=model_pack, threads=2, use_keyring=False)) as instance:
        yield instance


@pytest.fixture(scope="module")
def run(engine: Engine, rg1_path: Path) -> dict:
    session = engine.create_study_session("trace")["session_id"]
    engine.add_image_to_session(session, rg1_path, auto_analyze=False)
    mark = engine.store.last_event_id()
    result = engine.invoke_medical_agent(session, "Diagnose", context={"use_llm": False})
    return {"result": result, "mark": mark, "trace": engine.export_trace(result["run_id"])}


def test_the_exported_trace_follows_its_schema_and_has_every_field(run: dict) -> None:
    trace = run["trace"]
    validate_trace(trace)
    assert trace["status"] == "completed" and trace["pipeline"]["id"] == "cxr"
    assert [e["seq"] for e in trace["events"]] == list(range(1, len(trace["events"]) + 1))
    for event in trace["events"]:
        assert set(event) == set(EVENT_FIELDS)
    calls = [e for e in trace["events"] if e["kind"] == "tool_call" and e["status"] != "skipped"]
    for call in calls:
        assert call["agent"].endswith("Agent") and call["role"] and call["tool_version"] == "1.0.0"
        assert call["latency_ms"] is not None and call["status"] in ("ok", "low_confidence", "failed")
        for model in call["models"]:
            assert len(model["sha256"]) == 64 and model["trained"] is False
    classify = next(c for c in calls if c["tool_id"] == "classify")
    assert classify["models"][0]["id"].startswith("densenet121") and classify["arguments"] == {"threshold": 0.5}
    assert classify["confidence"] is not None and classify["output"]["analysis_id"]
    region = next(c for c in calls if c["tool_id"] == "region_analysis")
    assert classify["seq"] in region["uses"] and region["item"]  # data lineage
    steps = {s["step_id"]: s for s in trace["steps"]}
    assert list(steps) == ["orchestrator", "image_analysis", "specialist", "follow_up", "report"]
    assert all(s["latency_ms"] is not None for s in steps.values())  # per-step latency
    assert trace["totals"]["tool_calls"] == len([e for e in trace["events"] if e["kind"] == "tool_call"])


def test_outputs_carry_ids_never_pixels(run: dict) -> None:
    text = json.dumps(run["trace"])
    assert '"rle"' not in text and "mask_rle" not in text
    segment = next(e for e in run["trace"]["events"] if e["tool_id"] == "segment_organs"
                   and e["kind"] == "tool_call")
    assert all(o["mask_id"] for o in segment["output"]["organs"])
    assert len(text) < 400_000


def test_every_trace_event_is_in_the_store_and_its_outbox(engine: Engine, run: dict) -> None:
    trace = run["trace"]
    stored = engine.store.list_agent_trace(trace["run_id"])
    assert stored == trace["events"]
    outbox = [e for e in engine.store.events_since(run["mark"], trace["session_id"], limit=5000)
              if e["kind"] == "agent.trace"]
    assert [e["payload"]["seq"] for e in outbox] == [e["seq"] for e in trace["events"]]
    assert all(e["payload"]["run_id"] == trace["run_id"] for e in outbox)
    kinds = {e["kind"] for e in engine.store.events_since(run["mark"], trace["session_id"], limit=5000)}
    assert {"agent.run_created", "agent.run_updated", "agent.turn", "analysis.created"} <= kinds


def test_the_trace_can_be_written_to_a_file(engine: Engine, run: dict, tmp_path: Path) -> None:
    target = tmp_path / "out" / "trace.json"
    written = engine.export_trace(run["result"]["run_id"], target)
    assert written["path"] == str(target)
    assert json.loads(target.read_text())["run_id"] == run["result"]["run_id"]
    with pytest.raises(MedVisionError):
        engine.export_trace("no-such-run")


def test_attribution_flags_low_confidence_use_and_a_contradiction_in_a_real_run(run: dict) -> None:
    issues = run["trace"]["attribution"]["issues"]
    kinds = {i["kind"] for i in issues}
    assert "low_confidence_used" in kinds  # untrained classifier output used by the specialist
    assert run["trace"]["attribution"]["clean"] is False
    used = next(i for i in issues if i["kind"] == "low_confidence_used")
    assert used["seq"] > used["source_seq"]
    classify = next(e for e in run["trace"]["events"] if e["tool_id"] == "classify" and e["kind"] == "tool_call")
    measured = next(e for e in run["trace"]["events"] if e["tool_id"] == "measurements" and e["kind"] == "tool_call")
    # The untrained organ masks give no ratio on some machines (an empty heart or lung mask): then nothing to contradict.
    ctr = next((m["value"] for m in measured["output"]["measurements"] if m["name"] == "cardiothoracic_ratio"), None)
    contradictions = [i for i in issues if i["kind"] == "contradiction" and "cardiothoracic" in i["message"]]
    assert bool(contradictions) == (ctr is not None and ("Cardiomegaly" in classify["output"]["positive"]) != (ctr >= 0.5))


def test_attribution_flags_a_constructed_plan_mismatch(run: dict) -> None:
    trace = copy.deepcopy(run["trace"])
    assert not any(i["kind"] == "plan_mismatch" for i in trace["attribution"]["issues"])
    # The plan promised a similar-case search in the specialist step and never planned classify.
    trace["plan"].append({"step_id": "specialist", "role": "specialist", "tool": "similar_cases",
                          "conditional": False, "foreach": None, "required": False})
    trace["plan"] = [p for p in trace["plan"] if p["tool"] != "classify"]
    issues = [i for i in attribute_errors(trace)["issues"] if i["kind"] == "plan_mismatch"]
    messages = " | ".join(i["message"] for i in issues)
    assert len(issues) == 2, messages
    assert any(i["tool_id"] == "similar_cases" and "not called" in i["message"] for i in issues)
    assert any(i["tool_id"] == "classify" and "not in the plan" in i["message"] for i in issues)


def test_attribution_flags_constructed_contradictions_and_failures() -> None:
    events = [
        {"seq": 1, "kind": "tool_call", "step_id": "image_analysis", "tool_id": "classify", "status": "ok",
         "output": {"positive": ["Cardiomegaly", "Effusion"], "threshold": 0.5}, "uses": []},
        {"seq": 2, "kind": "tool_call", "step_id": "specialist", "tool_id": "measurements", "status": "ok",
         "output": {"measurements": [{"name": "cardiothoracic_ratio", "value": 0.42, "unit": "ratio"}]},
         "uses": [1]},
        {"seq": 3, "kind": "tool_call", "step_id": "specialist", "tool_id": "region_analysis", "status": "ok",
         "output": {"label": "Effusion", "region_probability": 0.2, "location": "left lung, lower zone"},
         "uses": [1]},
        {"seq": 4, "kind": "tool_call", "step_id": "report", "tool_id": "write_narrative", "status": "failed",
         "error_type": "INFERENCE_ERROR", "error": "decode failed", "uses": []},
    ]
    found = attribute_errors({"plan": [], "events": events, "status": "completed"})
    kinds = [i["kind"] for i in found["issues"]]
    assert kinds.count("contradiction") == 2 and "tool_failed" in kinds
    failed = next(i for i in found["issues"] if i["kind"] == "tool_failed")
    assert failed["seq"] == 4 and "INFERENCE_ERROR" in failed["message"]
