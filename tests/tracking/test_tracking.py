"""Lesions over time (TID 1500 tracking): the change rule, links on annotations, our SR written
and read back (dciodvfy-clean), another producer's SR read, and two studies of one store compared."""

from __future__ import annotations

import io
import json
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import generate_uid

from engine.analysis.sr_read import read_tracked_measurements
from engine.analysis.tracking import change, days_between, new_link, pair_lesions
from engine.cli import main
from engine.errors import ErrorCode, MedVisionError
from engine.events import EventKind
from tests.dciodvfy import dciodvfy
from tests.tracking.studies import SPACING_MM, distance, other_producer_sr, rg1_study


def lesion(uid: str, value: float | None, unit: str = "mm", identifier: str = "target") -> dict:
    return {"identifier": identifier, "uid": uid, "name": "Length", "value": value, "unit": unit}


# -- the rule -------------------------------------------------------------------------
def test_change_in_mm_percent_and_days() -> None:
    paired = pair_lesions([lesion("1.2.3", 12.0), lesion("1.2.4", 5.0, identifier="new one")],
                          [lesion("1.2.3", 10.0), lesion("1.2.9", 7.0, identifier="gone")],
                          current_date="20240301", prior_date="20230115")
    (pair,) = paired["lesions"]
    assert pair["prior"] == 10.0 and pair["current"] == 12.0
    assert pair["change"] == 2.0 and pair["change_percent"] == 20.0 and pair["unit"] == "mm"
    assert pair["days"] == paired["days"] == 411  # 2023-01-15 -> 2024-03-01 (2024 is a leap year)
    assert [x["identifier"] for x in paired["new"]] == ["new one"]
    assert [x["identifier"] for x in paired["not_followed"]] == ["gone"]
    shrunk = change(lesion("1", 8.0), lesion("1", 6.0))
    assert shrunk["change"] == -2.0 and shrunk["change_percent"] == -25.0


def test_a_zero_prior_missing_values_and_other_units_give_no_made_up_change() -> None:
    zero = change(lesion("1", 0.0), lesion("1", 4.0))
    assert zero["change"] == 4.0 and zero["change_percent"] is None and "0" in zero["note"]
    assert change(lesion("1", None), lesion("1", 4.0))["change"] is None
    mixed = change(lesion("1", 10.0, unit="px"), lesion("1", 2.0, unit="mm"))
    assert mixed["change"] is None and "units differ" in mixed["note"]
    assert days_between("2023-01-15", "20240301") is None and days_between("20230230", "20240301") is None
    assert days_between("20240301", "20230115") == -411


def test_a_link_checks_its_uid_and_identifier() -> None:
    made = new_link(None, None, "nodule")
    assert made["identifier"] == "nodule" and pydicom.uid.UID(made["uid"]).is_valid
    assert new_link("lesion A", "1.2.3.4", "x") == {"identifier": "lesion A", "uid": "1.2.3.4"}
    for identifier, uid in (("x", "1.2.03"), ("x", "1." + "2" * 70), ("x", "not-a-uid"), ("", None),
                            ("a" * 65, None), ("two\nlines", None)):
        with pytest.raises(MedVisionError) as caught:
            new_link(identifier, uid, "fallback")
        assert caught.value.code == ErrorCode.INVALID_ARGUMENT


# -- links on annotations ---------------------------------------------------------------
@pytest.fixture
def prior_session(engine, tmp_path: Path) -> tuple[str, str]:
    """A 2023 study of patient TRACK-0 (calibrated RG1): (session id, image id)."""
    path = tmp_path / "prior.dcm"
    path.write_bytes(rg1_study("20230115", "TRACK-0"))
    session = engine.create_study_session("prior")["session_id"]
    return session, engine.add_image_to_session(session, path, auto_analyze=False)["image_id"]


