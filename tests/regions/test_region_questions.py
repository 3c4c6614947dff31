"""Questions about a region of RG1 answered through each road (Engine.analyze_selected_region,
ask_about_image, also over MCP, and the CLI) with the real engine and the dev pack.

The dev pack is untrained and its numbers differ per machine, so every probability is read
from the result (the classifier's own output on the crop and on the whole image) and
compared with the answer's text, never hard-coded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anyio
import pytest

from engine.analysis.questions import UNTRAINED_SENTENCE, display_name, parse_question
from engine.api import Engine
from engine.cli import main
from engine.config import Settings
from tests.mcp import connect, ok

#: The patient's left lower zone of RG1 (the image's right half, lower part), in pixels.
LEFT_LOWER = [1100.0, 1000.0, 1700.0, 1500.0]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, model_pack: Path):
    home = tmp_path_factory.mktemp("questions-home")
    with Engine(Settings(home=home, model_pack=model_pack, threads=2, use_keyring=False)) as instance:
        yield instance


@pytest.fixture(scope="module")
def session(engine: Engine, rg1_path: Path) -> str:
    session_id = engine.create_study_session("questions")["session_id"]
    engine.add_image_to_session(session_id, rg1_path, auto_analyze=False)
    return session_id


def _probability(classification: dict, label: str) -> float:
    return next(f["probability"] for f in classification["findings"] if f["label"] == label)


def assert_answers(text: str, labels: list[str], crop: dict, whole: dict) -> None:
    """The answer names each asked finding, gives the crop's and the whole image's probability the
    classifier returned, the threshold, the model and the untrained qualifier first."""
    assert labels, text
    assert text.startswith(UNTRAINED_SENTENCE), text
    for label in labels:
        sentence = next(s for s in text.split(". ") if s.lower().startswith(display_name(label)))
        assert f"region crop probability {_probability(crop, label):.3f}" in sentence, (label, text)
        assert f"whole image probability {_probability(whole, label):.3f}" in sentence, (label, text)
        assert f"threshold {crop['threshold']:.3f}" in sentence
    assert f"Classifier {crop['model']['id']}, untrained." in text
    assert crop["model_trained"] is False and whole["model_trained"] is False


QUESTIONS = ["Is there a nodule in this region?", "Any fluid?", "Is the heart enlarged?", "Is this a collapsed lung?",
             "Is there a mass or lesion here?"]


@pytest.mark.parametrize("question", QUESTIONS)
def test_analyze_selected_region_answers_the_finding_asked(engine: Engine, session: str, question: str) -> None:
    result = engine.analyze_selected_region(session, {"type": "bbox", "coordinates": LEFT_LOWER},
                                            question=question, actions=["describe"])
    assert "classify" in result["actions"]  # run for the question though actions did not ask for it
    answer = result["answer"]
    labels = parse_question(question)["labels"]
    assert answer["kind"] == "finding" and answer["labels"] == labels
    assert answer["guard"] == {"status": "passed", "violations": []}
    assert_answers(answer["text"], labels, result["classification"], result["image_classification"])
    # the whole image's numbers are the classifier's on the whole image
    whole = engine.analyze_image(session, classify=True, segment=False, generate_report=False)["classification"]
    for label in labels:
        assert _probability(whole, label) == _probability(result["image_classification"], label)
    assert answer["threshold"] == result["classification"]["threshold"] == 0.5
    assert answer["model"] == {"id": result["classification"]["model"]["id"], "trained": False}
    assert [s["tool_id"] for s in answer["sources"]] == ["classify", "classify"]
    assert result["analysis_id"] in answer["sources"][0]["ref"]
    notes = engine.store.get_annotation(session, result["annotation_id"])["notes"]
    assert answer["text"] in notes


@pytest.mark.parametrize(("question", "kind", "words"), [
    ("Is there air under the diaphragm?", "not_covered", "pneumoperitoneum"),
    ("Does the patient have appendicitis?", "not_covered", "appendicitis"),
    ("How many mm is this?", "needs_spacing", "has no pixel spacing"),
])
def test_a_question_the_models_cannot_answer_is_told_so(engine: Engine, session: str, question: str, kind: str,
                                                        words: str) -> None:
    result = engine.analyze_selected_region(session, {"type": "bbox", "coordinates": LEFT_LOWER},
                                            question=question, actions=["describe"])
    answer = result["answer"]
    assert answer["kind"] == kind and words in answer["text"], answer["text"]
    assert "what would answer it" in answer["text"].lower()
    assert answer["guard"]["status"] == "passed" and "classification" not in result
    if kind == "needs_spacing":
        long_axis = result["measurements"]["long_axis"]
        assert long_axis["unit"] == "px" and f"{long_axis['value']:.1f} px" in answer["text"]


def test_a_region_without_a_question_has_no_answer(engine: Engine, session: str) -> None:
    result = engine.analyze_selected_region(session, {"type": "bbox", "coordinates": LEFT_LOWER})
    assert "answer" not in result and result["actions"] == ["describe"]


@pytest.mark.parametrize("question", ["Is there a nodule in this region?", "Is the heart enlarged here?"])
def test_ask_about_image_answers_from_the_selected_region(engine: Engine, session: str, question: str) -> None:
    region = engine.analyze_selected_region(session, {"type": "bbox", "coordinates": LEFT_LOWER}, actions=["classify"])
    answer = engine.ask_about_image(session, question)
    labels = parse_question(question)["labels"]
    assert answer["context"] == {"kind": "region_analysis", "analysis_id": region["analysis_id"]}
    whole = engine.analyze_image(session, classify=True, segment=False, generate_report=False)["classification"]
    assert_answers(answer["answer"], labels, region["classification"], whole)
    assert answer["guard"]["status"] == "passed" and answer["model_trained"] is False
    assert [s["id"] for s in answer["sources"]] == ["S1", "S2"] and region["analysis_id"] in answer["sources"][0]["ref"]


def test_ask_about_image_tells_what_it_cannot_answer(engine: Engine, session: str) -> None:
    engine.analyze_selected_region(session, {"type": "bbox", "coordinates": LEFT_LOWER}, actions=["measure"])
    spacing = engine.ask_about_image(session, "How many mm is this?")
    assert spacing["kind"] == "needs_spacing" and "has no pixel spacing" in spacing["answer"]
    free_air = engine.ask_about_image(session, "Is there air under the diaphragm?")
    assert free_air["kind"] == "not_covered" and "pneumoperitoneum" in free_air["answer"]
    assert "what would answer it" in free_air["answer"] and free_air["guard"]["status"] == "passed"
    assert engine.agent.memory(session)["turns"][-1]["content"] == free_air["answer"]


def test_mcp_ask_about_image_and_region_answer_the_question(home: Path, model_pack: Path, rg1_path: Path,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    shutil.copy(rg1_path, root / "rg1.dcm")

    async def scenario() -> None:
        async with connect(home, model_pack, [root]) as client:
            session_id = (await ok(client, "create_study_session", name="mcp questions"))["session_id"]
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(root / "rg1.dcm"),
                     auto_analyze=False)
            region = await ok(client, "analyze_selected_region", session_id=session_id,
                              region={"type": "bbox", "coordinates": LEFT_LOWER},
                              question="Is there a nodule in this region?", actions=["describe"])
            assert_answers(region["answer"]["text"], ["Nodule"], region["classification"],
                           region["image_classification"])
            answer = await ok(client, "ask_about_image", session_id=session_id,
                              question="Is there a nodule in this region?")
            assert_answers(answer["answer"], ["Nodule"], region["classification"], region["image_classification"])

    anyio.run(scenario)


def test_the_cli_prints_the_answer(tmp_path: Path, model_pack: Path, rg1_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "region.json"
    code = main(["--home", str(tmp_path / "home"), "--pack", str(model_pack), "region", str(rg1_path),
                 "--bbox", *map(str, LEFT_LOWER), "--question", "Is there a nodule in this region?",
                 "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    line = next(s for s in printed.splitlines() if s.strip().startswith("answer: "))
    assert_answers(line.split("answer: ", 1)[1], ["Nodule"], result["classification"], result["image_classification"])
    assert "[S1]" in printed and "[S2]" in printed
