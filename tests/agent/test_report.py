"""The structured report: schema, de-identification, determinism, rules with sources, guard."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from engine.agent import management
from engine.agent.guard import check_narrative
from engine.agent.report import build_report, validate_report
from engine.agent.workflow import build_facts
from engine.api import Engine
from engine.config import Settings
from engine.errors import MedVisionError
from engine.vocabulary import UNTRAINED_OUTPUTS

REPORT_KEYS = {"schema_version", "case_id", "session_id", "generated_at", "patient", "images", "findings",
               "diagnoses", "lesions", "measurements", "management", "quality", "reasoning", "narrative",
               "model_trained", "disclaimer"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, model_pack: Path):
    home = tmp_path_factory.mktemp("report-home")
    with Engine(Settings(home=home, model_pack=model_pack, threads=2, use_keyring=False)) as instance:
        yield instance


@pytest.fixture(scope="module")
def run(engine: Engine, rg1_path: Path) -> dict:
    session = engine.create_study_session("report")["session_id"]
    engine.add_image_to_session(session, rg1_path, auto_analyze=False)
    history = "Smoker, chronic cough. Patient CompressedSamples seen by ward."
    result = engine.invoke_medical_agent(session, "Report", context={"use_llm": False, "clinical_history": history})
    return result | {"stored": engine.store.get_agent_run(result["run_id"])}


def test_the_report_has_exactly_the_agreed_shape_and_follows_the_schema(run: dict) -> None:
    report = run["result"]["report"]
    validate_report(report)
    assert set(report) == REPORT_KEYS and report["schema_version"] == "1.0.0"
    assert report["session_id"] == run["session_id"] and report["case_id"].startswith("case-")
    image = report["images"][0]
    assert image == {"image_id": run["image_id"], "type": "CXR", "modality": "CR", "view": "PA", "laterality": None}
    assert len(report["findings"]) == 18  # every classifier label, present or not
    for finding in report["findings"]:
        assert finding["source"].startswith("classify:densenet121") and finding["evidence"]
        if not finding["present"]:
            assert finding["side"] is None and finding["zone"] is None
    present = [f["label"] for f in report["findings"] if f["present"]]
    probability = {f["label"]: f["probability"] for f in report["findings"]}
    # Most probable first; equal (rounded) probabilities by name, as near-ties of the untrained model occur.
    assert [d["disease"] for d in report["diagnoses"]] == sorted(present, key=lambda label: (-probability[label], label))
    for lesion in report["lesions"]:
        assert lesion["annotation_id"] and lesion["label"] in present
    # Measured in the specialist step (it runs when something is present) from the untrained organ
    # masks, which on some machines give no ratio (an empty heart or lung mask): as the run found.
    ctr = run["stored"]["state"]["outputs"]["segment_organs"]["ctr"]
    measured = any(f["present"] for f in report["findings"]) and ctr["status"] == "ok"
    ratios = [(m["value"], m["unit"]) for m in report["measurements"] if m["name"] == "cardiothoracic_ratio"]
    assert ratios == ([(pytest.approx(ctr["ratio"]), "ratio")] if measured else [])
    assert report["management"]["source"] and report["management"]["suggestion"]
    assert report["narrative"]["source"] == "template" and report["narrative"]["guard"]["status"] == "fallback"
    assert report["reasoning"].startswith(f"{UNTRAINED_OUTPUTS} Image CXR") and report["model_trained"] is False


def test_the_patient_is_de_identified(run: dict) -> None:
    report = run["result"]["report"]
    assert report["patient"]["age"] == 64 and report["patient"]["sex"] == "F"  # RG1: born 1940, study 2004
    assert "CompressedSamples" not in report["patient"]["history"]
    assert "[redacted]" in report["patient"]["history"] and "Smoker" in report["patient"]["history"]
    text = json.dumps(report)
    for identifier in ("CompressedSamples", "9RG1", "19400305", "Philips Medical Systems Hamburg"):
        assert identifier not in text


def test_the_report_is_deterministic_from_the_tool_outputs(run: dict) -> None:
    state = run["stored"]["state"]
    facts = build_facts(state)
    first = build_report(facts, state["outputs"], session_id=run["session_id"], generated_at="2025-01-01T00:00:00Z",
                         flags=state["flags"])
    again = build_report(copy.deepcopy(facts), copy.deepcopy(state["outputs"]), session_id=run["session_id"],
                         generated_at="2025-01-01T00:00:00Z", flags=copy.deepcopy(state["flags"]))
    assert json.dumps(first, sort_keys=False) == json.dumps(again, sort_keys=False)
    stored = dict(run["result"]["report"])  # the run's report: the same, plus its time and narrative
    assert {k: v for k, v in first.items() if k not in ("generated_at", "narrative")} == \
        {k: v for k, v in stored.items() if k not in ("generated_at", "narrative")}


def test_the_narrative_passes_the_guard_against_its_report(run: dict) -> None:
    report = run["result"]["report"]
    narrative = {k: report["narrative"][k] for k in ("findings", "impression")}
    assert check_narrative(narrative, report) == []


@pytest.mark.parametrize(("field", "value"), [
    (("findings", 0, "side"), "top"), (("patient", "sex"), "female"), (("management", "follow_up_months"), -1),
    (("images",), []), (("schema_version",), "2.0.0"),
])
def test_a_malformed_report_is_refused(run: dict, field: tuple, value: object) -> None:
    report = copy.deepcopy(run["result"]["report"])
    target = report
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    with pytest.raises(MedVisionError) as err:
        validate_report(report)
    assert "report.schema.json" in err.value.message


def test_follow_up_rules_choose_the_most_urgent_and_name_their_source() -> None:
    facts = {"patient": {"age": 64, "sex": "F", "history": None}, "measurements": {"ctr": 0.55},
             "image": {"view": "PA"}, "findings": {"present": ["Nodule", "Cardiomegaly"], "count": 2},
             "lesions": {"count": 1}}
    present = [{"label": "Nodule", "probability": 0.8, "side": "right", "zone": "upper"},
               {"label": "Cardiomegaly", "probability": 0.7, "side": None, "zone": None}]
    out = management.evaluate(facts, present)
    rules = [m["rule_id"] for m in out["matched"]]
    assert rules == ["nodule_radiograph_adult", "cardiomegaly_echo", "ctr_above_half"]
    assert out["management"]["rule_id"] == "nodule_radiograph_adult"
    assert "right upper zone" in out["management"]["suggestion"]
    assert "Fleischner" in out["management"]["source"] and all(m["source"] for m in out["matched"])
    assert "0.55" in out["matched"][2]["suggestion"]
    young = management.evaluate(facts | {"patient": {"age": 30}}, present[:1])
    assert young["management"]["rule_id"] == "nodule_radiograph_young"
    nothing = management.evaluate(facts | {"findings": {"present": [], "count": 0, "assessed": True},
                                           "measurements": {"ctr": 0.4}}, [])
    assert nothing["management"]["rule_id"] == "no_rule" and nothing["management"]["follow_up_months"] is None
    unread = management.evaluate(facts | {"findings": {"present": [], "count": 0, "assessed": False},
                                          "measurements": {"ctr": None}}, [])
    assert unread["management"]["rule_id"] == "not_assessed"  # never "no finding" when nothing looked


def test_a_bad_rules_table_is_refused_naming_the_key() -> None:
    good = {"format": 1, "default": {"suggestion": "x", "source": "y"}, "rules": [
        {"id": "r", "labels": ["Nodule"], "suggestion": "CT", "source": "s", "follow_up_months": 3}]}
    assert management.parse_rules(good)[0][0].follow_up_months == 3
    for rule, key in (({"unit": "mm"}, "rules[0].unit"), ({"follow_up_months": -2}, "rules[0].follow_up_months"),
                      ({"when": "finding.size() > 3"}, "rules[0].when"), ({"source": ""}, "rules[0].source")):
        bad = copy.deepcopy(good)
        bad["rules"][0].update(rule)
        with pytest.raises(MedVisionError) as err:
            management.parse_rules(bad)
        assert key in err.value.message
