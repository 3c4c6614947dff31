"""Echo, find, get, move and WADO-RS against the real Orthanc, into the real encrypted store."""

from __future__ import annotations

import threading

import pytest

from dicom_node.pacs.config import parse_address
from dicom_node.pacs.connection import echo
from dicom_node.pacs.query import Query, find, find_all, qido, qido_ping
from dicom_node.pacs.retrieve import Retriever, wado
from engine.errors import ErrorCode, MedVisionError
from tests.pacs.conftest import CLIENT_AE, orthanc_sops, same_files, stored_sops


def test_echo_and_qido_ping(orthanc, archive, settings) -> None:
    answer = echo(archive, settings)
    assert answer["status"] == "0x0000" and answer["ms"] >= 0
    assert qido_ping(archive)["dicomweb_url"] == orthanc.dicomweb_url


def test_find_studies_and_series_by_patient_date_modality_accession(orthanc, archive, settings, upload) -> None:
    study = upload(2, patient_id="FIND-1", study_date="20230405", accession="ACC-77")
    other = upload(1, patient_id="FIND-1", study_date="20240101", modality="MR")
    found = find_all(archive, settings, Query(patient_id="FIND-1"))
    assert {row["study_uid"] for row in found} == {study, other}
    row = next(r for r in found if r["study_uid"] == study)
    assert row["study_date"] == "20230405" and row["accession_number"] == "ACC-77" and row["instances"] == 2
    assert [r["study_uid"] for r in find_all(archive, settings, Query(patient_id="FIND-1", modality="MR"))] == [other]
    dated = find_all(archive, settings, Query(patient_id="FIND-1", study_date="20230101-20231231"))
    assert [r["study_uid"] for r in dated] == [study]
    assert [r["study_uid"] for r in find_all(archive, settings, Query(accession_number="ACC-77"))] == [study]
    series = find_all(archive, settings, Query(study_uid=study), level="series")
    assert len(series) == 1 and series[0]["modality"] == "CT" and series[0]["instances"] == 2
    web = [row for page in qido(archive, Query(patient_id="FIND-1")) for row in page]
    assert {row["study_uid"] for row in web} == {study, other}


def test_same_patient_id_under_two_issuers_is_never_merged(archive, settings, upload) -> None:
    first = upload(1, patient_id="TWIN-7", issuer="HOSPITAL-A")
    second = upload(1, patient_id="TWIN-7", issuer="HOSPITAL-B")
    both = find_all(archive, settings, Query(patient_id="TWIN-7"))
    assert {(row["patient_id"], row["issuer"], row["study_uid"]) for row in both} == {
        ("TWIN-7", "HOSPITAL-A", first), ("TWIN-7", "HOSPITAL-B", second)}
    only_a = find_all(archive, settings, Query(patient_id="TWIN-7", issuer="HOSPITAL-A"))
    assert [(row["issuer"], row["study_uid"]) for row in only_a] == [("HOSPITAL-A", first)]
    web = [row for page in qido(archive, Query(patient_id="TWIN-7", issuer="HOSPITAL-B")) for row in page]
    assert [row["study_uid"] for row in web] == [second]


def test_find_results_come_in_pages(archive, settings, upload) -> None:
    for _ in range(5):
        upload(1, patient_id="PAGED-1")
    pages = list(find(archive, settings, Query(patient_id="PAGED-1"), page_size=2))
    assert [len(page) for page in pages] == [2, 2, 1] and not pages[-1].truncated
    cut = list(find(archive, settings, Query(patient_id="PAGED-1"), page_size=2, limit=3))
    assert sum(map(len, cut)) == 3 and cut[-1].truncated


def test_c_get_stores_every_instance_encrypted_with_progress(orthanc, archive, settings, ingestor, engine,
                                                             upload) -> None:
    study = upload(4, patient_id="GET-1")
    seen = []
    result = Retriever(archive, settings, ingestor).get(study, progress=seen.append)
    assert result.complete and result.status == "0x0000" and result.stored == 4 and result.completed == 4
    assert stored_sops(engine, study) == orthanc_sops(orthanc, study)
    assert [p.done for p in seen] == [1, 2, 3, 4] and seen[-1].remaining == 0
    assert {p.outcome for p in seen} == {"stored"}
    assert same_files(orthanc, engine, study)
    again = Retriever(archive, settings, ingestor).get(study)  # all held: nothing asked for, nothing stored
    assert again.complete and again.already_held == 4 and again.stored == 0 and again.completed == 0
    assert len(stored_sops(engine, study)) == 4


