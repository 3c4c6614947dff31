"""The Engine's agent methods: capabilities, questions with sources, user input, related-region
suggestions, the language model in auto mode, broken model files, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.agent.guard import check_narrative
from engine.agent.memory import ConversationMemory
from engine.agent.tools import SUGGESTION_LAYER, default_registry
from engine.api import Engine
from engine.cli import main
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.inference.modelpack import sha256_file


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, model_pack: Path):
    home = tmp_path_factory.mktemp("api-home")
    with Engine(Settings(home=home, model_pack=model_pack, threads=2, use_keyring=False)) as instance:
        yield instance


@pytest.fixture(scope="module")
def analysed(engine: Engine, rg1_path: Path) -> dict:
    session = engine.create_study_session("api")["session_id"]
    engine.add_image_to_session(session, rg1_path, auto_analyze=False)
    return engine.invoke_medical_agent(session, "Diagnose", context={"use_llm": False})


def test_capabilities_list_tasks_types_tools_with_versions_and_models(engine: Engine) -> None:
    caps = engine.get_agent_capabilities()
    assert {t["id"] for t in caps["capabilities"]} >= {"full_analysis", "region_analysis", "question", "report"}
    assert caps["modes"] == ["auto", "interactive", "step_by_step"]
    assert "CXR" in caps["supported_modalities"]
    assert caps["image_types"]["CXR"] == "cxr" and caps["image_types"]["KUB"] == "default"
    tools = {t["id"]: t for t in caps["available_tools"]}
    assert set(tools) == set(default_registry().ids())
    assert all(t["version"] == "1.0.0" and t["roles"] and t["input_schema"] for t in tools.values())
    assert tools["classify"]["mcp_tools"] == ["analyze_image"] and tools["classify"]["image_types"] == ["CXR"]
    assert {p["id"] for p in caps["pipelines"]} >= {"cxr", "default"}
    assert all(len(m["sha256"]) == 64 for m in caps["models"])
    if engine.models.entry("llm") is None:
        assert caps["agent_model"] is None
    else:
        assert caps["agent_model"]["task"] == "llm" and caps["agent_model"]["trained"] is True


def test_ask_about_image_answers_from_the_run_and_cites_its_sources(engine: Engine, analysed: dict) -> None:
    session = analysed["session_id"]
    answer = engine.ask_about_image(session, "Is there a pleural effusion?")
    assert answer["context"] == {"kind": "agent_run", "run_id": analysed["run_id"]}
    assert answer["sources"], answer
    for source in answer["sources"]:
        assert source["id"].startswith("S") and source["tool_id"] and source["ref"]
    if answer["source"] == "facts":
        assert "effusion" in answer["answer"].lower()
        assert any(s["tool_id"] == "classify" and s["ref"] == analysed["run_id"] for s in answer["sources"])
        assert all(f"[{s['id']}]" in answer["answer"] for s in answer["sources"])
    else:  # the language model's answer passed the guard
        assert answer["guard"]["status"] == "passed"
        assert check_narrative(answer["answer"], engine.get_agent_run(session, analysed["run_id"])["report"]) == []
    assert answer["model_trained"] is False
    heart = engine.ask_about_image(session, "How big is the heart?")
    assert any("cardiothoracic" in s["text"] or "Cardiomegaly" in s["text"] or "cardiomegaly" in s["text"]
               for s in heart["sources"]) or heart["source"] == "llm"
    blind = engine.ask_about_image(session, "What do you see?", include_context=False)
    assert blind["sources"] == [] and "context" in blind["answer"]
    turns = engine.agent.memory(session)["turns"]
    questions = [t["content"] for t in turns if t["kind"] == "question"]
    assert questions[-3:] == ["Is there a pleural effusion?", "How big is the heart?", "What do you see?"]
    assert turns[-1]["role"] == "agent" and turns[-1]["kind"] == "answer"


def test_ask_about_an_unanalysed_image_falls_back_to_its_analyses(engine: Engine, rg1_path: Path) -> None:
    session = engine.create_study_session("plain")["session_id"]
    image = engine.add_image_to_session(session, rg1_path)  # auto analysis: classification only
    answer = engine.ask_about_image(session, "any pneumothorax?", image_id=image["image_id"])
    assert answer["context"]["kind"] == "analyses" and answer["sources"]
    assert answer["context"]["classify_analysis_id"] == image["auto_analysis"]["analysis_id"]
    with pytest.raises(MedVisionError) as err:
        engine.ask_about_image(session, "")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_memory_keeps_the_last_turns_and_folds_older_ones_into_a_summary(engine: Engine) -> None:
    session = engine.create_study_session("memory")["session_id"]
    memory = ConversationMemory(engine.store, max_turns=3)
    for number in range(1, 6):
        memory.add(session, "user" if number % 2 else "agent", "question", f"turn number {number}")
    context = memory.context(session)
    assert [t["content"] for t in context["turns"]] == ["turn number 3", "turn number 4", "turn number 5"]
    assert context["summary"].splitlines() == ["user (question): turn number 1", "agent (question): turn number 2"]
    reopened = ConversationMemory(engine.store, max_turns=3).context(session)  # persisted, not in memory
    assert reopened == context


def test_an_external_agent_can_request_user_input(engine: Engine, analysed: dict) -> None:
    session = analysed["session_id"]
    request = engine.request_user_input(session, "confirm", "Analyse the right lung in detail?")
    assert request["status"] == "pending" and request["run_id"] is None
    assert engine.get_user_input(request["request_id"])["user_input"] is None
    answered = engine.answer_user_input(request["request_id"], True)
    assert answered["status"] == "answered" and answered["user_input"] is True and "resume" not in answered
    with pytest.raises(MedVisionError):  # answered once only
        engine.answer_user_input(request["request_id"], False)
    with pytest.raises(MedVisionError):
        engine.request_user_input(session, "telepathy", "?")
    events = [e["kind"] for e in engine.store.events_since(0, session, limit=5000)]
    assert "agent.input_requested" in events and "agent.input_answered" in events


def test_related_region_suggestions_respect_min_confidence_and_max(engine: Engine, analysed: dict) -> None:
    session = analysed["session_id"]
    loose = engine.invoke_medical_agent(session, "suggest", context={
        "use_llm": False, "auto_suggest": {"min_confidence": 0.0, "max_suggestions": 2}})
    suggestions = [a for a in loose["result"]["annotations"] if a["kind"] == "suggestion"]
    # Suggested for the present findings the zone scan covered: none when the untrained classifier
    # (machine-dependent) found nothing.
    found = any(f["present"] for f in loose["result"]["report"]["findings"])
    assert 1 <= len(suggestions) <= 2 if found else suggestions == []
    stored = {a["annotation_id"]: a for a in engine.get_annotations(session, source="ai")["annotations"]}
    for suggestion in suggestions:
        row = stored[suggestion["annotation_id"]]
        assert row["layer"] == SUGGESTION_LAYER and row["style"]["lineDash"] == [5, 5]
        assert row["label"].startswith("also check") and row["notes"].startswith("Also check here")
    assert any(s.startswith("Also check here") for s in loose["follow_up_suggestions"]) is found
    strict = engine.invoke_medical_agent(session, "suggest", context={
        "use_llm": False, "auto_suggest": {"min_confidence": 0.99, "max_suggestions": 2}})
    assert not [a for a in strict["result"]["annotations"] if a["kind"] == "suggestion"]


def test_a_user_selection_is_analysed_in_the_run(engine: Engine, analysed: dict) -> None:
    selection = {"type": "bbox", "coordinates": [300, 500, 800, 1000]}
    result = engine.invoke_medical_agent(analysed["session_id"], "what is in my box?",
                                         context={"use_llm": False, "user_selection": selection})
    user = [a for a in result["result"]["annotations"] if a["kind"] == "user_region"]
    assert len(user) == 1 and user[0]["bbox"] == [300, 500, 800, 1000]
    assert "user_region()" in result["actions_taken"]


def test_auto_mode_with_the_language_model(engine: Engine, analysed: dict) -> None:
    """The pack's language model orders tools (bounded) and writes the guarded narrative."""
    result = engine.invoke_medical_agent(analysed["session_id"], "Diagnose this chest film", mode="auto")
    assert result["status"] == "completed"
    trace = engine.export_trace(result["run_id"])
    planner = [e for e in trace["events"] if e["kind"] == "planner"]
    narrative = result["result"]["report"]["narrative"]
    assert check_narrative({k: narrative[k] for k in ("findings", "impression")}, result["result"]["report"]) == []
    if engine.models.entry("llm") is None:
        assert planner == [] and narrative["source"] == "template"
        assert next(e for e in trace["events"] if e["kind"] == "llm_check")["status"] == "skipped"
        return
    assert 1 <= len(planner) <= 2  # limits.max_llm_choices
    for event in planner:
        assert event["models"] and event["models"][0]["sha256"]
        following = next(e for e in trace["events"] if e["seq"] > event["seq"] and e["kind"] == "tool_call")
        if event["status"] == "ok":
            assert following["tool_id"] == event["output"]["choice"]
        else:  # refused: the pipeline order was used, and the trace says why
            assert event["error_type"] and event["error"]
    write = next(e for e in trace["events"] if e["kind"] == "tool_call" and e["tool_id"] == "write_narrative")
    attempts = [e for e in trace["events"] if e["kind"] == "narrative_attempt"]
    assert write["models"][0]["task"] == "llm" and 1 <= len(attempts) <= 2
    assert write["output"]["guard"]["status"] in ("passed", "retried", "fallback")


