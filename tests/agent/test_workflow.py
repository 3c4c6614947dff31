"""The agent's workflow on the real engine: YAML validation, conditions, retries and
fallbacks, the quality gate, step_by_step resume, interactive need_input, faults."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.agent.conditions import parse_condition
from engine.agent.management import region_for
from engine.agent.pipeline import load_pipelines, parse_pipeline, select_pipeline
from engine.agent.tools import default_registry
from engine.api import Engine
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError

#: Mechanics tests run without the language model (it is exercised in test_agent_api):
#: pipeline order and the template narrative, so they are fast and deterministic.
NO_LLM = {"use_llm": False}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, model_pack: Path):
    home = tmp_path_factory.mktemp("agent-home")
    with Engine(Settings(home=home, model_pack=model_pack, threads=2, use_keyring=False)) as instance:
        yield instance


@pytest.fixture(scope="module")
def chest(engine: Engine, rg1_path: Path) -> tuple[str, str]:
    """A session with RG1, segmented once (later runs reuse the stored organ masks)."""
    session = engine.create_study_session("agent")["session_id"]
    image = engine.add_image_to_session(session, rg1_path, auto_analyze=False)
    return session, image["image_id"]


@pytest.fixture(scope="module")
def completed(engine: Engine, chest: tuple[str, str]) -> dict:
    session, _ = chest
    return engine.invoke_medical_agent(session, "Diagnose this chest film", context=NO_LLM, mode="auto")


def _pipeline(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


BASE = """
format: 1
id: test
version: "1.0.0"
image_types: [CXR]
steps:
  - id: orchestrator
    role: orchestrator
    tools: [image_info]
  - id: image_analysis
    role: image_analysis
    tools:
      - tool: classify
        args: {threshold: 0.5}
