"""Several workstations, one archive (issue 17 part 8): two MedVision data directories, each with
its own store and keys, share the real Orthanc. Workstation A measures a lesion on a study, tracks
it and stores its SR; workstation B, given a later study of the same patient (Patient ID and
issuer), finds the prior in the archive, retrieves it with A's SR, reads A's lesion, measures it
again under A's tracking UID and reports the change."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from dicom_node.ingest import Ingestor
from dicom_node.pacs.priors import fetch_priors
from dicom_node.pacs.store import send_files
from engine.analysis.sr_read import read_tracked_measurements
from engine.api import Engine
from engine.store.keys import KEY_FILE_NAME
from tests.dciodvfy import dciodvfy
from tests.tracking.studies import distance, rg1_study

PATIENT, ISSUER = "TRACK-8", "HOSPITAL-A"


def _sr(folder: Path) -> Path:
    (path,) = [p for p in folder.rglob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR"]
    return path


def test_a_lesion_measured_on_one_workstation_is_followed_on_another(orthanc, archive, settings, model_pack: Path,
                                                                    tmp_path: Path) -> None:
    prior_bytes = rg1_study("20230115", PATIENT, ISSUER)
    prior_uid = str(pydicom.dcmread(io.BytesIO(prior_bytes), stop_before_pixels=True).StudyInstanceUID)
    orthanc.upload([prior_bytes])  # the modality pushed the prior to the archive
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    # workstation A: the prior study, a lesion measured (10 mm) and tracked, its SR stored to the archive
    with Engine(home=tmp_path / "a", model_pack=model_pack) as a:
        (tmp_path / "prior.dcm").write_bytes(prior_bytes)
        session = a.create_study_session("prior")["session_id"]
        image = a.add_image_to_session(session, tmp_path / "prior.dcm", auto_analyze=False)["image_id"]
        measured = distance(session, image, a, 400, 450, label="nodule")
        link = a.track_lesion(session, measured["annotation_id"], identifier="target 1")["tracking"]
        a.export_study(session, "dicom_sr", output_path=tmp_path / "a-out")
        sent = send_files(archive, settings, [_sr(tmp_path / "a-out")])
        assert sent["failed"] == 0
    held = {item["MainDicomTags"]["SOPInstanceUID"] for item in orthanc.study_instances(prior_uid)}
    assert len(held) == 2  # the image and A's SR, under the prior study

    # workstation B: its own data directory and keys; a later study of the same patient
    with Engine(home=tmp_path / "b", model_pack=model_pack) as b:
        assert (tmp_path / "b" / KEY_FILE_NAME).read_bytes() != (tmp_path / "a" / KEY_FILE_NAME).read_bytes()
        (tmp_path / "current.dcm").write_bytes(rg1_study("20240301", PATIENT, ISSUER))
        current = b.create_study_session("current")["session_id"]
        image = b.add_image_to_session(current, tmp_path / "current.dcm", auto_analyze=False)["image_id"]
        assert b.tracked_lesions(current)["seeds"] == []  # nothing known before the archive is asked
        ingestor = Ingestor(b.store, analyze=False, limits=b.settings.limits)
        try:
            fetched = fetch_priors(b, ingestor, settings, [archive], current, count=1)
        finally:
            ingestor.close()
        (prior,) = fetched["priors"]
        assert prior["study_uid"] == prior_uid and prior["complete"] and prior["stored"] == 2
        prior_session = b.store.session_of_study(prior_uid)["id"]
        # A's SR is held as a document of the prior study, never its current image
        rows = b.store.list_images(prior_session)
        assert sorted(r["modality"] for r in rows) == ["CR", "SR"]
        current_image = b.store.get_session(prior_session)["current_image_id"]
        assert next(r for r in rows if r["id"] == current_image)["modality"] == "CR"
        b.export_study(prior_session, "html", output_path=tmp_path / "prior.html")  # the SR is not drawn

        (seed,) = b.tracked_lesions(current)["seeds"]
        assert (seed["uid"], seed["identifier"], seed["source"]) == (link["uid"], "target 1", "sr")
        assert seed["value"] == pytest.approx(10.0) and seed["unit"] == "mm"
        again = distance(current, image, b, 400, 465)  # 13 mm
        assert b.track_lesion(current, again["annotation_id"], uid=seed["uid"])["tracking"] == link

        changes = b.compare_with_prior(current, prior_uid, register=False, analyze=False)["lesions"]
        (row,) = changes["lesions"]
        assert row["uid"] == link["uid"] and row["prior_source"] == "sr"
        assert (row["prior"], row["current"], row["change"], row["change_percent"], row["days"]) == \
            (pytest.approx(10.0), pytest.approx(13.0), pytest.approx(3.0), pytest.approx(30.0), 411)

        b.export_study(current, "dicom_sr", output_path=tmp_path / "b-out")
        b_sr = _sr(tmp_path / "b-out")
        dciodvfy(b_sr)
        (followed,) = [x for x in read_tracked_measurements(pydicom.dcmread(b_sr))["lesions"] if x["uid"] == link["uid"]]
        assert followed["identifier"] == "target 1" and followed["value"] == pytest.approx(13.0)  # A's UID in B's SR
