"""Registration of a moved RG1 onto RG1, and two analysed sessions compared (engine and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from engine.analysis.compare import compare_findings, normalised, register_radiographs
from engine.cli import main
from engine.errors import ErrorCode, MedVisionError
from engine.events import EventKind
from tests.priors.rg1 import moved, rg1_variant, similarity


@pytest.fixture(scope="module")
def rg1_pixels(rg1_path: Path) -> np.ndarray:
    return pydicom.dcmread(rg1_path).pixel_array


def test_registration_recovers_a_known_rotation_scale_and_shift(rg1_pixels: np.ndarray) -> None:
    rows, columns = rg1_pixels.shape
    truth = similarity(rows, columns, angle_deg=-6.0, scale=1.08, shift_xy=(35.0, -25.0))
    prior = moved(rg1_pixels, truth) * 0.7 + 900  # another exposure: gain and offset differ
    result = register_radiographs(normalised(rg1_pixels, invert=True), normalised(prior, invert=True))
    found = result["transform"]
    assert found["rotation_deg"] == pytest.approx(-6.0, abs=0.2)
    assert found["scale"] == pytest.approx(1.08, abs=0.005)
    # where the matrix sends the image's points: within 3 px of the truth everywhere
    corners = np.array([[0, 0, 1], [columns - 1, 0, 1], [0, rows - 1, 1], [columns - 1, rows - 1, 1]], float).T
    assert np.abs(result["matrix"] @ corners - truth @ corners).max() < 3.0
    quality = result["quality"]
    assert quality["good"] and quality["ncc_after"] > 0.95 > quality["ncc_before"]
    assert result["aligned"].shape == rg1_pixels.shape and result["difference"].shape == rg1_pixels.shape
    # the difference of an aligned copy is small where both have data
    assert float(np.abs(result["difference"][result["valid"]]).mean()) < 0.05


def test_findings_change_names_models_and_thresholds() -> None:
    def analysis(p: float, model: str) -> dict:
        return {"classification": {"model": {"id": model}, "model_trained": False, "findings": [
            {"label": "Effusion", "probability": p, "threshold": 0.5, "positive": p >= 0.5}]}}
    table = compare_findings(analysis(0.8, "densenet-a"), analysis(0.3, "densenet-b"))
    row = table["findings"][0]
    assert row == {"label": "Effusion", "current_probability": 0.8, "prior_probability": 0.3, "delta": 0.5,
                   "current_threshold": 0.5, "prior_threshold": 0.5, "current_positive": True,
                   "prior_positive": False, "change": "new"}
    assert (table["current_model"], table["prior_model"], table["same_model"]) == ("densenet-a", "densenet-b", False)
    assert "different models" in table["note"]


def test_two_analysed_sessions_compared_and_priors_listed(engine, rg1_path: Path, tmp_path: Path) -> None:
    prior_file = tmp_path / "prior.dcm"
    prior_file.write_bytes(rg1_variant(study_date="20030115", transform=similarity(1955, 1841, 3.0, 0.95, (20, 10))))
    other_issuer = tmp_path / "other.dcm"
    other_issuer.write_bytes(rg1_variant(study_date="20020101", issuer="ELSEWHERE"))
    current = engine.create_study_session("current")["session_id"]
    engine.add_image_to_session(current, rg1_path)  # analysed on arrival (CXR)
    prior = engine.create_study_session("prior")["session_id"]
    engine.add_image_to_session(prior, prior_file)
    stranger = engine.create_study_session("other issuer")["session_id"]
    engine.add_image_to_session(stranger, other_issuer)

    listed = engine.list_priors(current)
    assert [p["session_id"] for p in listed["priors"]] == [prior]  # the other issuer's is another patient
    assert engine.list_priors(prior)["priors"] == []  # the current is later, not a prior

    result = engine.compare_with_prior(current, prior)
    assert result["same_patient"] and not result["warnings"]
    findings = result["findings"]
    assert findings["current_model"] and findings["current_model"] == findings["prior_model"]
    assert len(findings["findings"]) > 5 and all(
        r["delta"] == pytest.approx(r["current_probability"] - r["prior_probability"], abs=1e-6)
        for r in findings["findings"])
    registration = result["registration"]
    assert registration["status"] == "ok" and registration["quality"]["good"]
    assert registration["transform"]["rotation_deg"] == pytest.approx(3.0, abs=0.3)
    assert result["prior_study"]["study_date"] == "20030115"

    # by Study Instance UID, as a retrieved study is named
    prior_uid = result["prior_study"]["study_uid"]
    assert engine.compare_with_prior(current, prior_uid, register=False)["prior_session_id"] == prior
    with pytest.raises(MedVisionError) as error:
        engine.compare_with_prior(current, "1.2.3.4.5")
    assert error.value.code == ErrorCode.SESSION_NOT_FOUND

    last = engine.last_event_id()
    engine.record_priors(current, listed["priors"])
    assert engine.get_session_status(current)["priors"][0]["session_id"] == prior
    assert [e.kind for e in engine.events_since(last)] == [EventKind.SESSION_PRIORS]

    out = tmp_path / "compare.json"
    code = main(["--home", str(engine.settings.home), "--pack", str(engine.settings.model_pack), "compare", current,
                 "--prior", prior, "--json", str(out), "--no-register"])
    assert code == 0 and json.loads(out.read_text())["prior_session_id"] == prior
    assert main(["--home", str(engine.settings.home), "compare", current, "--prior", "nonexistent"]) == 2


def test_a_volume_position_is_found_in_the_prior_by_patient_coordinates() -> None:
    from engine.analysis.compare import corresponding_voxel
    from engine.imaging.volume import Volume

    def volume(origin: tuple[float, float, float], frame: str | None, spacing: float = 1.0) -> Volume:
        affine = np.diag([0.7, 0.7, spacing, 1.0])
        affine[:3, 3] = origin
        return Volume(voxels=np.zeros((40, 64, 64), np.float32), affine=affine, spacing_zyx=(spacing, 0.7, 0.7),
                      source_uids=tuple(str(i) for i in range(40)), warnings=(), modality="CT", series_uid=None,
                      frame_of_reference_uid=frame)

    current = volume((-20.0, -30.0, 100.0), "1.2.3")
    prior = volume((-20.7, -30.0, 95.0), "1.2.3", spacing=2.5)  # another table position and slice thickness
    found = corresponding_voxel(current, prior, [10, 20, 12])
    # patient (-13, -16, 112): prior x (-13 + 20.7) / 0.7 = 11, y 20, z (112 - 95) / 2.5 = 6.8
    assert found["basis"] == "frame_of_reference" and found["inside"]
    assert found["voxel_xyz"] == pytest.approx([11.0, 20.0, 6.8], abs=1e-6)
    assert corresponding_voxel(current, prior, [63, 20, 12])["inside"] is False  # past the prior's last column

    elsewhere = volume((-20.0, -30.0, 100.0), "9.9.9")
    with pytest.raises(MedVisionError) as error:
        corresponding_voxel(current, elsewhere, [0, 0, 0])
    assert error.value.code == ErrorCode.INVALID_ARGUMENT
    shift = np.eye(4)
    shift[2, 3] = -5.0  # registration: the prior's patient sits 5 mm lower
    assert corresponding_voxel(current, elsewhere, [0, 0, 10], registration=shift)["voxel_xyz"] == \
        pytest.approx([0, 0, 5])
