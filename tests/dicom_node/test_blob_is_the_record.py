"""Issue 19.1: an instance is acknowledged once its blob (with its sealed index record) is
durable; its rows follow. A crash in between loses nothing; a row whose blob is gone is
reported; a row write failing after the acknowledgement is retried."""

from __future__ import annotations

import logging
import signal

import pydicom
from pydicom.data import get_testdata_file
from pynetdicom import AE

from dicom_node.ingest import ANALYZE_JOB
from engine.store import Store
from engine.store.database import Database
from engine.store.keys import resolve_key
from engine.store.store import DATABASE_NAME
from tests.dicom_node.conftest import free_port, make_instance, node_process, same_dataset, storescu


def test_kill_9_between_the_acknowledgement_and_the_row_write_loses_nothing(home, model_pack) -> None:
    source = get_testdata_file("RG1_UNCR.dcm")  # a chest X-ray: analysed on arrival
    ds = pydicom.dcmread(source)
    port = free_port()
    # Rows wait for the release (or an hour): the kill lands between the 0x0000 and them.
    process = node_process(home, port, model_pack, "--index-interval", "3600")
    scu = AE(ae_title="MODALITY")
    scu.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = scu.associate("127.0.0.1", port)
    try:
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0x0000
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        assoc.abort()
    raw = Database(home / DATABASE_NAME, resolve_key(home, home / DATABASE_NAME, use_keyring=False))
    try:  # the database as the kill left it: no row yet, the association open
        assert raw.query("SELECT count(*) AS n FROM images")[0]["n"] == 0
        (association,) = raw.query("SELECT id, state FROM dicom_associations WHERE calling_ae = 'MODALITY'")
        assert association["state"] == "open"
    finally:
        raw.close()
    assert len(list((home / "blobs").glob("*/*.mvb"))) == 1

    for _ in range(2):  # the store opened (twice): indexed from its blob, once
        store = Store.open(home, use_keyring=False)
        try:
            (image,) = store.db.query("SELECT * FROM images")
            assert same_dataset(source, store.image_bytes(image))
            assert image["type"] == "CXR" and image["sop_instance_uid"] == ds.SOPInstanceUID
            session = store.get_session(image["session_id"])
            assert session["study_instance_uid"] == ds.StudyInstanceUID and session["current_image_id"] == image["id"]
            (job,) = store.db.query("SELECT kind, status, image_id FROM jobs")
            assert (job["kind"], job["status"], job["image_id"]) == (ANALYZE_JOB, "queued", image["id"])
            (receipt,) = store.db.query("SELECT association_id, calling_ae FROM dicom_received")
            assert receipt == {"association_id": association["id"], "calling_ae": "MODALITY"}
        finally:
            store.close()

    process = node_process(home, port, model_pack, "--no-analyze")  # restart, resend: still once
    try:
        assert storescu(port, [source]).returncode == 0
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    store = Store.open(home, use_keyring=False)
    try:
        assert [r["id"] for r in store.db.query("SELECT id FROM images")] == [image["id"]]
        assert len(store.db.query("SELECT id FROM jobs")) == 1
        assert {p.stem for p in store.blobs.root.glob("*/*.mvb")} == {image["blob_id"]}
    finally:
        store.close()


def test_a_row_whose_blob_is_gone_is_reported_at_start(start_node, node_engine, tmp_path, caplog) -> None:
    node = start_node(analyze=False)
    assert storescu(node.port, [make_instance(tmp_path / "a.dcm")]).returncode == 0
    (image,) = node_engine.store.db.query("SELECT id, blob_id FROM images")
    node_engine.store.blobs.delete(image["blob_id"])
    with caplog.at_level(logging.ERROR, logger="dicom_node"):
        start_node(analyze=False)
    assert f"DATABASE_ERROR: 1 image row(s) point to a missing blob: image {image['id']}" in caplog.text


def test_a_row_write_failing_after_the_acknowledgement_is_retried_and_the_blob_kept(
        start_node, node_engine, tmp_path, monkeypatch) -> None:
    """Disk full at the row write (the 0x0000 is out already): the blob stays the record,
    the write is retried until it succeeds."""
    import time

    from engine.errors import ErrorCode, MedVisionError

    store, full = node_engine.store, [True]
    real = store.dicom.add_instances

    def add_instances(instances: list[dict]) -> list[dict]:
        if full[0]:
            raise MedVisionError(ErrorCode.DISK_FULL, "no space left on the data disk")
        return real(instances)

    monkeypatch.setattr(store.dicom, "add_instances", add_instances)
    node = start_node(analyze=False)
    path = make_instance(tmp_path / "a.dcm")
    assert storescu(node.port, [path]).returncode == 0  # acknowledged: the blob is durable
    assert store.db.query("SELECT count(*) AS n FROM images")[0]["n"] == 0
    (blob,) = [p.stem for p in store.blobs.root.glob("*/*.mvb")]
    full[0] = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not store.db.query("SELECT id FROM images"):
        time.sleep(0.1)
    (image,) = store.db.query("SELECT * FROM images")
    assert image["blob_id"] == blob and same_dataset(path, store.image_bytes(image))
