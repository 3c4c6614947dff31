"""Training-free lung fields on the real RG1 film, and the region service's use of them.

With an untrained organ model the region's anatomy comes from image processing
(``lung_fields_classical``), never from the untrained PSPNet's masks; a trained organ
model (the same pack with its manifest saying so) keeps ``organ_masks``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from engine.analysis.lung_fields import METHOD, find_lung_fields, locate_in_fields
from engine.api import Engine
from engine.config import Settings
from engine.imaging import DecodedImage
from engine.imaging.regions import parse_region, region_mask

#: The box from issue 15: the patient's right upper/middle lung on RG1 (relative coordinates).
ISSUE_BOX = [0.12, 0.25, 0.42, 0.55]
#: The patient's left lower zone of RG1 (image right, just above the left hemidiaphragm).
LEFT_LOWER_BOX = [0.62, 0.58, 0.82, 0.70]


def _mask(decoded: DecodedImage, box: list[float]) -> np.ndarray:
    parsed = parse_region({"type": "bbox", "coordinates": box, "format": "relative"}, decoded.rows, decoded.columns)
    return region_mask(parsed, decoded.rows, decoded.columns)


@pytest.fixture(scope="module")
def fields(rg1: DecodedImage):
    return find_lung_fields(rg1)


def test_rg1_lung_fields_lie_either_side_of_the_midline(rg1: DecodedImage, fields) -> None:
    assert rg1.metadata["PatientOrientation"] == ["L", "F"]  # image right is the patient's left
    assert fields.right is not None and fields.left is not None
    right_x, left_x = np.nonzero(fields.right)[1], np.nonzero(fields.left)[1]
    assert right_x.max() < fields.midline_x < left_x.min()  # the patient's right lung on the image left
    assert 0.4 * rg1.columns < fields.midline_x < 0.6 * rg1.columns
    for mask in (fields.right, fields.left):  # each field is a lung-sized, not image-sized, area
        assert 0.08 < mask.mean() < 0.3
        rows = np.flatnonzero(mask.any(axis=1))
        assert rows[0] > 0.03 * rg1.rows and rows[-1] < 0.9 * rg1.rows


def test_issue_box_is_the_right_lung_not_the_left_hilum(rg1: DecodedImage, fields) -> None:
    where = locate_in_fields(_mask(rg1, ISSUE_BOX), fields, reason="the organ model is untrained")
    assert where["method"] == METHOD and where["side"] == "right"
    assert where["primary"].startswith("right lung field, ")
    assert "left" not in where["primary"] and "hilum" not in where["primary"]
    shares = where["zones"]["right lung field"]
    # y 0.25-0.55 of a lung field spanning about 0.07-0.77: upper and middle thirds, not the lower one
    assert shares["lower"] < 0.1 and shares["upper"] > 0.1 and shares["middle"] > shares["upper"]
    assert "image processing" in where["note"] and "untrained" in where["note"]


def test_left_lower_zone_box(rg1: DecodedImage, fields) -> None:
    where = locate_in_fields(_mask(rg1, LEFT_LOWER_BOX), fields)
    assert where["method"] == METHOD and where["side"] == "left"
    assert where["primary"].startswith("left lung field, lower zone")


def test_patient_orientation_swaps_the_sides(rg1: DecodedImage) -> None:
    mirrored = dataclasses.replace(rg1, metadata=rg1.metadata | {"PatientOrientation": ["R", "F"]})
    fields = find_lung_fields(mirrored)
    assert not fields.patient_right_on_image_left and "R/F" in fields.orientation_source
    where = locate_in_fields(_mask(mirrored, ISSUE_BOX), fields)
    assert where["side"] == "left" and where["primary"].startswith("left lung field")


def test_a_box_between_the_lungs_is_central(rg1: DecodedImage, fields) -> None:
    where = locate_in_fields(_mask(rg1, [0.45, 0.3, 0.55, 0.6]), fields)
    assert where["side"] == "central" and where["method"] == METHOD


def test_region_service_uses_lung_fields_with_the_untrained_pack(engine: Engine) -> None:
    session = engine.create_study_session("chest")["session_id"]
    engine.add_image_to_session(session, get_testdata_file("RG1_UNCR.dcm"), auto_analyze=False)
    region = {"type": "bbox", "coordinates": ISSUE_BOX, "format": "relative"}
    result = engine.analyze_selected_region(session, region, question="what is here?", actions=["describe", "compare"])
    anatomy = result["region_info"]["anatomy"]
    assert anatomy["method"] == METHOD and anatomy["side"] == "right" and "hilum" not in anatomy["primary"]
    assert result["description"].startswith("Selected bbox region in the right lung field")
    assert "no trained model" in result["description"]
    assert result["comparison"]["midline_source"] == "between the lung fields' medial edges"
    image_id = result["image_id"]
    assert engine.store.list_masks(session, image_id, source="organ_seg") == []  # the untrained PSPNet never ran


def test_a_trained_organ_model_keeps_organ_masks(tmp_path: Path, model_pack: Path) -> None:
    pack = tmp_path / "pack"
    pack.mkdir()
    manifest = json.loads((model_pack / "manifest.json").read_text())
    for entry in manifest["models"]:
        (pack / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        (pack / entry["file"]).symlink_to(model_pack / entry["file"])  # the shared pack is only read
        if entry["task"] == "organ_seg":
            entry["trained"] = True
    (pack / "manifest.json").write_text(json.dumps(manifest))
    settings = Settings(home=tmp_path / "home", model_pack=pack, threads=2, use_keyring=False)
    with Engine(settings) as engine:
        session = engine.create_study_session("chest")["session_id"]
        engine.add_image_to_session(session, get_testdata_file("RG1_UNCR.dcm"), auto_analyze=False)
        result = engine.analyze_selected_region(session, {"type": "bbox", "coordinates": ISSUE_BOX,
                                                          "format": "relative"})
    assert result["region_info"]["anatomy"]["method"] == "organ_masks"
