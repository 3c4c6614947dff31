"""The guarded narrative: the template always passes; the LLM's final narrative always passes.

The language-model tests run the real Gemma 3 270M (one llama.cpp thread: see test_llm.py).
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.agent.guard import check_narrative, vocabulary
from engine.agent.narrative import (
    FINDINGS_MAX_CHARS,
    IMPRESSION_MAX_CHARS,
    NARRATIVE_SCHEMA,
    early_violations,
    narrative_prompt,
    qualified_narrative,
    report_facts,
    template_narrative,
    write_narrative,
)
from engine.config import Settings
from engine.inference.llm import LlmRuntime
from engine.inference.registry import ModelRegistry
from engine.vocabulary import DISCLAIMER, UNTRAINED_BANNER, UNTRAINED_OUTPUTS

LABELS = list(vocabulary()["findings"])
LOCATIONS = [None, "right lung, upper zone", "left lower zone", "overlapping the left clavicle", "right hilum",
             "left lung, middle zone", "mediastinum"]
SUGGESTIONS = [
    "", "Chest CT to confirm and characterise the nodule (right lung, upper zone); interval follow-up then by "
    "nodule size and risk.",
    "Urgent clinical review of the suspected pneumothorax (left); management by size and symptoms.",
    "Clinical correlation; thoracic ultrasound to confirm and characterise the effusion (left lower zone) if it "
    "is unexplained.",
    "Transthoracic echocardiography to assess cardiac size and function if heart failure is suspected.",
    "Routine follow-up; no further imaging needed for patients under 35.",
]


def random_report(rng: random.Random) -> dict:
    """A structured report in the agent's format with random findings, lesions and text."""
    findings = []
    for label in rng.sample(LABELS, rng.randint(3, len(LABELS))):
        present = rng.random() < 0.3
        findings.append({
            "label": label, "present": present, "probability": round(rng.random(), 4),
            "threshold": rng.choice([0.5, None]),
            "side": rng.choice([None, "left", "right", "bilateral"]) if present else None,
            "zone": rng.choice([None, "upper", "middle", "lower"]) if present else None,
            "source": "classifier", "evidence": [rng.choice(["op-normalised probability", "region vote 3/5"])],
        })
    lesions = [{"label": rng.choice(["Nodule", "Mass", "Lung Lesion", "region 2"]), "location": rng.choice(LOCATIONS),
                "side": rng.choice([None, "left", "right"]), "zone": rng.choice([None, "upper", "lower"]),
                "measurements": rng.choice([{}, {"diameter": {"value": round(rng.uniform(3, 40), 3), "unit": "mm"}},
                                            {"area": {"value": round(rng.uniform(10, 900), 1), "unit": "mm2"}}])}
               for _ in range(rng.randint(0, 2))]
    measurements = rng.sample([{"name": "cardiothoracic_ratio", "value": round(rng.uniform(0.35, 0.7), 3),
                                "unit": "ratio"},
                               {"name": "heart width", "value": round(rng.uniform(90, 180), 1), "unit": "mm"}],
                              rng.randint(0, 2))
    diagnoses = [{"disease": rng.choice(["Pneumonia", "Heart failure", "Tuberculosis", "Pulmonary edema"]),
                  "confidence": round(rng.random(), 2), "evidence": ["rule"]} for _ in range(rng.randint(0, 1))]
    return {
        "schema_version": 1, "findings": findings, "diagnoses": diagnoses, "lesions": lesions,
        "measurements": measurements,
        "management": {"follow_up_months": rng.choice([None, 0, 3, 6, 12]), "suggestion": rng.choice(SUGGESTIONS),
                       "source": "local rules"},
        "quality": {"warnings": rng.choice([[], ["rotated to the left"], ["low contrast"]])},
        "model_trained": rng.random() < 0.5,
    }


def _finding(label: str, present: bool, probability: float, side: str | None = None,
             zone: str | None = None) -> dict:
    return {"label": label, "present": present, "probability": probability, "threshold": 0.5, "side": side,
            "zone": zone, "source": "classifier", "evidence": []}


def _report(findings: list[dict], **extra: object) -> dict:
    return {"schema_version": 1, "findings": findings, "diagnoses": [], "lesions": [], "measurements": [],
            "management": {"follow_up_months": None, "suggestion": "", "source": ""}, "quality": {"warnings": []},
            "model_trained": True} | extra


