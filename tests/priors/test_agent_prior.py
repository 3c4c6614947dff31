"""The agent's follow-up step compares with the prior when the store holds one, and the report cites it."""

from __future__ import annotations

from pathlib import Path

from engine.agent.toolkit import ToolCall
from engine.agent.tools import compare_prior
from tests.priors.rg1 import rg1_variant

NO_LLM = {"use_llm": False}


def _tool_event(engine, run_id: str, tool_id: str) -> dict:
    return next(e for e in engine.export_trace(run_id)["events"]
                if e["kind"] == "tool_call" and e["tool_id"] == tool_id)


def test_follow_up_compares_with_the_prior_and_the_report_cites_it(engine, rg1_path: Path, tmp_path: Path) -> None:
    prior_file = tmp_path / "prior.dcm"
    prior_file.write_bytes(rg1_variant(study_date="20030115"))
    prior = engine.create_study_session("prior")["session_id"]
    engine.add_image_to_session(prior, prior_file)
    current = engine.create_study_session("current")["session_id"]
    engine.add_image_to_session(current, rg1_path)

    run = engine.invoke_medical_agent(current, "Diagnose this chest film", context=NO_LLM, mode="auto")
    assert run["status"] == "completed"
    event = _tool_event(engine, run["run_id"], "compare_prior")
    assert event["status"] != "skipped" and "20030115" in event["reasoning"]
    output = event["output"]
    assert output["prior"]["session_id"] == prior and "20030115" in output["citation"]
    # the same pixels under another study: nothing changed, so nothing is cited as changed
    assert output["changed"] == [] and output["same_model"]

    report = engine.get_agent_run(current, run["run_id"])
    assert report["status"] == "completed"

    # alone in the store, the tool says there is no prior
    engine.delete_session(prior)
    image_id = engine.get_session_status(current)["current_image"]
    call = ToolCall(services=engine.services, session_id=current, image_id=image_id, run_id="r", outputs={},
                    facts={}, context={}, pipeline=None)  # type: ignore[arg-type]
    skipped = compare_prior(call, {})
    assert skipped.skipped and "no prior" in skipped.reasoning


def test_the_report_cites_a_changed_finding() -> None:
    from engine.agent.report import build_report

    facts = {"image": {}, "patient": {}, "models": []}
    outputs = {"classify": {"model_id": "clf", "threshold": 0.5, "findings": [
        {"label": "Effusion", "probability": 0.8, "positive": True}]},
        "compare_prior": {"citation": "prior study of 20030115 (Study Instance UID 1.2.3), classified by clf",
                          "changed": [{"label": "Effusion", "change": "new", "prior_probability": 0.2}]}}
    report = build_report(facts, outputs, session_id="s", generated_at="2024-01-01T00:00:00Z")
    evidence = report["findings"][0]["evidence"]
    assert any("new since the prior study of 20030115" in e and "0.20 then" in e for e in evidence)