CHOOSER = """
format: 1
id: chooser
version: "1.0.0"
image_types: [CXR]
limits: {max_llm_choices: 1}
steps:
  - {id: orchestrator, role: orchestrator, tools: [image_info]}
  - {id: image_analysis, role: image_analysis, choose: llm, tools: [quality_check, similar_cases]}
  - {id: report, role: report, tools: [build_report]}
"""


def test_a_tool_choice_cut_short_falls_back_to_the_pipeline_order(engine: Engine, analysed: dict, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A real grammar failure: two tokens cannot hold the choice JSON, so it does not parse."""
    assert engine.models.entry("llm") is not None, "the default pack must hold the language model"
    from engine.agent import workflow

    (tmp_path / "chooser.yaml").write_text(CHOOSER)
    monkeypatch.setenv("MEDVISION_PIPELINES", str(tmp_path))
    monkeypatch.setattr(workflow, "CHOICE_MAX_TOKENS", 2)
    result = engine.invoke_medical_agent(analysed["session_id"], "Diagnose", context={"pipeline": "chooser"})
    assert result["status"] == "completed"
    events = engine.export_trace(result["run_id"])["events"]
    planner = next(e for e in events if e["kind"] == "planner")
    assert planner["status"] == "failed" and planner["error_type"] == "invalid_choice"
    assert "pipeline order used (quality_check)" in planner["reasoning"]
    following = next(e for e in events if e["seq"] > planner["seq"] and e["kind"] == "tool_call")
    assert following["tool_id"] == "quality_check"


def _broken_pack(source: Path, target: Path) -> Path:
    """A copy of the pack whose segmentation file is damaged and whose GGUF is not a GGUF."""
    target.mkdir()
    manifest = json.loads((source / "manifest.json").read_text())
    for child in source.iterdir():
        if child.is_dir() and child.name not in ("organ_seg", "llm"):
            (target / child.name).symlink_to(child)
    seg = next(m for m in manifest["models"] if m["task"] == "organ_seg")
    (target / seg["file"]).parent.mkdir(parents=True)
    (target / seg["file"]).write_bytes(b"not an onnx model")  # fails its manifest sha256
    gguf = target / "llm" / "broken.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\x00" * 60)  # matches its sha256, but llama.cpp cannot load it
    manifest["models"] = [m for m in manifest["models"] if m["task"] != "llm"] + [{
        "id": "broken-llm", "task": "llm", "file": "llm/broken.gguf", "format": "gguf", "precision": "q4_k_m",
        "sha256": sha256_file(gguf), "size_bytes": gguf.stat().st_size, "trained": True,
        "upstream": {"name": "a damaged file"}, "default": True}]
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize(("gguf", "error_type"), [("corrupt", "MODEL_LOAD_ERROR"), ("missing", "MODEL_INTEGRITY_ERROR")])
def test_broken_model_files_end_the_run_with_a_clear_trace(tmp_path: Path, model_pack: Path, rg1_path: Path,
                                                           gguf: str, error_type: str) -> None:
    pack = _broken_pack(model_pack, tmp_path / "pack")
    if gguf == "missing":
        (pack / "llm" / "broken.gguf").unlink()
    with Engine(Settings(home=tmp_path / "home", model_pack=pack, threads=2, use_keyring=False)) as broken:
        session = broken.create_study_session()["session_id"]
        broken.add_image_to_session(session, rg1_path, auto_analyze=False)
        result = broken.invoke_medical_agent(session, "Diagnose", mode="auto")
        assert result["status"] == "completed"
        assert "llm_unavailable" in [f["code"] for f in result["flags"]]
        trace = broken.export_trace(result["run_id"])
        check = next(e for e in trace["events"] if e["kind"] == "llm_check")
        assert check["status"] == "failed" and check["error_type"] == error_type
        assert "broken.gguf" in check["error"]
        segment = [e for e in trace["events"] if e["kind"] == "tool_call" and e["tool_id"] == "segment_organs"]
        assert [e["status"] for e in segment] == ["failed", "failed"]  # one retry, then the run goes on
        assert segment[0]["error_type"] == "MODEL_INTEGRITY_ERROR" and "organ_seg" in segment[0]["error"]
        assert not [e for e in trace["events"] if e["kind"] == "planner"]
        report = result["result"]["report"]
        assert report["narrative"]["source"] == "template" and report["measurements"] == []
        zones = [e for e in trace["events"] if e["kind"] == "tool_call" and e["tool_id"] == "zone_scan"]
        found = any(f["present"] for f in report["findings"])  # the scan runs for candidate findings only
        # The dev organ model is untrained (and here broken): zones come from the lung fields found by
        # image processing, never from its masks.
        assert [zone["output"]["method"] for zone in zones] == (["lung_fields_classical"] if found else [])
        kinds = {i["kind"] for i in trace["attribution"]["issues"]}
        assert {"tool_failed", "llm_unavailable"} <= kinds
        assert broken.get_agent_run(session, result["run_id"])["status"] == "completed"
    seg = next(m for m in json.loads((model_pack / "manifest.json").read_text())["models"] if m["task"] == "organ_seg")
    assert (model_pack / seg["file"]).stat().st_size == seg["size_bytes"]  # the shared pack was not written through


def test_the_cli_runs_the_agent_step_by_step(tmp_path: Path, model_pack: Path, rg1_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out, trace = tmp_path / "agent.json", tmp_path / "trace.json"
    code = main(["--home", str(tmp_path / "home"), "--pack", str(model_pack), "agent", str(rg1_path),
                 "--pipeline", "default", "--mode", "step_by_step", "--no-llm", "--json", str(out),
                 "--trace", str(trace)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    assert result["status"] == "completed" and result["pipeline"]["id"] == "default"
    assert printed.count("status in_progress") == 3 and "status completed" in printed
    assert "Trace steps:" in printed and "OrchestratorAgent" in printed and "!! No image analysis model" in printed
    assert json.loads(trace.read_text())["run_id"] == result["run_id"]


def test_runs_a_dead_process_left_running_are_interrupted_at_engine_start(tmp_path: Path, model_pack: Path) -> None:
    """Closing the MCP server's stdin mid-run used to leave the run ``running`` forever (issue 14, item 8).
    At start, a run whose owner process is gone is marked interrupted; a live process's run is not."""
    import socket
    import subprocess
    import sys

    host = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)  # that process has exited
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    settings = Settings(home=tmp_path / "home", model_pack=model_pack, threads=1, use_keyring=False)
    owners = {"dead": f"{host}:{dead_pid}", "alive": f"{host}:{alive.pid}", "other-host": f"elsewhere:{dead_pid}",
              "no-owner": None}
    try:
        with Engine(settings) as first:
            session = first.create_study_session("runs")["session_id"]
            for name, owner in owners.items():
                first.store.create_agent_run(session, run_id=f"run-{name}", task="Diagnose", mode="auto",
                                             pipeline="cxr", image_id=None, state={}, owner=owner)
            first.store.create_agent_run(session, run_id="run-paused", task="Diagnose", mode="step_by_step",
                                         pipeline="cxr", image_id=None, state={}, owner=owners["dead"])
            first.store.update_agent_run("run-paused", status="in_progress")
            last_event = first.last_event_id()
        with Engine(settings) as second:
            statuses = {name: second.get_agent_run(session, f"run-{name}") for name in [*owners, "paused"]}
            events = second.events_since(last_event)
    finally:
        alive.kill()
        alive.wait()
    assert statuses["dead"]["status"] == "failed"
    assert statuses["dead"]["error"]["type"] == "interrupted"
    assert {name: run["status"] for name, run in statuses.items() if name != "dead"} == {
        "alive": "running", "other-host": "running", "no-owner": "running", "paused": "in_progress"}
    assert [(e.kind, e.payload["run_id"]) for e in events] == [("agent.run_updated", "run-dead")]