"""


# -- pipeline validation --------------------------------------------------------------------
@pytest.mark.parametrize(("change", "expected"), [
    (("- tool: classify", "- tool: classify\n        retry: 2"), "steps[1].tools[0].retry: unknown key"),
    (("- tool: classify", "- tool: clasify"), "unknown tool 'clasify'"),
    (("tools: [image_info]", "tools: [classify]"), "steps[0].tools[0].tool: tool 'classify' serves image_analysis"),
    (("threshold: 0.5", "threshold: 1.5"), "steps[1].tools[0].args.threshold"),
    (("threshold: 0.5", "thresold: 0.5"), "args.thresold: unknown argument"),
    (("role: image_analysis", "role: imaging"), "steps[1].role"),
    (("role: image_analysis", "role: image_analysis\n    when: \"__import__('os')\""), "not allowed"),
    (("role: image_analysis", "role: image_analysis\n    when: \"patient.weight > 3 and pixel.x\""),
     "unknown fact 'pixel'"),
    (("id: image_analysis", "id: orchestrator"), "duplicate step id 'orchestrator'"),
    (("version: \"1.0.0\"", "version: 1"), "version"),
])
def test_a_bad_pipeline_is_refused_naming_the_key(change: tuple[str, str], expected: str) -> None:
    text = _pipeline(BASE).replace(*change)
    with pytest.raises(MedVisionError) as err:
        parse_pipeline(text, "bad.yaml", default_registry())
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert "bad.yaml" in err.value.message and expected in err.value.message


def test_the_packaged_pipelines_validate_and_serve_every_image_type() -> None:
    registry = default_registry()
    pipelines = {p.id: p for p in load_pipelines(registry)}
    assert {"cxr", "default"} <= set(pipelines)
    assert [s.role for s in pipelines["cxr"].steps] == [
        "orchestrator", "image_analysis", "specialist", "follow_up", "report"]
    assert select_pipeline(registry, "CXR").id == "cxr"
    assert select_pipeline(registry, "KUB").id == "default"


def test_a_user_pipeline_directory_overrides_the_packaged_one(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site.yaml").write_text(_pipeline(BASE).replace("id: test", "id: cxr"))
    monkeypatch.setenv("MEDVISION_PIPELINES", str(tmp_path))
    chosen = select_pipeline(default_registry(), "CXR")
    assert chosen.id == "cxr" and "user" in chosen.source and len(chosen.steps) == 2


def test_conditions_are_evaluated_safely_over_facts() -> None:
    facts = {"image": {"type": "CXR", "view": "PA"}, "findings": {"present": ["Effusion"], "count": 1},
             "patient": {"age": None}}
    assert parse_condition("image.type == 'cxr' and findings.count > 0")(facts)
    assert parse_condition("'effusion' in findings.present")(facts)
    assert not parse_condition("patient.age >= 35")(facts)  # unknown age: false, not an error
    assert parse_condition("patient.age == null or patient.age >= 35")(facts)
    assert not parse_condition("image.missing.deeper == 3")(facts)
    for hostile in ("open('x')", "image.__class__", "[x for x in findings]", "findings.count + 1",
                    "lambda: 1", "image['type']"):
        with pytest.raises(MedVisionError):
            parse_condition(hostile)


# -- runs on the real engine -------------------------------------------------------------------
def test_the_quality_gate_flags_untrained_models_and_says_so_everywhere(engine: Engine, completed: dict) -> None:
    assert completed["status"] == "completed"
    codes = [f["code"] for f in completed["flags"]]
    assert "untrained_models" in codes  # the dev pack: flagged, never silent
    report = completed["result"]["report"]
    assert report["model_trained"] is False
    assert any(w["code"] == "untrained_models" and w["source"] == "quality_gate:flag"
               for w in report["quality"]["warnings"])
    assert "untrained" in report["disclaimer"].lower() or "development" in report["disclaimer"].lower()
    trace = engine.export_trace(completed["run_id"])
    gate = [e for e in trace["events"] if e["kind"] == "gate"]
    assert len(gate) == 1 and gate[0]["status"] == "low_confidence" and gate[0]["step_id"] == "image_analysis"
    # Every model output of untrained weights is low_confidence in the trace.
    classify = next(e for e in trace["events"] if e["kind"] == "tool_call" and e["tool_id"] == "classify")
    assert classify["status"] == "low_confidence" and "untrained" in classify["reasoning"]


def test_a_full_run_calls_the_pipeline_in_order_and_per_finding(engine: Engine, completed: dict) -> None:
    calls = [a.split("(")[0] for a in completed["actions_taken"]]
    assert calls[:5] == ["image_info", "quality_check", "classify", "segment_organs", "similar_cases"]
    assert calls[-4:] == ["management_rules", "build_report", "write_narrative", "suggest_regions"]
    findings = [a for a in completed["actions_taken"] if a.startswith("region_analysis")]
    report = completed["result"]["report"]
    # Which findings the untrained classifier calls present differs from machine to machine:
    # one region analysis per present finding, most probable first, bounded by limits.max_candidates.
    present = sorted((f for f in report["findings"] if f["present"]), key=lambda f: (-f["probability"], f["label"]))
    candidates = [f["label"] for f in present][:3]
    assert findings == [f"region_analysis(finding={label!r})" for label in candidates]
    placed = [label for label in candidates if region_for(label)["target"] != "none"]
    assert [lesion["label"] for lesion in report["lesions"]] == placed
    lesion_ids = {a["annotation_id"] for a in completed["result"]["annotations"] if a["kind"] == "finding"}
    stored = {a["annotation_id"] for a in engine.get_annotations(completed["session_id"], source="ai")["annotations"]}
    assert lesion_ids <= stored
    trace = engine.export_trace(completed["run_id"])
    skipped = next(e for e in trace["events"] if e["kind"] == "tool_call" and e["tool_id"] == "similar_cases")
    assert skipped["status"] == "skipped" and "empty" in skipped["reasoning"]  # empty library: skipped cleanly


def test_retries_then_fallback_are_traced(engine: Engine, chest: tuple[str, str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A site pipeline whose segmentation asks the engine for an organ it does not know:
    # the engine raises INVALID_ARGUMENT each time; one retry, then the fallback runs.
    (tmp_path / "faulty.yaml").write_text(_pipeline("""
        format: 1
        id: faulty
        version: "1.0.0"
        image_types: [CXR]
        steps:
          - id: orchestrator
            role: orchestrator
            tools: [image_info]
          - id: image_analysis
            role: image_analysis
            tools:
              - tool: classify
                when: "image.type == 'CXR'"
              - tool: segment_organs
                args: {organs: [Spleen]}
                retries: 1
                fallback: {tool: segment_organs}
              - tool: similar_cases
                when: "patient.age > 200"
          - id: report
            role: report
            tools: [build_report]
    """))
    monkeypatch.setenv("MEDVISION_PIPELINES", str(tmp_path))
    session, _ = chest
    result = engine.invoke_medical_agent(session, "segment", context=NO_LLM | {"pipeline": "faulty"})
    assert result["status"] == "completed"
    events = engine.export_trace(result["run_id"])["events"]
    segment = [e for e in events if e["kind"] == "tool_call" and e["tool_id"] == "segment_organs"]
    assert [(e["attempt"], e["status"]) for e in segment] == [
        (1, "failed"), (2, "failed"), ("fallback", "low_confidence")]
    assert segment[0]["error_type"] == "INVALID_ARGUMENT" and "Spleen" in segment[0]["error"]
    assert segment[2]["arguments"] == {} and "fallback after segment_organs failed" in segment[2]["reasoning"]
    similar = next(e for e in events if e["kind"] == "tool_call" and e["tool_id"] == "similar_cases")
    assert similar["status"] == "skipped" and "patient.age > 200" in similar["reasoning"]
    attribution = engine.export_trace(result["run_id"])["attribution"]
    assert attribution["counts"]["tool_failed"] == 2 and attribution["counts"]["fallback_used"] == 1


def test_a_required_tool_raising_mid_run_fails_the_run_cleanly(engine: Engine, chest: tuple[str, str],
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken.yaml").write_text(_pipeline("""
        format: 1
        id: broken
        version: "1.0.0"
        image_types: [CXR]
        steps:
          - id: orchestrator
            role: orchestrator
            tools: [image_info]
          - id: image_analysis
            role: image_analysis
            tools:
              - tool: segment_organs
                args: {organs: [Liver]}
                required: true
          - id: report
            role: report
            tools: [build_report]
    """))
    monkeypatch.setenv("MEDVISION_PIPELINES", str(tmp_path))
    session, _ = chest
    before = engine.store.count("analyses", session)
    result = engine.invoke_medical_agent(session, "segment", context=NO_LLM | {"pipeline": "broken"})
    assert result["status"] == "failed"
    assert result["error"]["step_id"] == "image_analysis" and result["error"]["tool_id"] == "segment_organs"
    assert "Liver" in result["error"]["message"] and result["result"]["report"] is None
    run = engine.get_agent_run(session, result["run_id"])
    assert run["status"] == "failed" and run["report"] is None  # never left "running" or half-written
    assert engine.store.count("analyses", session) == before
    trace = engine.export_trace(result["run_id"])
    failed = [e for e in trace["events"] if e["status"] == "failed" and e["kind"] == "tool_call"]
    assert failed[0]["error_type"] == "INVALID_ARGUMENT" and failed[0]["step_id"] == "image_analysis"
    assert trace["events"][-1]["kind"] == "run_finished" and trace["events"][-1]["status"] == "failed"
    assert not any(i["kind"] == "plan_mismatch" for i in trace["attribution"]["issues"])
    assert any(i["kind"] == "not_reached" and i["step_id"] == "report" for i in trace["attribution"]["issues"])


def test_step_by_step_returns_after_each_step_and_resumes(engine: Engine, chest: tuple[str, str]) -> None:
    session, _ = chest
    first = engine.invoke_medical_agent(session, "step through it", context=NO_LLM, mode="step_by_step")
    assert first["status"] == "in_progress" and first["next_step"]["step_id"] == "image_analysis"
    assert [s["step_id"] for s in first["trace_summary"]["steps"]] == ["orchestrator"]
    statuses, result = [first["status"]], first
    while result["status"] == "in_progress":
        result = engine.invoke_medical_agent(session, "next", mode="step_by_step")
        assert result["run_id"] == first["run_id"]
        statuses.append(result["status"])
    # The specialist step runs only when the (untrained, machine-dependent) classifier found something.
    ran = 5 if any(f["present"] for f in result["result"]["report"]["findings"]) else 4
    assert statuses == ["in_progress"] * (ran - 1) + ["completed"]
    assert result["result"]["report"]["schema_version"] == "1.0.0"
    kinds = [e["kind"] for e in engine.export_trace(first["run_id"])["events"]]
    assert kinds.count("run_resumed") == ran - 1 and kinds.count("step_finished") == ran
    assert kinds.count("step_skipped") == 5 - ran
    with pytest.raises(MedVisionError):  # a completed run does not resume
        engine.invoke_medical_agent(session, "again", context={"run_id": first["run_id"]}, mode="step_by_step")


def test_interactive_pauses_with_need_input_until_answered(engine: Engine, chest: tuple[str, str]) -> None:
    session, _ = chest
    paused = engine.invoke_medical_agent(session, "ask me first", context=NO_LLM, mode="interactive")
    assert paused["status"] == "need_input"
    request = paused["request"]
    assert request["input_type"] == "choose" and request["step_id"] == "specialist"
    values = [o["value"] for o in request["options"]]
    assert values[-2:] == ["all", "none"] and len(values) >= 3
    assert engine.get_user_input(request["request_id"])["status"] == "pending"
    again = engine.invoke_medical_agent(session, "still there?", mode="interactive")
    assert again["status"] == "need_input" and again["request"]["request_id"] == request["request_id"]
    with pytest.raises(MedVisionError):
        engine.answer_user_input(request["request_id"], "Not an option")
    chosen = values[0]
    answered = engine.answer_user_input(request["request_id"], [chosen])
    assert answered["status"] == "answered" and answered["user_input"] == [chosen]
    assert answered["resume"]["run_id"] == paused["run_id"]
    assert engine.get_user_input(request["request_id"])["user_input"] == [chosen]
    done = engine.invoke_medical_agent(session, "go on", mode="interactive")
    assert done["status"] == "completed" and done["run_id"] == paused["run_id"]
    analysed = [a for a in done["actions_taken"] if a.startswith("region_analysis")]
    assert analysed == [f"region_analysis(finding={chosen!r})"]
    kinds = [e["kind"] for e in engine.export_trace(done["run_id"])["events"]]
    assert "need_input" in kinds and "input_answered" in kinds


def test_the_gate_can_stop_a_run(engine: Engine, chest: tuple[str, str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "strict.yaml").write_text(_pipeline(BASE).replace("id: test", "id: strict") + textwrap.dedent("""
        quality_gate:
          after: image_analysis
          checks:
            - {id: untrained_models, when: "models.trained == false", action: stop, message: "untrained: stop"}
    """))
    monkeypatch.setenv("MEDVISION_PIPELINES", str(tmp_path))
    session, _ = chest
    result = engine.invoke_medical_agent(session, "strict", context=NO_LLM | {"pipeline": "strict"})
    assert result["status"] == "failed" and result["error"]["type"] == "quality_gate"
    assert result["error"]["message"] == "untrained: stop"
    assert result["flags"] == [{"code": "untrained_models", "message": "untrained: stop", "action": "stop"}]


def test_a_bad_mode_or_task_is_refused(engine: Engine, chest: tuple[str, str]) -> None:
    session, _ = chest
    with pytest.raises(MedVisionError) as err:
        engine.invoke_medical_agent(session, "x", mode="turbo")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(MedVisionError):
        engine.invoke_medical_agent(session, "   ")
    with pytest.raises(MedVisionError) as err:
        engine.invoke_medical_agent("no-such-session", "x")
    assert err.value.code is ErrorCode.SESSION_NOT_FOUND
