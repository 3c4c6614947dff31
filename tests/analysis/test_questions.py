"""The question table: wording -> classifier labels, "not covered" or "needs spacing", and answers that
pass the narrative guard, state both probabilities and the threshold, and qualify untrained outputs."""

from __future__ import annotations

import json

import pytest

from engine.agent.guard import check_narrative
from engine.analysis import questions
from engine.analysis.questions import (
    UNTRAINED_SENTENCE,
    compose_answer,
    guarded,
    mapping,
    parse_question,
)

NOT_COVERED, NEEDS_SPACING, MEASUREMENT, UNKNOWN = "not covered", "needs spacing", "measurement", "unknown"

#: question -> what the table maps it to (labels, table order)
TABLE = [
    ("Is there a nodule in this region?", ["Nodule"]),
    ("any nodules?", ["Nodule"]),
    ("Is this a spot on the lung?", ["Nodule"]),
    ("Is there a mass here?", ["Mass"]),
    ("Could this be a tumour?", ["Mass"]),
    ("Is there a lump?", ["Mass"]),
    ("Any fluid?", ["Effusion"]),
    ("Is there a pleural effusion?", ["Effusion"]),
    ("Is there fluid in the lungs?", ["Edema", "Effusion"]),
    ("Does the patient have pulmonary oedema?", ["Edema"]),
    ("Is the heart enlarged?", ["Cardiomegaly"]),
    ("enlarged heart?", ["Cardiomegaly"]),
    ("Does the heart look big?", ["Cardiomegaly"]),
    ("Is this a collapsed lung?", ["Atelectasis", "Pneumothorax"]),
    ("Any pneumothorax?", ["Pneumothorax"]),
    ("Is there atelectasis or volume loss?", ["Atelectasis"]),
    ("Is there pneumonia?", ["Pneumonia"]),
    ("Does this look like a chest infection?", ["Pneumonia"]),
    ("Any consolidation in the left lower zone?", ["Consolidation"]),
    ("Are there infiltrates?", ["Infiltration"]),
    ("Is there emphysema?", ["Emphysema"]),
    ("Any scarring or fibrosis?", ["Fibrosis"]),
    ("Is the pleura thickened?", ["Pleural_Thickening"]),
    ("Is there a hiatus hernia?", ["Hernia"]),
    ("Is the mediastinum widened?", ["Enlarged Cardiomediastinum"]),
    ("Any shadowing in this area?", ["Lung Opacity"]),
    ("Is there a lesion here?", ["Mass", "Lung Lesion", "Nodule"]),
    ("Are there broken ribs?", ["Fracture"]),
    ("Is there a rib fracture?", ["Fracture"]),
    ("Is this mass cancer?", ["Mass"]),
    ("Is there air under the diaphragm?", NOT_COVERED),
    ("Any free air?", NOT_COVERED),
    ("Does the patient have appendicitis?", NOT_COVERED),
    ("Is this tuberculosis?", NOT_COVERED),
    ("Is it cancer?", NOT_COVERED),
    ("Is there a pulmonary embolism?", NOT_COVERED),
    ("Is there fluid around the heart?", NOT_COVERED),
    ("Is there subcutaneous emphysema?", NOT_COVERED),
    ("Is the pacemaker in place?", NOT_COVERED),
    ("Does the patient have COVID?", NOT_COVERED),
    ("How many mm is this?", NEEDS_SPACING),
    ("What is its diameter in cm?", NEEDS_SPACING),
    ("How big is this in millimetres?", NEEDS_SPACING),
    ("How big is it?", MEASUREMENT),
    ("What is the size of the box?", MEASUREMENT),
    ("What is this?", UNKNOWN),
    ("Hello", UNKNOWN),
]


def _sorted(value):
    return sorted(value) if isinstance(value, list) else value


@pytest.mark.parametrize(("question", "expected"), TABLE, ids=[q for q, _ in TABLE])
def test_the_question_table(question: str, expected) -> None:
    assert _sorted(mapping(question)) == _sorted(expected)


def test_the_table_has_at_least_thirty_questions_and_covers_every_classifier_label(model_pack) -> None:
    assert len(TABLE) >= 30
    manifest = json.loads((model_pack / "manifest.json").read_text())
    entries = manifest["models"] if isinstance(manifest["models"], list) else list(manifest["models"].values())
    classifier_labels = {label for e in entries if e.get("task") == "classify" for label in e["labels"] if label}
    assert classifier_labels == set(questions.labels())
    asked = {label for _, expected in TABLE if isinstance(expected, list) for label in expected}
    assert len(asked) >= 17  # nearly every label is asked about in some wording