def test_c_move_to_our_node(orthanc, archive, settings, ingestor, engine, upload, start_node) -> None:
    study = upload(3, patient_id="MOVE-1")
    start_node()
    seen = []
    result = Retriever(archive, settings, ingestor).move(study, CLIENT_AE, progress=seen.append)
    assert result.complete and result.completed == 3 and result.status == "0x0000"
    assert stored_sops(engine, study) == orthanc_sops(orthanc, study)
    assert same_files(orthanc, engine, study)
    assert seen and seen[-1].remaining in (0, None)


def test_c_move_to_a_destination_orthanc_does_not_know_names_the_ae_to_add(archive, settings, ingestor,
                                                                           engine, upload) -> None:
    """Orthanc 1.10 answers an unknown move destination with 0xC000 before any sub-operation
    (the standard's 0xA801 is tested against a pynetdicom archive in test_faults.py)."""
    study = upload(1, patient_id="MOVE-2")
    with pytest.raises(MedVisionError) as caught:
        Retriever(archive, settings, ingestor).move(study, "NOBODY", destination_address=("127.0.0.1", 11112))
    error = caught.value
    assert error.code is ErrorCode.PACS_REFUSED and error.details["status"] == "0xC000"
    assert "'NOBODY' at 127.0.0.1:11112" in error.message and "modalities" in error.message
    assert stored_sops(engine, study) == []


def test_wado_rs_goes_through_the_same_ingest(orthanc, archive, ingestor, engine, upload) -> None:
    study = upload(2, patient_id="WADO-1")
    result = wado(archive, ingestor, study)
    assert result.complete and result.stored == 2
    assert stored_sops(engine, study) == orthanc_sops(orthanc, study)
    assert same_files(orthanc, engine, study)


def test_cancel_stops_a_c_get_and_the_rest_is_resumable(orthanc, archive, settings, ingestor, engine,
                                                        upload) -> None:
    study = upload(12, patient_id="CANCEL-1")
    cancel = threading.Event()

    def progress(step) -> None:
        if step.done == 3:
            cancel.set()

    first = Retriever(archive, settings, ingestor).get(study, progress=progress, cancel=cancel)
    assert first.cancelled and not first.complete
    held = stored_sops(engine, study)
    assert 3 <= len(held) < 12 and sorted(first.missing) == sorted(set(orthanc_sops(orthanc, study)) - set(held))
    rest = Retriever(archive, settings, ingestor).get(study)
    assert rest.complete and rest.already_held == len(held) and rest.stored == 12 - len(held)
    assert stored_sops(engine, study) == orthanc_sops(orthanc, study)


def test_an_archive_not_configured_for_a_service_is_refused(archive, settings, ingestor) -> None:
    from dataclasses import replace

    find_only = replace(archive, services=frozenset({"find"}))
    with pytest.raises(MedVisionError) as caught:
        Retriever(find_only, settings, ingestor).get("1.2.3")
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT and "not configured for get" in caught.value.message


def test_bad_addresses_and_keys_are_coded_errors() -> None:
    for spec in ("ORTHANC@host", "@host:104", "WAY-TOO-LONG-AE-TITLE@h:104", "A@h:99999"):
        with pytest.raises(MedVisionError) as caught:
            parse_address(spec)
        assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    for bad in ({"study_date": "2024-01-01"}, {"patient_id": "A\\B"}, {"study_uid": "1.02.3"}):
        with pytest.raises(MedVisionError):
            Query(**bad)


def test_partial_retrieve_reports_the_archives_warning_and_failed_instances(orthanc, archive, settings, engine) -> None:
    """An instance our ingest refuses (over the decode limits: 0xA700) is a failed sub-operation:
    Orthanc ends with 0xB000 and lists it; the rest is stored and the result says what is missing."""
    from pydicom.uid import generate_uid

    from dicom_node.ingest import Ingestor
    from engine.config import DecodeLimits
    from tests.pacs.conftest import instance_bytes

    study, series = generate_uid(), generate_uid()
    small = [instance_bytes(study=study, series=series, size=16, seed=n, patient_id="PART-1") for n in range(2)]
    large = instance_bytes(study=study, series=series, size=64, seed=9, patient_id="PART-1")
    orthanc.upload([*small, large])
    import io

    import pydicom

    large_uid = str(pydicom.dcmread(io.BytesIO(large)).SOPInstanceUID)
    strict = Ingestor(engine.store, analyze=False, limits=DecodeLimits(max_image_pixels=16 * 16))
    try:
        result = Retriever(archive, settings, strict).get(study)
    finally:
        strict.close()
    assert result.status == "0xB000" and result.completed == 2 and result.failed == 1
    assert large_uid in result.failed_uids and result.missing == [large_uid] and not result.complete
    assert result.to_dict()["resumable"] and len(stored_sops(engine, study)) == 2
