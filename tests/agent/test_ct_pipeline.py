"""The agent's volume pipeline (ct.yaml) on a stored CT series: chosen by modality, segmentation,
organ volumes and mean HU, and a report whose narrative the guard checked against those numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from engine.agent.guard import check_narrative
from engine.agent.pipeline import load_pipelines, parse_pipeline
from engine.agent.tools import default_registry
from engine.api import Engine
from engine.config import Settings
from tests.volumes.ctseries import sub_volume, write_ct_series

#: Slices 72..111 of the shared example CT: abdomen to the lung bases (both lungs, bone, body).
SLICES = (72, 112)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, model_pack: Path):
    home = tmp_path_factory.mktemp("ct-agent-home")
    with Engine(Settings(home=home, model_pack=model_pack, threads=2, use_keyring=False)) as instance:
        yield instance


@pytest.fixture(scope="module")
def run(engine: Engine, tmp_path_factory: pytest.TempPathFactory, shared_ct_dir: Path) -> dict:
    folder = tmp_path_factory.mktemp("ct-agent-series")
    write_ct_series(folder, volume=sub_volume(*SLICES), seed=5)
    session = engine.create_study_session("ct agent")["session_id"]
    for path in sorted(folder.iterdir()):
        engine.add_image_to_session(session, str(path), auto_analyze=False)
    result = engine.invoke_medical_agent(session, "Report this CT", context={"use_llm": False})
    return result | {"trace": engine.export_trace(result["run_id"])}


def _outputs(run: dict) -> dict[str, dict]:
    return {e["tool_id"]: e["output"] for e in run["trace"]["events"] if e["kind"] == "tool_call" and e["status"] == "ok"}


def test_the_ct_pipeline_is_valid_and_chosen_for_ct_and_mr(engine: Engine) -> None:
    from engine.agent import pipelines

    text = (Path(pipelines.__file__).parent / "ct.yaml").read_text()
    parsed = parse_pipeline(text, "ct.yaml", default_registry())  # pipeline.schema.json, tools, roles, args
    assert parsed.image_types == ("CT", "MRI") and "ct" in {p.id for p in load_pipelines(default_registry())}
    caps = engine.get_agent_capabilities()
    assert caps["image_types"]["CT"] == "ct" and caps["image_types"]["MRI"] == "ct"
    assert caps["image_types"]["CXR"] == "cxr"


def test_auto_run_reports_volumes_and_mean_hu_through_the_guard(engine: Engine, run: dict) -> None:
    assert run["status"] == "completed", run.get("error")
    outputs = _outputs(run)
    assert {"image_info", "volume_info", "segment_volume", "volume_measurements", "build_report"} <= set(outputs)
    info = outputs["volume_info"]
    assert info["shape_zyx"] == [SLICES[1] - SLICES[0], 101, 122] and info["modality"] == "CT"
    segmented = outputs["segment_volume"]
    assert segmented["algorithm"] == "classical_hu_connectivity" and segmented["model_trained"] is False
    found = {s["name"]: s for s in segmented["structures"] if s["found"]}
    assert {"body", "bone", "lung_left", "lung_right"} <= set(found)
    # the tool's numbers are the engine's own segmentation of the series
    direct = engine.segment_volume(run["session_id"], series_uid=info["series_uid"])
    for structure in direct["segmentation"]["structures"]:
        if structure["found"]:
            assert found[structure["name"]]["volume_ml"] == structure["volume_ml"]
            assert found[structure["name"]]["mean_hu"] == structure["mean_hu"]
    assert all(s["annotation_id"] for s in found.values())  # each mask kept in the store, cited by id
    report = run["result"]["report"]
    measured = {m["name"]: m for m in report["measurements"]}
    left = found["lung_left"]
    assert measured["left lung volume"] == {"name": "left lung volume", "value": round(left["volume_ml"], 1),
                                            "unit": "mL"}
    assert measured["left lung mean attenuation"]["value"] == round(left["mean_hu"], 1) < -500
    assert measured["left lung mean attenuation"]["unit"] == "HU"
    narrative = report["narrative"]
    assert check_narrative({k: narrative[k] for k in ("findings", "impression")}, report) == []
    assert f"Left lung volume {round(left['volume_ml'], 1):g} mL" in narrative["findings"]
    assert f"Left lung mean attenuation {round(left['mean_hu'], 1):g} HU" in narrative["findings"]
    assert f"Body volume {round(found['body']['volume_ml'], 1):g} mL" in narrative["findings"]
    assert "No finding was assessed" in narrative["impression"] and "abnormality" not in narrative["impression"]
    assert "classical_hu_connectivity (no trained model)" in report["reasoning"]


def test_the_guard_holds_a_volume_report_to_its_numbers_and_signs(run: dict) -> None:
    report = run["result"]["report"]
    mean = next(m["value"] for m in report["measurements"] if m["name"] == "left lung mean attenuation")
    assert check_narrative(f"Left lung mean attenuation {mean:g} HU.", report) == []
    (sign,) = check_narrative(f"Left lung mean attenuation {abs(mean):g} HU.", report)
    assert sign["kind"] == "unsupported_number"
    assert check_narrative("Left lung volume 9999.9 mL.", report)[0]["kind"] == "unsupported_number"
    (normal,) = check_narrative({"findings": "See the measurements.", "impression": "No abnormality detected."}, report)
    assert normal["kind"] == "unsupported_finding"  # organ volumes assess no finding


def test_a_ct_image_that_is_no_series_stops_at_the_gate(engine: Engine) -> None:
    session = engine.create_study_session("one ct image")["session_id"]
    engine.add_image_to_session(session, get_testdata_file("CT_small.dcm"), auto_analyze=False)
    result = engine.invoke_medical_agent(session, "Report this CT", context={"use_llm": False})
    assert result["status"] == "failed"
    assert "not a slice of one" in result["error"]["message"]


def test_an_mr_series_gets_its_geometry_and_warnings_but_no_hounsfield_measurements(engine: Engine) -> None:
    session = engine.create_study_session("mr")["session_id"]
    engine.add_image_to_session(session, get_testdata_file("emri_small.dcm"), auto_analyze=False)  # multi-frame MR
    result = engine.invoke_medical_agent(session, "Report this MR", context={"use_llm": False})
    assert result["status"] == "completed", result.get("error")
    trace = engine.export_trace(result["run_id"])
    ran = {e["tool_id"] for e in trace["events"] if e["kind"] == "tool_call"}
    assert "volume_info" in ran and "segment_volume" not in ran and "volume_measurements" not in ran
    report = result["result"]["report"]
    codes = {w["code"] for w in report["quality"]["warnings"]}
    assert "NO_PER_FRAME_POSITION" in codes and "not_hounsfield" in codes and "volume_warnings" in codes
    assert report["measurements"] == []
    narrative = report["narrative"]
    assert check_narrative({k: narrative[k] for k in ("findings", "impression")}, report) == []
