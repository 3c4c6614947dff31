"""The narrative guard on hand-written narratives: what passes and which violation each error gives."""

from __future__ import annotations

import pytest

from engine.agent.guard import check_narrative, display_name, lexicon, vocabulary


def _finding(label: str, present: bool, probability: float, side: str | None = None,
             zone: str | None = None) -> dict:
    return {"label": label, "present": present, "probability": probability, "threshold": 0.5, "side": side,
            "zone": zone, "source": "classifier", "evidence": [f"probability {probability} vs threshold 0.5"]}


REPORT = {
    "schema_version": 1,
    "findings": [
        _finding("Cardiomegaly", True, 0.72),
        _finding("Effusion", True, 0.61, "left", "lower"),
        _finding("Pneumothorax", False, 0.08),
        _finding("Consolidation", False, 0.21),
        _finding("Nodule", True, 0.66, "right", "upper"),
        _finding("Edema", False, 0.15),
    ],
    "diagnoses": [{"disease": "Heart failure", "confidence": 0.4, "evidence": ["cardiomegaly", "effusion"]}],
    "lesions": [{"label": "Nodule", "location": "right lung, upper zone", "side": "right", "zone": "upper",
                 "measurements": {"diameter": {"value": 12.34, "unit": "mm"}}}],
    "measurements": [{"name": "cardiothoracic_ratio", "value": 0.58, "unit": "ratio"}],
    "management": {"follow_up_months": 6, "suggestion": "Chest CT to characterise the nodule.",
                   "source": "Fleischner Society 2017"},
    "quality": {"warnings": []},
    "model_trained": True,
}


def kinds(narrative: dict | str) -> list[str]:
    return [v["kind"] for v in check_narrative(narrative, REPORT)]


@pytest.mark.parametrize("text", [
    "Cardiomegaly (probability 0.72). Left lower zone pleural effusion (probability 0.61). No pneumothorax.",
    "Enlarged heart. Pleural fluid at the left base. Right upper zone nodule measuring 12.3 mm.",
    "The heart is enlarged, with a small left-sided effusion (61%). No pneumothorax or consolidation.",
    "There is no pneumothorax, consolidation or pulmonary edema. A left basal pleural effusion is present.",
    "1. Cardiomegaly. 2. Left pleural effusion. 3. Nodule in the right upper lobe (1.2 cm).",
    "Pneumothorax is absent. Cardiothoracic ratio 0.58. Follow-up in 6 months.",
    "The left lung is clear apart from a pleural effusion at the base.",
    "Possible heart failure (confidence 0.40). Chest CT to characterise the nodule.",
    "No change in the cardiomegaly. Effusion cannot be excluded.",
    "Three findings need follow-up: cardiomegaly, left effusion and one nodule, reported on 2024-05-01.",
])
def test_supported_narratives_pass(text: str) -> None:
    assert check_narrative(text, REPORT) == []


def test_a_dict_narrative_is_checked_field_by_field() -> None:
    narrative = {"findings": "Cardiomegaly. Left pleural effusion.", "impression": "Pneumonia."}
    (violation,) = check_narrative(narrative, REPORT)
    assert violation["field"] == "impression" and violation["kind"] == "unsupported_finding"
    assert violation["text"] == "Pneumonia" and "not in the structured report" in violation["detail"]