def test_a_mixed_question_names_the_finding_and_what_no_model_covers() -> None:
    parsed = parse_question("Is this mass cancer?")
    assert parsed["labels"] == ["Mass"] and [n["name"] for n in parsed["not_covered"]] == ["malignancy"]
    assert parse_question("Is there a nodule in this region?")["refers_to_region"] is True
    assert parse_question("Is there a nodule?")["refers_to_region"] is False


def _classification(probabilities: dict[str, float], trained: bool, threshold: float = 0.5) -> dict:
    findings = [{"label": label, "probability": p, "raw_probability": p, "threshold": threshold,
                 "positive": p >= threshold} for label, p in probabilities.items()]
    return {"status": "ok", "model": {"id": "densenet121-res224-all-fp32"}, "model_trained": trained,
            "threshold": threshold, "findings": findings, "crop": [0, 0, 10, 10]}


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize(("crop_p", "image_p"), [(0.71, 0.64), (0.71, 0.31), (0.22, 0.64), (0.22, 0.31)])
@pytest.mark.parametrize("question", ["Is there a nodule in this region?", "Any fluid or an enlarged heart?",
                                      "Is there a lesion here?", "Is this a collapsed lung?"])
def test_answers_pass_the_guard_and_state_both_probabilities(question: str, crop_p: float, image_p: float,
                                                             trained: bool) -> None:
    parsed = parse_question(question)
    labels = questions.labels()
    crop = _classification({label: crop_p for label in labels}, trained)
    image = _classification({label: image_p for label in labels}, trained)
    answer = guarded(compose_answer(parsed, crop=crop, image=image, crop_ref="region", image_ref="image"),
                     check_narrative)
    assert answer["guard"] == {"status": "passed", "violations": []}, answer["text"]
    text = answer["text"]
    assert text.startswith(UNTRAINED_SENTENCE) is (not trained)
    for label in parsed["labels"]:
        assert questions.display_name(label) in text.lower()
    assert f"{crop_p:.3f}" in text and f"{image_p:.3f}" in text and "threshold 0.500" in text
    assert "densenet121-res224-all-fp32" in text and ("untrained" in text) is (not trained)
    assert [s["id"] for s in answer["sources"]] == ["S1", "S2"] and "[S1]" in text and "[S2]" in text
    assert answer["findings"][0]["region_probability"] == crop_p and answer["findings"][0]["image_probability"] == image_p


@pytest.mark.parametrize("question", ["Is there air under the diaphragm?", "Does the patient have appendicitis?",
                                      "Is it cancer?", "Is the pacemaker in place?", "Is there a pulmonary embolism?"])
def test_a_finding_no_model_covers_is_told_so_with_what_would_answer_it(question: str) -> None:
    answer = guarded(compose_answer(parse_question(question)), check_narrative)
    assert answer["kind"] == "not_covered" and answer["guard"]["status"] == "passed", answer
    item = answer["not_covered"][0]
    assert f"No model of this pack covers {item['name']}" in answer["text"]
    assert f"what would answer it: {item['answered_by']}" in answer["text"]


def test_a_size_in_mm_without_spacing_is_told_so_with_the_pixels_known() -> None:
    measured = {"long_axis": {"value": 512.25, "unit": "px"}, "short_axis": {"value": 300.0, "unit": "px"}}
    answer = guarded(compose_answer(parse_question("How many mm is this?"), measurements=measured,
                                    measurements_ref="region", spacing_known=False, image_format="png"),
                     check_narrative)
    assert answer["kind"] == "needs_spacing" and answer["guard"]["status"] == "passed", answer
    assert "this PNG image has no pixel spacing" in answer["text"] and "512.2 px" in answer["text"]
    assert "Pixel Spacing" in answer["text"]
    with_spacing = compose_answer(parse_question("How many mm is this?"), spacing_known=True,
                                  measurements={"long_axis": {"value": 41.0, "unit": "mm"}})
    assert with_spacing["kind"] == "measurement" and "41.0 mm" in with_spacing["text"]


def test_a_claim_the_results_do_not_support_is_replaced() -> None:
    parsed = parse_question("Is there a nodule?")
    labels = questions.labels()
    answer = compose_answer(parsed, crop=_classification(dict.fromkeys(labels, 0.2), False),
                            image=_classification(dict.fromkeys(labels, 0.2), False))
    answer["text"] += " A nodule is present in the right upper zone."
    checked = guarded(answer, check_narrative)
    assert checked["guard"]["status"] == "fallback" and checked["guard"]["violations"]
    assert checked["text"].startswith(UNTRAINED_SENTENCE) and "nodule" not in checked["text"].lower()
    assert guarded(answer)["guard"]["status"] == "not_checked"
