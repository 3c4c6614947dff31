"""C-ECHO and C-STORE from DCMTK echoscu/storescu: every transfer syntax, one row each."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node.config import NodeConfig, load
from tests.dicom_node.conftest import echoscu, make_instance, same_dataset, storescu

# (file, storescu flag proposing its own transfer syntax, so nothing is transcoded)
REAL_FILES = [
    ("CT_small.dcm", "-xe"),                       # explicit VR little endian
    ("MR_small_bigendian.dcm", "-xb"),             # explicit VR big endian
    ("rtplan.dcm", "-xi"),                         # implicit VR, a non-image storage class
    ("image_dfl.dcm", "-xd"),                      # deflated
    ("MR_small_RLE.dcm", "-xr"),                   # RLE lossless
    ("SC_rgb_dcmtk_+eb+cr.dcm", "-xy"),            # JPEG baseline
    ("JPEG-lossy.dcm", "-xx"),                     # JPEG extended (12 bit)
    ("JPEG-LL.dcm", "-xs"),                        # JPEG lossless SV1
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),      # JPEG-LS lossless
    ("JPEGLSNearLossless_16.dcm", "-xu"),          # JPEG-LS near-lossless
    ("emri_small_jpeg_2k_lossless.dcm", "-xv"),    # JPEG 2000 lossless, Enhanced MR
    ("RG1_J2KI.dcm", "-xw"),                       # JPEG 2000 (pydicom-data, CR)
    ("color3d_jpeg_baseline.dcm", "-xy"),          # JPEG baseline, US multi-frame
]


def test_echo(node) -> None:
    result = echoscu(node.port)
    assert result.returncode == 0, result.stderr


def _unique_copy(name: str, folder: Path) -> Path:
    """The test file with its own SOP Instance UID (several share MR_small's)."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / name)
    return folder / name


def test_every_transfer_syntax_stored_byte_equivalent_once(node, node_engine, tmp_path) -> None:
    store = node_engine.store
    for name, flag in REAL_FILES:
        path = _unique_copy(name, tmp_path)
        result = storescu(node.port, [path], flag)
        assert result.returncode == 0 and "Failed" not in result.stderr, (name, result.stderr[-800:])
        sop_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        rows = store.db.query("SELECT * FROM images WHERE sop_instance_uid = ?", (sop_uid,))
        assert len(rows) == 1, name
        stored = store.blobs.read_bytes(rows[0]["blob_id"])
        assert same_dataset(Path(path), stored), name
        expected = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert pydicom.dcmread(io.BytesIO(stored)).file_meta.TransferSyntaxUID == expected, name
    assert store.db.query("SELECT count(*) AS n FROM images")[0]["n"] == len(REAL_FILES)
    assert not list(store.blobs.root.glob("*/*.tmp"))  # no receive left a temp blob


def test_duplicates_are_idempotent_and_studies_group_into_sessions(node, node_engine, tmp_path) -> None:
    store = node_engine.store
    first = make_instance(tmp_path / "a.dcm", study="1.2.3.4", series="1.2.3.4.1")
    second = make_instance(tmp_path / "b.dcm", study="1.2.3.4", series="1.2.3.4.2", seed=1)
    other = make_instance(tmp_path / "c.dcm", study="1.2.3.5", series="1.2.3.5.1", seed=2)
    assert storescu(node.port, [first, second, other]).returncode == 0
    assert storescu(node.port, [first, first]).returncode == 0  # resent: success, no new row
    images = store.db.query("SELECT session_id, series_instance_uid, study_instance_uid FROM images")
    assert len(images) == 3
    sessions = {r["study_instance_uid"]: r["session_id"] for r in images}
    assert len(set(sessions.values())) == 2
    assert store.get_session(sessions["1.2.3.4"])["study_instance_uid"] == "1.2.3.4"
    assert store.db.query("SELECT sum(duplicates) AS n FROM dicom_associations")[0]["n"] == 2
    blob_files = {p.stem for p in store.blobs.root.glob("*/*.mvb")}
    assert blob_files == {r["id"] for r in store.db.query("SELECT id FROM blobs")}


def test_any_proposed_storage_class_is_negotiated(node, node_engine, tmp_path) -> None:
    """No fixed context table: 127 contexts (storage classes, a private one) all accepted.

    DCMTK storescu refuses unknown SOP classes on its side, so pynetdicom's SCU proposes here.
    """
    from pynetdicom import AE, AllStoragePresentationContexts

    private = "1.3.6.1.4.1.5962.99.1.2"
    ds = pydicom.dcmread(make_instance(tmp_path / "private.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = private
    scu = AE(ae_title="PYSCU")
    scu.requested_contexts = AllStoragePresentationContexts[-126:]
    scu.add_requested_context(private, ExplicitVRLittleEndian)
    assoc = scu.associate("127.0.0.1", node.port)
    try:
        assert assoc.is_established
        assert {cx.abstract_syntax for cx in assoc.accepted_contexts} \
            == {cx.abstract_syntax for cx in scu.requested_contexts} and len(scu.requested_contexts) == 127
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    assert node_engine.store.db.query("SELECT sop_class_uid FROM images")[0]["sop_class_uid"] == private


def test_config_file_and_flags(tmp_path) -> None:
    import argparse

    from dicom_node.config import add_arguments

    config_file = tmp_path / "node.toml"
    config_file.write_text('ae_title = "WS1"\nport = 4242\nallowed_callers = ["CT1@10.0.0.2"]\n'
                           '[destination]\nae_title = "PACS"\nhost = "10.0.0.9"\nport = 104\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = load(parser.parse_args(["--config", str(config_file), "--port", "5000", "--max-associations", "2"]))
    assert (config.ae_title, config.port, config.max_associations) == ("WS1", 5000, 2)
    assert config.bind_address == "127.0.0.1" and config.destination.port == 104
    assert config.caller_allowed("CT1", "10.0.0.2") and not config.caller_allowed("CT1", "10.0.0.3")
    try:
        NodeConfig(ae_title="BAD\\TITLE")
    except Exception as exc:  # noqa: BLE001 - the message names the bad argument
        assert '"ae_title"' in str(exc)
    else:
        raise AssertionError("a backslash in an AE title was accepted")