def test_track_and_untrack_an_annotation(engine, prior_session) -> None:
    session, image = prior_session
    measured = distance(session, image, engine, 400, 450, label="nodule")
    assert measured["annotation"]["tracking"] is None
    before = engine.last_event_id()
    linked = engine.track_lesion(session, measured["annotation_id"])
    assert linked["tracking"]["identifier"] == "nodule" and linked["lesion"]["value"] == pytest.approx(50 * SPACING_MM)
    assert linked["lesion"]["unit"] == "mm"
    assert [e.kind for e in engine.events_since(before)] == [EventKind.ANNOTATION_UPDATED]
    (stored,) = engine.get_annotations(session)["annotations"]
    assert stored["tracking"] == linked["tracking"]
    assert engine.tracked_lesions(session)["lesions"][0]["uid"] == linked["tracking"]["uid"]

    other = distance(session, image, engine, 600, 640)
    with pytest.raises(MedVisionError) as taken:  # one lesion, one annotation per study
        engine.track_lesion(session, other["annotation_id"], uid=linked["tracking"]["uid"])
    assert taken.value.code == ErrorCode.INVALID_ARGUMENT
    note = engine.add_annotation(session, image, "text", {"position": [10, 10], "text": "see prior"})
    with pytest.raises(MedVisionError) as text:
        engine.track_lesion(session, note["annotation_id"])
    assert text.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(MedVisionError) as missing:
        engine.track_lesion(session, "nosuchannotation")
    assert missing.value.code == ErrorCode.ANNOTATION_NOT_FOUND

    given = engine.track_lesion(session, other["annotation_id"], identifier="lesion B", uid="1.2.826.0.1.99")
    assert given["tracking"] == {"identifier": "lesion B", "uid": "1.2.826.0.1.99"}
    engine.untrack_lesion(session, measured["annotation_id"])
    assert [x["identifier"] for x in engine.tracked_lesions(session)["lesions"]] == ["lesion B"]
    assert engine.get_annotations(session)["annotations"][0]["tracking"] is None  # the annotation stays