@pytest.mark.parametrize(("text", "expected", "phrase"), [
    ("Right upper zone pneumonia.", "unsupported_finding", "pneumonia"),
    ("Mild pulmonary edema.", "unsupported_finding", "pulmonary edema"),  # assessed absent
    ("Cardiomegaly. Right pleural effusion.", "unsupported_side", "Right pleural effusion"),
    ("Bilateral pleural effusions.", "unsupported_side", "Bilateral pleural effusions"),
    ("Left upper zone pleural effusion.", "unsupported_zone", "upper zone pleural effusion"),
    ("Nodule at the right base.", "unsupported_zone", "base"),
    ("Cardiomegaly (probability 0.93).", "unsupported_number", "0.93"),
    ("Right upper zone nodule of 18 mm.", "unsupported_number", "18 mm"),
    ("Nodule of 1.8 cm.", "unsupported_number", "1.8 cm"),
    ("Follow-up in 12 months.", "unsupported_number", "12 months"),
    ("Three nodules.", "unsupported_number", "Three nodules"),
    ("Two findings.", "unsupported_number", "Two findings"),
    ("Cardiomegaly (probability 72%).", None, None),
    ("No effusion.", "contradicted_negation", "effusion"),
    ("Cardiomegaly, without pleural effusion.", "contradicted_negation", "pleural effusion"),
    ("Effusion is absent.", "contradicted_negation", "Effusion"),
    ("Negative for cardiomegaly.", "contradicted_negation", "cardiomegaly"),
    ("Heart size is normal.", "contradicted_negation", "Heart size is normal"),
    ("No acute cardiopulmonary abnormality.", "contradicted_negation", "No acute cardiopulmonary abnormality"),
    ("Left pleural effusion. No evidence of pleural fluid.", "contradicted_negation", "pleural fluid"),
    ("No hernia.", "unsupported_finding", "hernia"),  # negated, but never assessed
    ("Findings suggest tuberculosis.", "unsupported_finding", "tuberculosis"),
    ("Cardiomegaly with a pacemaker in place.", "unsupported_finding", "pacemaker"),
    ("Cardiomegaly. No signs of cardiac perforation.", "unsupported_finding", "perforation"),
    ("Right-sided heart failure.", "unsupported_side", "Right-sided heart failure"),
])
def test_each_error_gives_its_violation(text: str, expected: str | None, phrase: str | None) -> None:
    violations = check_narrative(text, REPORT)
    if expected is None:
        assert violations == []
        return
    assert expected in [v["kind"] for v in violations], violations
    assert any(phrase.lower() in v["text"].lower() for v in violations if v["kind"] == expected), violations


def test_synonyms_map_to_their_labels() -> None:
    assert kinds("Pleural fluid on the left.") == []
    assert kinds("Enlarged heart.") == kinds("Cardiac enlargement.") == kinds("The heart is enlarged.") == []
    assert kinds("No pleural fluid.") == ["contradicted_negation"]
    assert kinds("The heart is not enlarged.") == ["contradicted_negation"]
    assert kinds("Pneumothoraces.") == kinds("Collapsed lung.") == ["unsupported_finding"]
    assert kinds("Small pulmonary nodule.") == []  # present: supported
    assert kinds("A focal opacity in the right upper zone.") == []  # a nodule is an opacity
    assert kinds("No opacity.") == ["contradicted_negation"]


def test_negation_scope_and_side_qualified_negation() -> None:
    assert kinds("No right pleural effusion.") == []  # true: the effusion is on the left
    assert kinds("No left pleural effusion.") == ["contradicted_negation"]
    # The post-negation cue reaches back to the last affirmation, not further.
    assert kinds("Cardiomegaly is present, pneumothorax is not seen.") == []
    # A terminator ends a pre-negation: the nodule after "but" is affirmed.
    assert kinds("No pneumothorax but a right upper zone nodule.") == []


def test_numbers_follow_the_documented_rounding() -> None:
    assert kinds("Diameter 12.34 mm.") == kinds("Diameter 12.3 mm.") == kinds("Diameter 12 mm.") == []
    assert kinds("Diameter 1.23 cm.") == []
    assert kinds("Diameter 12.5 mm.") == ["unsupported_number"]
    assert kinds("Probability 0.6.") == kinds("Probability 61.0%.") == []
    assert kinds("Probability 61.") == ["unsupported_number"]  # a bare 61 is not 0.61
    assert kinds("Nodule, probability 1.") == ["unsupported_number"]  # a whole number never matches a value < 1
    assert kinds("Seen at 10:45 on 01/05/2024, T4 level, 2nd film.") == []


def test_the_vocabulary_covers_the_18_labels() -> None:
    findings = vocabulary()["findings"]
    assert len(findings) == 18 and "Pleural_Thickening" in findings and "Enlarged Cardiomediastinum" in findings
    assert display_name("Effusion") == "pleural effusion" and display_name("Pleural_Thickening") == "pleural thickening"
    assert lexicon() is lexicon()  # compiled once
    absent_all = {**REPORT, "findings": [_finding(label, False, 0.1) for label in findings], "diagnoses": [],
                  "lesions": []}
    assert check_narrative("No acute cardiopulmonary abnormality. Lungs are clear.", absent_all) == []


def test_strict_vocabulary_can_be_turned_off() -> None:
    text = "Cardiomegaly. Cardiac perforation."
    assert [v["text"] for v in check_narrative(text, REPORT)] == ["perforation"]
    assert check_narrative(text, REPORT, strict_vocabulary=False) == []