#: Small reports for the language-model runs (short outputs keep the tests fast).
REPORTS = [
    _report([_finding("Cardiomegaly", True, 0.72), _finding("Effusion", True, 0.61, "left", "lower"),
             _finding("Pneumothorax", False, 0.08)]),
    _report([_finding("Pneumothorax", True, 0.83, "right", "upper"), _finding("Effusion", False, 0.1)],
            management={"follow_up_months": 0, "suggestion": "Urgent clinical review.", "source": "BTS 2023"}),
    _report([_finding("Pneumothorax", False, 0.05), _finding("Effusion", False, 0.12),
             _finding("Cardiomegaly", False, 0.3)]),
    _report([_finding("Nodule", True, 0.66, "right", "upper"), _finding("Consolidation", False, 0.2)],
            lesions=[{"label": "Nodule", "location": "right lung, upper zone", "side": "right", "zone": "upper",
                      "measurements": {"diameter": {"value": 12.3, "unit": "mm"}}}],
            management={"follow_up_months": 6, "suggestion": "", "source": ""}),
]


def test_the_template_always_passes_the_guard() -> None:
    rng = random.Random(20240501)
    for index in range(400):
        report = random_report(rng)
        narrative = template_narrative(report)
        assert check_narrative(narrative, report) == [], (index, narrative)
        assert len(narrative["findings"]) <= FINDINGS_MAX_CHARS and len(narrative["impression"]) <= IMPRESSION_MAX_CHARS
        assert narrative == template_narrative(report)  # deterministic


def test_with_untrained_models_each_field_opens_with_not_findings() -> None:
    """The untrained run's narrative: each field on its own calls these outputs, not findings."""
    rng = random.Random(20261202)
    for index in range(100):
        report = random_report(rng) | {"model_trained": False, "disclaimer": f"{DISCLAIMER} {UNTRAINED_BANNER}"}
        narrative = template_narrative(report)
        assert all(text.startswith(UNTRAINED_OUTPUTS) for text in narrative.values()), (index, narrative)
        assert check_narrative(narrative, report) == [], (index, narrative)
        assert len(narrative["findings"]) <= FINDINGS_MAX_CHARS and len(narrative["impression"]) <= IMPRESSION_MAX_CHARS
    assert qualified_narrative(template_narrative(REPORTS[0]), REPORTS[0]) == template_narrative(REPORTS[0])


def test_the_template_says_what_the_report_says() -> None:
    narrative = template_narrative(REPORTS[0])
    assert narrative["findings"] == ("Cardiomegaly (probability 0.72). Left lower zone pleural effusion "
                                     "(probability 0.61). No pneumothorax.")
    assert narrative["impression"] == "Cardiomegaly and left pleural effusion."
    assert template_narrative(REPORTS[2])["impression"] == "No abnormality detected."
    assert "Follow-up in 6 months." in template_narrative(REPORTS[3])["impression"]


def test_the_prompt_holds_the_facts_only() -> None:
    prompt = narrative_prompt(REPORTS[0])
    assert prompt.endswith("Report: ")
    assert "Facts: " + " ".join(report_facts(REPORTS[0])) in prompt
    assert "No abnormality detected" not in prompt  # abnormal reports get abnormal examples
    retry = narrative_prompt(REPORTS[0], [{"kind": "unsupported_side", "text": "right pleural effusion",
                                           "detail": "", "field": "findings"}])
    assert 'Not in the facts, never written: "right pleural effusion".' in retry


def test_without_a_language_model_the_template_is_used() -> None:
    result = write_narrative(REPORTS[0], None)
    assert result["source"] == "template" and result["attempts"] == []
    assert result["guard"]["status"] == "fallback" and result["guard"]["reason"] == "no language model"
    assert result["narrative"] == template_narrative(REPORTS[0])


