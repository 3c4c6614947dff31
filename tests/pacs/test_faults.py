"""Faults, each against a real peer: PACS down, PACS silent, 0xA801, Orthanc killed mid-retrieve,
a query matching 10,000 studies (paged, memory bounded)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from dicom_node.pacs.config import parse_address
from dicom_node.pacs.connection import echo
from dicom_node.pacs.query import Query, find_all
from dicom_node.pacs.retrieve import Retriever
from engine.errors import ErrorCode, MedVisionError
from tests import bombs
from tests.pacs.conftest import (
    CLIENT_AE,
    CLIENT_PORT,
    instance_bytes,
    orthanc_sops,
    same_files,
    stored_sops,
    study_bytes,
)
from tests.pacs.orthanc import Orthanc, free_port

REPO = Path(__file__).resolve().parents[2]


def test_pacs_down_is_unreachable_after_bounded_retries(settings, ingestor, engine) -> None:
    down = parse_address(f"ORTHANC@127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    for call in (lambda: echo(down, settings), lambda: find_all(down, settings, Query(patient_id="X")),
                 lambda: Retriever(down, settings, ingestor).get("1.2.3")):
        with pytest.raises(MedVisionError) as caught:
            call()
        assert caught.value.code is ErrorCode.PACS_UNREACHABLE
        assert caught.value.details["attempts"] == settings.retries and "unreachable" in caught.value.message
    assert time.monotonic() - started >= 3 * settings.backoff_s  # it waited between attempts
    assert engine.store.db.query("SELECT count(*) AS n FROM images")[0]["n"] == 0


@pytest.fixture
def silent_pacs():
    """A TCP server that accepts connections and never answers (a hung archive)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], held
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_pacs_slow_times_out_after_retries_and_stores_nothing(silent_pacs, settings, ingestor, engine) -> None:
    port, held = silent_pacs
    quick = replace(settings, acse_timeout_s=0.5)
    slow = parse_address(f"ORTHANC@127.0.0.1:{port}")
    with pytest.raises(MedVisionError) as caught:
        Retriever(slow, quick, ingestor).get("1.2.3")
    assert caught.value.code is ErrorCode.PACS_TIMEOUT and caught.value.details["attempts"] == quick.retries
    assert "did not answer within 0.5 s" in caught.value.message
    assert len(held) == quick.retries  # one connection per attempt
    assert engine.store.db.query("SELECT count(*) AS n FROM images")[0]["n"] == 0


@pytest.fixture
def move_scp_a801():
    """A pynetdicom Query/Retrieve SCP that knows no move destination (answers 0xA801)."""
    ae = AE("STRICTPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)

    def on_move(event):
        yield None, None  # no address for the destination: pynetdicom answers 0xA801

    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_MOVE, on_move)])
    yield server.server_address[1]
    server.shutdown()


def test_move_destination_unknown_names_the_ae_the_pacs_must_know(move_scp_a801, settings, ingestor) -> None:
    archive = replace(parse_address(f"STRICTPACS@127.0.0.1:{move_scp_a801}"), services=frozenset({"move"}))
    with pytest.raises(MedVisionError) as caught:
        Retriever(archive, settings, ingestor).move("1.2.3.4", CLIENT_AE, destination_address=("10.0.0.7", 11112))
    error = caught.value
    assert error.code is ErrorCode.MOVE_DESTINATION_UNKNOWN and error.details["status"] == "0xA801"
    assert f"add AE title '{CLIENT_AE}' at 10.0.0.7:11112 to its list of DICOM modalities" in error.message


def test_orthanc_killed_mid_retrieve_keeps_what_arrived_and_resumes_without_duplicates(
        tmp_path, settings, ingestor, engine) -> None:
    server = Orthanc(tmp_path / "orthanc-crash",
                     modalities={"medvision": {"AET": CLIENT_AE, "Host": "127.0.0.1", "Port": CLIENT_PORT}}).start()
    try:
        study, files = study_bytes(20, patient_id="CRASH-1", size=64)
        server.upload(files)
        listed = orthanc_sops(server, study)
        archive = parse_address(server.address)

        def crash(step) -> None:
            if step.done == 5:
                server.kill()

        first = Retriever(archive, settings, ingestor).get(study, progress=crash)
        assert first.aborted and not first.complete and first.status is None
        held = stored_sops(engine, study)
        assert 5 <= len(held) < 20 and set(held) <= set(listed)
        assert sorted(first.missing) == sorted(set(listed) - set(held))
        server.start()  # the archive comes back on the same storage and ports
        assert same_files(server, engine, study) is False  # not all there yet
        rest = Retriever(archive, settings, ingestor).get(study)
        assert rest.complete and rest.already_held == len(held) and rest.stored == 20 - len(held)
        assert stored_sops(engine, study) == listed  # each instance once
        assert same_files(server, engine, study)
    finally:
        server.stop()


def _bulk_instances(count: int) -> list[bytes]:
    """``count`` tiny instances (1x1 pixel), each its own study, of patient BULK-1: one
    template whose UIDs are rewritten in place (same length), so making them costs nothing."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    root = "1.2.826.0.1.3680043.10.543"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = f"{root}.3.1000000000"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{root}.1.1000000000", f"{root}.2.1000000000"
    ds.PatientID, ds.PatientName, ds.Modality = "BULK-1", "Bulk^Many", "CT"
    ds.StudyDate, ds.StudyDescription = "20240101", "bulk study"
    ds.Rows = ds.Columns = 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = b"\0\0"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    template = buffer.getvalue()
    return [template.replace(b".1000000000", b".1%09d" % index) for index in range(1, count + 1)]


BULK = 10_000


@pytest.mark.slow
def test_a_query_matching_10000_studies_is_paged_and_memory_bounded(tmp_path) -> None:
    """10,000 studies of one patient in Orthanc (its storage in /dev/shm when there is one:
    the upload is Orthanc's fsyncs); ``pacs find`` prints every one, holding a page at a time."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    server = Orthanc(folder / "orthanc-bulk",
                     modalities={"medvision": {"AET": CLIENT_AE, "Host": "127.0.0.1", "Port": CLIENT_PORT}}).start()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda data: server.upload([data]), _bulk_instances(BULK - 1)))
        server.upload([instance_bytes(study=generate_uid(), series=generate_uid(), patient_id="BULK-1",
                                      study_date="20230101")])
        assert server.get("/statistics")["CountStudies"] == BULK
        env = os.environ | {"PYTHONPATH": str(REPO)}

        def run(*flags: str) -> bombs.Capped:
            return bombs.run_capped([sys.executable, "-m", "engine.cli", "pacs", "find", "--pacs", server.address,
                                     "--calling-ae", CLIENT_AE, *flags], env=env, cwd=tmp_path, timeout=120)

        everything = run("--patient-id", "BULK-1", "--limit", "20000")
        assert everything.returncode == 0, everything.stderr
        lines = everything.stdout.splitlines()
        assert len(lines) == BULK and len({line.split()[0] for line in lines}) == BULK
        assert everything.stderr.strip().endswith(f"{BULK} studies")
        one = run("--patient-id", "BULK-1", "--date", "20230101")
        assert one.returncode == 0 and len(one.stdout.splitlines()) == 1, one.stderr
        # 10,000 answers cost no more than a bounded amount above a one-answer query
        assert everything.peak_rss_mb - one.peak_rss_mb < 40, (everything.peak_rss_mb, one.peak_rss_mb)
    finally:
        server.stop()
        if folder != tmp_path:
            shutil.rmtree(folder, ignore_errors=True)
