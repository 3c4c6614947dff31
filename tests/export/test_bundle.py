"""What exports read: gather() over a worked session, and over sessions that lack things."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ErrorCode, MedVisionError
from engine.export.bundle import ExportOptions, gather


def test_gather_collects_every_layer_of_a_worked_session(worked) -> None:
    bundle = gather(worked.engine.services, worked.session_id, ExportOptions())
    assert bundle.missing == []
    (item,) = bundle.images
    assert item.classification["findings"] and item.segmentation["organs"]
    assert len(item.similar_cases) == 3
    assert {m.source for m in item.masks} == {"organ_seg", "interactive"}
    assert len([m for m in item.masks if m.source == "organ_seg"]) == 14
    assert {a["type"] for a in item.annotations} >= {"bbox", "polygon", "freehand", "point", "text", "measurement",
                                                       "mask"}
    assert [m["coordinates"]["kind"] for m in item.measurements if "coordinates" in m] == ["distance", "angle"]
    assert bundle.report["session_id"] == worked.session_id and bundle.trace["run_id"] == worked.run_id
    assert bundle.model_trained is False and bundle.banner
    assert {m["task"] for m in bundle.models} >= {"classify", "organ_seg", "embed"}
    assert item.dicom is not None and item.dicom.SOPInstanceUID == item.image["sop_instance_uid"]
    block = bundle.patient_block()
    assert block["deidentified"] is True and "PatientName" not in block


def test_gather_says_what_a_bare_session_lacks(engine, rg1_path: Path) -> None:
    session = engine.create_study_session("bare")["session_id"]
    empty = gather(engine.services, session, ExportOptions())
    assert empty.images == [] and "the session has no images" in empty.missing
    image = engine.add_image_to_session(session, rg1_path, auto_analyze=False)["image_id"]
    bare = gather(engine.services, session, ExportOptions())
    assert f"image {image} has not been analysed" in bare.missing
    assert any("no completed agent run" in m for m in bare.missing) and bare.report is None
    assert bare.model_trained is None and bare.banner is None


def test_gather_rejects_unknown_sessions_images_and_templates(engine, rg1_path: Path) -> None:
    with pytest.raises(MedVisionError) as err:
        gather(engine.services, "nope", ExportOptions())
    assert err.value.code is ErrorCode.SESSION_NOT_FOUND
    session = engine.create_study_session("x")["session_id"]
    with pytest.raises(MedVisionError) as err:
        gather(engine.services, session, ExportOptions(include_images=("missing",)))
    assert err.value.code is ErrorCode.IMAGE_NOT_FOUND
    with pytest.raises(MedVisionError) as err:
        gather(engine.services, session, ExportOptions(template="fancy"))
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