# -- SR written and read back -----------------------------------------------------------
def test_our_sr_carries_the_tracking_and_reads_back(engine, prior_session, tmp_path: Path) -> None:
    session, image = prior_session
    measured = distance(session, image, engine, 400, 475, label="nodule")
    link = engine.track_lesion(session, measured["annotation_id"], identifier="target 1")["tracking"]
    engine.add_annotation(session, image, "bbox", [100, 100, 200, 200], label="untracked box")
    out = tmp_path / "sr"
    engine.export_study(session, "dicom_sr", output_path=out)
    (path,) = [p for p in out.rglob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR"]
    assert not [w for w in dciodvfy(path) if "Tracking" in w]

    sr = hd.sr.srread(path)
    (group,) = [g for g in sr.content.get_planar_roi_measurement_groups() if g.tracking_uid == link["uid"]]
    assert group.tracking_identifier == "target 1"

    report = read_tracked_measurements(pydicom.dcmread(path))
    assert report["manufacturer"] == "MedVision" and report["study_date"] == "20230115"
    (tracked,) = [x for x in report["lesions"] if x["uid"] == link["uid"]]
    assert tracked["identifier"] == "target 1" and tracked["name"] == "Length"
    assert tracked["value"] == pytest.approx(75 * SPACING_MM) and tracked["unit"] == "mm"
    source_uid = engine.store.get_image(image)["sop_instance_uid"]
    assert tracked["referenced_sop_instance_uids"] == [source_uid]
    assert tracked["regions"][0]["points"] == [[400.0, 900.0], [475.0, 900.0]]
    box = [x for x in report["lesions"] if x["identifier"].endswith("untracked box")]
    assert box and box[0]["uid"] != link["uid"] and box[0]["value"] is None  # a region, measured by nothing


def test_another_producers_sr_is_read(rg1_path: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(rg1_path)
    uid = str(generate_uid())
    sr = other_producer_sr(source, identifier="Lesion 7", uid=uid, length_mm=1.25,
                           points=[[100.5, 200.0], [110.0, 200.0], [110.0, 210.0]])
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    report = read_tracked_measurements(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    assert report["manufacturer"] == "Another Vendor"
    (found,) = report["lesions"]
    assert found["identifier"] == "Lesion 7" and found["uid"] == uid and found["finding"] == "Nodule"
    assert (found["name"], found["value"], found["unit"]) == ("Length", 1.25, "mm")
    assert found["measurements"][0]["code"] == ["410668003", "SCT"]
    assert found["referenced_sop_instance_uids"] == [str(source.SOPInstanceUID)]
    assert found["regions"][0]["graphic_type"] == "POLYLINE" and found["regions"][0]["points"][0] == [100.5, 200.0]


def test_what_is_not_a_measurement_report_is_refused(rg1_path: Path) -> None:
    with pytest.raises(MedVisionError) as image:
        read_tracked_measurements(pydicom.dcmread(rg1_path, stop_before_pixels=True))
    assert image.value.code == ErrorCode.INVALID_ARGUMENT
    text = pydicom.Dataset()
    text.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR, no TID 1500 content
    text.ContentSequence = []
    with pytest.raises(MedVisionError) as basic:
        read_tracked_measurements(text)
    assert "Imaging Measurements" in basic.value.message


# -- two studies of one store -----------------------------------------------------------
def test_a_lesion_followed_from_a_prior_in_the_store(engine, prior_session, tmp_path: Path, capsys) -> None:
    prior, prior_image = prior_session
    first = distance(prior, prior_image, engine, 400, 450, label="nodule")  # 10 mm
    uid = engine.track_lesion(prior, first["annotation_id"], identifier="target 1")["tracking"]["uid"]
    path = tmp_path / "current.dcm"
    path.write_bytes(rg1_study("20240301", "TRACK-0"))
    current = engine.create_study_session("current")["session_id"]
    image = engine.add_image_to_session(current, path, auto_analyze=False)["image_id"]

    (seed,) = engine.tracked_lesions(current)["seeds"]
    assert seed["uid"] == uid and seed["prior_session_id"] == prior and seed["value"] == pytest.approx(10.0)
    again = distance(current, image, engine, 400, 460)  # 12 mm
    linked = engine.track_lesion(current, again["annotation_id"], uid=uid)
    assert linked["tracking"] == {"identifier": "target 1", "uid": uid}  # the prior's identifier reused
    assert engine.tracked_lesions(current)["seeds"] == []

    changes = engine.lesion_changes(current)
    assert changes["prior_session_id"] == prior
    (row,) = changes["lesions"]
    assert (row["prior"], row["current"], row["change"], row["change_percent"], row["days"]) == \
        (pytest.approx(10.0), pytest.approx(12.0), pytest.approx(2.0), pytest.approx(20.0), 411)

    with pytest.raises(MedVisionError) as itself:
        engine.lesion_changes(current, current)
    assert itself.value.code == ErrorCode.INVALID_ARGUMENT
    compared = engine.compare_with_prior(current, prior, register=False, analyze=False)
    assert compared["lesions"]["lesions"] == changes["lesions"]
    out = tmp_path / "report.html"
    engine.export_study(current, "html", output_path=out)
    html = out.read_text()
    assert "Tracked lesions" in html and "+2.00 mm" in html and "+20.0 %" in html and ">411<" in html

    assert main(["--home", str(engine.settings.home), "--pack", str(engine.settings.model_pack), "compare", current,
                 "--prior", prior, "--no-register",
                 "--json", str(tmp_path / "compare.json")]) == 0
    assert "lesion target 1: 10.0 -> 12.0 mm (+2.0 mm, +20.0 %) in 411 days" in capsys.readouterr().out
    assert json.loads((tmp_path / "compare.json").read_text())["lesions"]["lesions"][0]["uid"] == uid


def test_a_report_past_the_item_bound_is_refused(rg1_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.analysis import sr_read

    sr = other_producer_sr(pydicom.dcmread(rg1_path), identifier="x", uid=str(generate_uid()), length_mm=1.0,
                           points=[[1.0, 1.0], [2.0, 2.0]])
    assert read_tracked_measurements(sr)["lesions"]
    monkeypatch.setattr(sr_read, "MAX_ITEMS", 10)
    with pytest.raises(MedVisionError) as caught:
        read_tracked_measurements(sr)
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT and "content items" in caught.value.message
