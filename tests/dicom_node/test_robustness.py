"""Failures answered with the right status and nothing half-written; the node stays up."""

from __future__ import annotations

import errno
import io
import os
import struct
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE

from tests.dicom_node.conftest import echoscu, make_instance, rss_mb, same_dataset, storescu

FAILURES = {0xA700, 0xA701, 0xA900, 0xC210}


def raw_store(port: int, payload: bytes, *, sop_instance: str, sop_class: str = CTImageStorage) -> int | None:
    """Send ``payload`` as a C-STORE data set (any bytes at all); the status, None on abort."""
    scu = AE(ae_title="RAWSCU")
    scu.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.is_established
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = sop_class, sop_instance
    request.DataSet = io.BytesIO(payload)
    assoc._reactor_checkpoint.clear()  # pause the requestor's reactor, as send_c_store does
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, assoc.accepted_contexts[0].context_id)
        _, response = assoc.dimse.get_msg(block=True)
        return None if response is None else int(response.Status)
    finally:
        assoc._reactor_checkpoint.set()
        if assoc.is_established:
            assoc.release()


def encoded(ds: Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def nothing_left(store) -> None:
    """No image row, no blob file, no temp file of a receive."""
    assert store.db.query("SELECT count(*) AS n FROM images")[0]["n"] == 0
    assert not list(store.blobs.root.glob("*/*")) if store.blobs.root.exists() else True


def test_dataset_that_differs_from_the_request_is_refused(node, node_engine, tmp_path) -> None:
    ds = pydicom.dcmread(make_instance(tmp_path / "a.dcm"))
    assert raw_store(node.port, encoded(ds), sop_instance=generate_uid()) == 0xA900
    other_class = raw_store(node.port, encoded(ds), sop_instance=ds.SOPInstanceUID,
                            sop_class="1.2.840.10008.5.1.4.1.1.4")
    assert other_class == 0xA900
    ds.SOPInstanceUID = "../../etc/passwd"  # never a path, and not a UID either
    assert raw_store(node.port, encoded(ds), sop_instance="1.2.3") == 0xA900
    nothing_left(node_engine.store)


def _nested(depth: int) -> bytes:
    """A sequence nested ``depth`` deep, undefined lengths, explicit VR little endian."""
    item_start, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_start, seq_end = b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return (seq_start + item_start) * depth + (item_end + seq_end) * depth


def test_malformed_datasets_fail_and_the_node_stays_up(start_node, node_engine, tmp_path) -> None:
    node = start_node(network_timeout_s=1.5, dimse_timeout_s=1.5)
    ds = pydicom.dcmread(make_instance(tmp_path / "a.dcm", size=64))
    good = encoded(ds)
    header = encoded(Dataset.from_json({"00080016": {"vr": "UI", "Value": [CTImageStorage]},
                                        "00080018": {"vr": "UI", "Value": [ds.SOPInstanceUID]}}))
    absurd = header + struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 0) + b"\x10\x00\x20\x00LO\xf0\xff"
    absurd_ob = header + b"\x09\x00\x10\x10OB\x00\x00" + struct.pack("<I", 0xFFFFFFF0) + b"\x00" * 64
    cases = {
        "garbage": os.urandom(20_000),
        "truncated": good[: len(good) // 2],
        "nested 300 deep": header + _nested(300),
        "absurd short length": absurd,
        "absurd long length": absurd_ob,
        "empty": b"",
    }
    before = rss_mb()
    for _ in range(3):
        for name, payload in cases.items():
            status = raw_store(node.port, payload, sop_instance=ds.SOPInstanceUID)
            assert status is None or status in FAILURES, (name, hex(status))
    assert rss_mb() - before < 50
    assert echoscu(node.port).returncode == 0
    nothing_left(node_engine.store)
    assert raw_store(node.port, good, sop_instance=ds.SOPInstanceUID) == 0x0000  # and it still stores


@pytest.mark.parametrize(("error", "status"), [(errno.ENOSPC, 0xA700), (errno.EIO, 0xA701)])
def test_disk_errors_during_the_write_leave_nothing_and_the_next_association_works(
        node, node_engine, tmp_path, monkeypatch, error, status) -> None:
    """The blob's fsync fails (disk full / I/O error), injected into the real write path."""
    import engine.store.blobs as blobs

    real_fsync, calls = os.fsync, []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(blobs.os, "fsync", failing_fsync)
    path = make_instance(tmp_path / "a.dcm")
    result = storescu(node.port, [path], "-d")
    assert calls and result.returncode != 0 and f"0x{status:04x}" in result.stderr.lower(), result.stderr[-600:]
    nothing_left(node_engine.store)
    monkeypatch.setattr(blobs.os, "fsync", real_fsync)
    assert storescu(node.port, [path]).returncode == 0
    assert node_engine.store.db.query("SELECT count(*) AS n FROM images")[0]["n"] == 1
    failed = node_engine.store.db.query("SELECT failed FROM dicom_associations ORDER BY rowid")
    assert [r["failed"] for r in failed] == [1, 0]


def test_disk_full_while_the_instance_arrives_answers_a700_and_leaves_nothing(
        node, node_engine, tmp_path, monkeypatch) -> None:
    """A chunk sealed mid-receive cannot be written: pynetdicom's decoder never sees the
    error, the association carries on, the peer gets 0xA700, no file stays behind."""
    import engine.store.blobs as blobs

    real_seal, failures = blobs.BlobWriter._seal, []

    def full_disk(self, chunk: bytes, final: bool) -> None:  # noqa: ANN001
        if not final:
            failures.append(len(chunk))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_seal(self, chunk, final)

    monkeypatch.setattr(blobs.BlobWriter, "_seal", full_disk)
    big, small = make_instance(tmp_path / "big.dcm", size=1100), make_instance(tmp_path / "small.dcm")
    result = storescu(node.port, [big, small], "-d", "--no-halt")  # one association: the second one goes in
    assert failures and "0xa700" in result.stderr.lower(), result.stderr[-600:]
    (row,) = node_engine.store.db.query("SELECT * FROM images")
    assert same_dataset(small, node_engine.store.image_bytes(row))
    assert {p.name for p in node_engine.store.blobs.root.glob("*/*")} == {f"{row['blob_id']}.mvb"}


def test_nothing_plaintext_reaches_the_disk(node, node_engine, tmp_path, monkeypatch) -> None:
    """Received bytes are sealed as they arrive: neither the temp blob, read while the
    header is checked, nor the committed blob holds the patient name or the DICOM magic."""
    from dicom_node import spool

    seen: list[bytes] = []
    original_reader = spool.SpoolFile.reader

    def snoop(self):  # noqa: ANN001, ANN202
        seen.append(Path(self.name).read_bytes())
        return original_reader(self)

    monkeypatch.setattr(spool.SpoolFile, "reader", snoop)
    path = make_instance(tmp_path / "a.dcm", size=1100)  # 2.4 MB: two 1 MiB chunks sealed mid-receive
    assert storescu(node.port, [path]).returncode == 0
    (row,) = node_engine.store.db.query("SELECT * FROM images")
    assert len(seen) == 1 and len(seen[0]) > 2 << 20
    for data in (seen[0], node_engine.store.blobs.path_for(row["blob_id"]).read_bytes()):
        assert b"Synthetic" not in data and b"DICM" not in data
    assert same_dataset(path, node_engine.store.image_bytes(row))