@pytest.fixture(scope="module")
def llm(llm_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> LlmRuntime:
    registry = ModelRegistry(Settings(home=tmp_path_factory.mktemp("narrative-home"), model_pack=llm_pack,
                                      threads=1))
    runtime = registry.llm()
    assert runtime is not None
    yield runtime
    registry.unload()


def _check_record(result: dict, report: dict) -> None:
    """The result's bookkeeping is consistent with its status."""
    status, attempts = result["guard"]["status"], result["attempts"]
    assert check_narrative(result["narrative"], report) == [] == result["guard"]["final_violations"]
    for number, attempt in enumerate(attempts, 1):
        assert attempt["attempt"] == number and attempt["prompt"].endswith("Report: ")
        assert attempt["tokens"] is not None and attempt["latency_ms"] > 0
    rejected = [a for a in attempts if a["violations"] or a["parse_error"]]
    if status == "passed":
        assert result["source"] == "llm" and len(attempts) == 1 and not rejected
        assert result["narrative"]["findings"] == attempts[0]["parsed"]["findings"].strip()
    elif status == "retried":
        assert result["source"] == "llm" and len(attempts) == 2 and rejected == [attempts[0]]
        assert result["narrative"]["impression"] == attempts[1]["parsed"]["impression"].strip()
    else:
        assert status == "fallback" and result["source"] == "template" and len(attempts) == 2
        assert rejected == attempts and result["narrative"] == template_narrative(report)


def test_the_final_narrative_never_contradicts_the_report(llm: LlmRuntime,
                                                          record_property: Callable[[str, object], None]) -> None:
    statuses: collections.Counter[str] = collections.Counter()
    for seed in range(20):
        report = REPORTS[seed % len(REPORTS)]
        result = write_narrative(report, llm, seed=seed, temperature=0.7, max_tokens=80)
        _check_record(result, report)
        statuses[result["guard"]["status"]] += 1
    assert sum(statuses.values()) == 20
    record_property("narrative_outcomes", dict(statuses))  # in the JUnit XML: passed/retried/fallback


def test_greedy_narrative_is_deterministic(llm: LlmRuntime) -> None:
    first = write_narrative(REPORTS[0], llm, max_tokens=80)
    again = write_narrative(REPORTS[0], llm, max_tokens=80)
    _check_record(first, REPORTS[0])
    assert first["narrative"] == again["narrative"] and first["guard"]["status"] == again["guard"]["status"]
    assert first["model"]["id"] == "gemma-3-270m-q4_k_m"


def test_violating_output_is_retried_with_the_violations_named_then_replaced(llm: LlmRuntime) -> None:
    # At temperature 5 the model samples near-uniformly among its top tokens: the text is
    # word salad the guard rejects, twice, so the template is used.
    result = write_narrative(REPORTS[0], llm, seed=3, temperature=5.0, max_tokens=60)
    _check_record(result, REPORTS[0])
    assert result["guard"]["status"] == "fallback" and result["source"] == "template"
    first, second = result["attempts"]
    assert first["violations"] or first["parse_error"]
    if first["violations"]:
        assert first["violations"][0]["text"] in second["prompt"] and "Not in the facts" in second["prompt"]
        assert result["guard"]["violations"] == second["violations"] or second["parse_error"]


def test_unparseable_output_falls_back(llm: LlmRuntime) -> None:
    result = write_narrative(REPORTS[1], llm, max_tokens=4)  # cannot close the JSON object
    _check_record(result, REPORTS[1])
    assert result["guard"]["status"] == "fallback"
    assert all("JSON" in attempt["parse_error"] for attempt in result["attempts"])
    assert NARRATIVE_SCHEMA["required"] == ["findings", "impression"]


def test_stopping_at_the_first_rejected_sentence_loses_nothing(llm: LlmRuntime) -> None:
    """Every violation found in a finished sentence while decoding is one the whole output has."""
    stopped_early = 0
    for seed in range(8):
        report = REPORTS[seed % len(REPORTS)]
        full = llm.complete(narrative_prompt(report), json_schema=NARRATIVE_SCHEMA, max_tokens=120,
                            temperature=0.9, seed=seed)
        whole = {v["text"] for v in check_narrative(full["parsed"] or full["text"], report)} if full["parsed"] else None
        text = full["text"]
        for end in [i + 1 for i, char in enumerate(text) if char in ' "']:
            found = early_violations(text[:end], report)
            if found and whole is not None:
                assert {v["text"] for v in found} <= whole, (text[:end], found, whole)
        aborted = llm.complete(narrative_prompt(report), json_schema=NARRATIVE_SCHEMA, max_tokens=120,
                               temperature=0.9, seed=seed,
                               abort_at_sentence=lambda partial, r=report: bool(early_violations(partial, r)))
        if aborted["finish_reason"] == "aborted":  # stopped at a sentence end the guard rejects
            stopped_early += 1
            assert early_violations(aborted["text"], report)
            assert aborted["tokens"] < 120
    assert stopped_early, "the base model never wrote a rejected sentence in 8 seeds"
