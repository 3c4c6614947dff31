"""PACS fixtures: one real Orthanc per session (tests/pacs/orthanc.py), synthetic studies in it."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_node.config import NodeConfig
from dicom_node.ingest import Ingestor
from dicom_node.pacs.config import ClientSettings, parse_address
from dicom_node.scp import Node
from tests.pacs.orthanc import Orthanc, free_port

#: Our calling AE in the tests (Orthanc knows it as a modality).
CLIENT_AE = "MVTEST"
#: The port our node listens on in the tests, free when the session starts.
CLIENT_PORT = free_port()


def instance_bytes(*, study: str, series: str, patient_id: str = "PACS-1", issuer: str | None = None,
                   size: int = 16, seed: int = 0, study_date: str = "20240102", modality: str = "CT",
                   accession: str = "", number: int = 1) -> bytes:
    """A synthetic 16-bit CT instance as Part 10 bytes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "Pacs^Synthetic", patient_id, modality
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = study_date, "101500", accession
    ds.StudyDescription, ds.SeriesNumber, ds.InstanceNumber = "synthetic study", 1, number
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def study_bytes(count: int, **kwargs) -> tuple[str, list[bytes]]:
    """A new study of ``count`` instances in one series: (Study Instance UID, files)."""
    study, series = generate_uid(), generate_uid()
    return study, [instance_bytes(study=study, series=series, seed=n, number=n + 1, **kwargs) for n in range(count)]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """The session's Orthanc; it knows our client AE as a modality (on :func:`client_port`)."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc"),
                     modalities={"medvision": {"AET": CLIENT_AE, "Host": "127.0.0.1", "Port": CLIENT_PORT}})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client_port(orthanc: Orthanc) -> int:
    """The port our node listens on when Orthanc C-MOVEs to it."""
    return CLIENT_PORT


@pytest.fixture
def settings() -> ClientSettings:
    return ClientSettings(calling_ae=CLIENT_AE, acse_timeout_s=5, network_timeout_s=10, dimse_timeout_s=10,
                          retries=2, backoff_s=0.05)


@pytest.fixture
def archive(orthanc: Orthanc):
    return replace(parse_address(orthanc.address), dicomweb_url=orthanc.dicomweb_url)


@pytest.fixture
def ingestor(engine) -> Iterator[Ingestor]:
    """The node's ingest over the test engine's store (analysis off: no model runs)."""
    worker = Ingestor(engine.store, analyze=False, limits=engine.settings.limits)
    yield worker
    worker.close()


@pytest.fixture
def start_node(engine, client_port: int) -> Iterator[Callable[..., Node]]:
    """Our node on the port Orthanc knows, over the test engine's store; stopped after."""
    nodes: list[Node] = []

    def start(**settings) -> Node:
        config = replace(NodeConfig(ae_title=CLIENT_AE, port=client_port, analyze=False, acse_timeout_s=5,
                                    network_timeout_s=10, dimse_timeout_s=10), **settings)
        node = Node(config, engine).start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def upload(orthanc: Orthanc) -> Callable[..., str]:
    """Upload a new synthetic study to the session's Orthanc: its Study Instance UID."""
    def upload_study(count: int = 3, **kwargs) -> str:
        study, files = study_bytes(count, **kwargs)
        orthanc.upload(files)
        return study
    return upload_study


def stored_sops(engine, study_uid: str) -> list[str]:
    rows = engine.store.db.query("SELECT sop_instance_uid FROM images WHERE study_instance_uid = ?", (study_uid,))
    return sorted(row["sop_instance_uid"] for row in rows)


def orthanc_sops(orthanc: Orthanc, study_uid: str) -> list[str]:
    return sorted(item["MainDicomTags"]["SOPInstanceUID"] for item in orthanc.study_instances(study_uid))


def same_files(orthanc: Orthanc, engine, study_uid: str) -> bool:
    """Every stored instance byte-equal in its dataset to Orthanc's copy (the pixels included)."""
    import pydicom

    held = {}
    for image in engine.store.db.query("SELECT id FROM images WHERE study_instance_uid = ?", (study_uid,)):
        data = engine.store.image_bytes(engine.store.get_image(image["id"]))
        ds = pydicom.dcmread(io.BytesIO(data))
        held[str(ds.SOPInstanceUID)] = ds
    for item in orthanc.study_instances(study_uid):
        source = pydicom.dcmread(io.BytesIO(orthanc.instance_file(item["ID"])))
        copy = held.get(str(source.SOPInstanceUID))
        if copy is None or copy.PixelData != source.PixelData or copy.PatientID != source.PatientID:
            return False
    return True


__all__ = ["Path", "instance_bytes", "study_bytes", "stored_sops", "orthanc_sops", "same_files", "CLIENT_AE"]
