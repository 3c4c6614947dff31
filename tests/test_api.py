"""The Engine facade end to end on the real radiograph: sessions, images, analysis, store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from engine.api import Engine
from engine.errors import ErrorCode, MedVisionError


def test_chest_radiograph_goes_in_an_encrypted_classified_session_comes_out(
    engine: Engine, rg1_path: Path, home: Path, model_pack: Path
) -> None:
    session = engine.create_study_session("ward round", {"requested_by": "test"})
    added = engine.add_image_to_session(session["session_id"], rg1_path)
    assert added["type"] == "CXR" and added["type_source"] == "detected"
    analysis = added["auto_analysis"]
    classification = analysis["classification"]
    assert len(classification["findings"]) == 18
    assert all(0.0 <= f["probability"] <= 1.0 for f in classification["findings"])
    probabilities = [f["probability"] for f in classification["findings"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert analysis["model_trained"] is False and classification["model"]["trained"] is False
    assert "Development models" in analysis["banner"]
    assert "not for diagnostic use" in analysis["disclaimer"]
    assert "CompressedSamples" not in json.dumps(added)  # no patient identifiers in results

    # Another process (here: another Engine) sees the persisted result.
    with Engine(home=home, model_pack=model_pack) as other:
        summary = other.get_analysis_summary(session["session_id"])
        assert summary["images"][0]["analyzed"] is True
        assert summary["images"][0]["analysis_id"] == analysis["analysis_id"]
        assert summary["model_trained"] is False
        again = other.analyze_image(session["session_id"], preset="quick")  # decodes from the encrypted blob
        assert again["classification"]["findings"] == classification["findings"]


def test_session_status_switching_and_events(engine: Engine, rg1_path: Path) -> None:
    session_id = engine.create_study_session()["session_id"]
    first = engine.add_image_to_session(session_id, rg1_path, auto_analyze=False)
    second = engine.add_image_to_session(session_id, get_testdata_file("MR_small.dcm"))
    assert second["auto_analysis"]["status"] == "skipped"
    status = engine.get_session_status(session_id)
    assert [i["image_id"] for i in status["images"]] == [first["image_id"], second["image_id"]]
    assert status["current_image"] == second["image_id"]
    assert status["images"][1]["pixel_spacing_mm"] is not None
    switched = engine.switch_image(session_id, first["image_id"])
    assert switched["current_image"] == first["image_id"]
    result = engine.analyze_image(session_id)  # the current image
    assert result["image_id"] == first["image_id"]
    kinds = [e["kind"] for e in engine.store.events_since(0, session_id=session_id)]
    assert kinds[0] == "session.created" and kinds.count("image.added") == 2
    assert kinds[-1] == "analysis.created"


def test_switches_without_a_model_say_unavailable(engine: Engine, rg1_path: Path) -> None:
    session_id = engine.create_study_session()["session_id"]
    engine.add_image_to_session(session_id, rg1_path, auto_analyze=False)
    result = engine.analyze_image(session_id, classify=True, detect=True, segment=False, generate_report=True)
    for key in ("detections", "report"):  # the dev pack has no detector and (yet) no language model
        assert result[key]["status"] == "unavailable" and result[key]["reason"]
    assert result["classification"]["status"] == "ok" and "segmentation" not in result
    nothing = engine.analyze_image(session_id, preset="report_only")
    assert nothing["model_trained"] is None and "no analysis ran" in nothing["note"]


def test_user_type_override_is_respected(engine: Engine, rg1_path: Path) -> None:
    session_id = engine.create_study_session()["session_id"]
    added = engine.add_image_to_session(session_id, rg1_path, image_type="Other")
    assert added["type"] == "Other" and added["type_source"] == "user"
    with pytest.raises(MedVisionError) as err:
        engine.analyze_image(session_id, preset="quick")
    assert err.value.code is ErrorCode.INVALID_IMAGE_TYPE
    ct = engine.add_image_to_session(session_id, get_testdata_file("CT_small.dcm"), image_type="CXR")
    assert ct["auto_analysis"]["classification"]["status"] == "ok"  # the user said it is a CXR


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda e, s: e.get_session_status("nope"), ErrorCode.SESSION_NOT_FOUND),
        (lambda e, s: e.analyze_image(s), ErrorCode.IMAGE_NOT_FOUND),
        (lambda e, s: e.analyze_image(s, image_id="nope"), ErrorCode.IMAGE_NOT_FOUND),
        (lambda e, s: e.switch_image(s, "nope"), ErrorCode.IMAGE_NOT_FOUND),
        (lambda e, s: e.add_image_to_session(s, "/no/such/file.dcm"), ErrorCode.FILE_NOT_FOUND),
        (lambda e, s: e.add_image_to_session(s, get_testdata_file("CT_small.dcm"), image_type="XRAY"),
         ErrorCode.INVALID_ARGUMENT),
        (lambda e, s: e.add_image_to_session(s, get_testdata_file("rtplan.dcm")), ErrorCode.UNSUPPORTED_FORMAT),
        (lambda e, s: e.analyze_image(s, preset="everything"), ErrorCode.INVALID_ARGUMENT),
        (lambda e, s: e.create_study_session(metadata=[1]), ErrorCode.INVALID_ARGUMENT),
    ],
)
def test_bad_input_is_a_coded_error_and_stores_nothing(engine: Engine, call, code: ErrorCode) -> None:
    session_id = engine.create_study_session()["session_id"]
    before = engine.store.last_event_id()
    with pytest.raises(MedVisionError) as err:
        call(engine, session_id)
    assert err.value.code is code
    assert "/no/such" not in err.value.message
    assert engine.store.events_since(before) == []
    assert engine.store.blobs.ids_on_disk() == set()


def test_corrupt_dicom_loses_nothing(engine: Engine, rg1_path: Path, tmp_path: Path) -> None:
    session_id = engine.create_study_session()["session_id"]
    engine.add_image_to_session(session_id, rg1_path, auto_analyze=False)
    broken = tmp_path / "broken.dcm"
    data = bytearray(rg1_path.read_bytes())
    broken.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(MedVisionError) as err:
        engine.add_image_to_session(session_id, broken)
    assert err.value.code is ErrorCode.IMAGE_DECODE_ERROR
    assert len(engine.get_session_status(session_id)["images"]) == 1


def test_deleting_a_session_removes_its_encrypted_files(engine: Engine, rg1_path: Path) -> None:
    keep = engine.create_study_session()["session_id"]
    drop = engine.create_study_session()["session_id"]
    engine.add_image_to_session(keep, rg1_path, auto_analyze=False)
    engine.add_image_to_session(drop, rg1_path, auto_analyze=False)  # same file: shared blob
    engine.add_image_to_session(drop, get_testdata_file("MR_small.dcm"), auto_analyze=False)
    assert len(engine.store.blobs.ids_on_disk()) == 2
    assert engine.delete_session(drop)["images"] == 2
    assert len(engine.store.blobs.ids_on_disk()) == 1  # RG1 is still used by the kept session
    with pytest.raises(MedVisionError):
        engine.get_session_status(drop)
    assert engine.analyze_image(keep, preset="quick")["classification"]["status"] == "ok"
