"""Issue 14, items 4 and 5: the node's log level, the duplicate policy and its event,
and the association limit counting only accepted associations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from engine.events import EventKind
from tests.dicom_node.conftest import (
    REPO,
    echoscu,
    free_port,
    make_instance,
    same_dataset,
    storescu,
)


def wait_for(check: Callable[[], object], timeout: float = 20, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def resend_with_other_pixels(original: Path, folder: Path) -> Path:
    """The same SOP Instance UID, other pixel values (a corrected resend)."""
    ds = pydicom.dcmread(original)
    pixels = bytearray(ds.PixelData)
    pixels[:64] = bytes(64)
    ds.PixelData = bytes(pixels)
    ds.save_as(folder / "corrected.dcm", enforce_file_format=True)
    return folder / "corrected.dcm"


def node_status(home: Path, capsys) -> dict:  # noqa: ANN001
    from dicom_node.scp import main

    assert main(["status", "--home", str(home), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def duplicate_events(store) -> list[dict]:  # noqa: ANN001
    return [e for e in store.events_since(0, limit=10_000) if e["kind"] == EventKind.DICOM_DUPLICATE]


def stored_copy(store, image_id: str) -> bytes:  # noqa: ANN001
    blob_id = store.db.query("SELECT blob_id FROM images WHERE id = ?", (image_id,))[0]["blob_id"]
    return store.blobs.read_bytes(blob_id)


# -- item 4: the duplicate policy -----------------------------------------------------------
def test_keep_first_records_the_duplicate_and_keeps_the_original(start_node, node_engine, home, tmp_path,
                                                                capsys) -> None:
    node = start_node(analyze=False)  # keep_first is the default
    store = node_engine.store
    first = make_instance(tmp_path / "first.dcm")
    corrected = resend_with_other_pixels(first, tmp_path)
    assert storescu(node.port, [first]).returncode == 0
    result = storescu(node.port, [corrected, first])  # the corrected one, then an identical resend
    assert result.returncode == 0, result.stderr
    images = store.db.query("SELECT id, session_id, metadata FROM images")
    assert len(images) == 1 and same_dataset(first, stored_copy(store, images[0]["id"]))
    events = duplicate_events(store)
    assert len(events) == 1  # the identical resend is no event
    assert events[0]["session_id"] == images[0]["session_id"]
    payload = events[0]["payload"]
    assert payload == {"image_id": images[0]["id"], "association_id": payload["association_id"],
                       "policy": "keep_first", "outcome": "kept_first"}
    assert store.db.query("SELECT count(*) AS n FROM dicom_associations WHERE id = ?",
                          (payload["association_id"],))[0]["n"] == 1
    status = node_status(home, capsys)
    assert status["duplicates_today"] == 1
    assert [(d["image_id"], d["outcome"]) for d in status["latest_duplicates"]] == [(images[0]["id"], "kept_first")]
    from dicom_node.status import format_status
    text = format_status(status)
    assert "duplicates today: 1" in text and f"kept first (keep_first): image {images[0]['id']}" in text


def test_keep_newest_stores_a_new_version_and_keeps_the_old(start_node, node_engine, home, tmp_path,
                                                           capsys) -> None:
    node = start_node(analyze=False, duplicate_policy="keep_newest")
    store = node_engine.store
    first = make_instance(tmp_path / "first.dcm")
    corrected = resend_with_other_pixels(first, tmp_path)
    assert storescu(node.port, [first]).returncode == 0
    assert storescu(node.port, [corrected, corrected]).returncode == 0  # the second is an identical resend
    rows = store.db.query("SELECT id, session_id, metadata FROM images ORDER BY rowid")
    assert len(rows) == 2 and rows[0]["session_id"] == rows[1]["session_id"]
    old, new = rows
    assert "supersedes" not in json.loads(old["metadata"])
    assert json.loads(new["metadata"])["supersedes"] == old["id"]
    assert same_dataset(first, stored_copy(store, old["id"])) and same_dataset(corrected, stored_copy(store, new["id"]))
    assert store.get_session(new["session_id"])["current_image_id"] == new["id"]
    [event] = duplicate_events(store)
    assert event["payload"]["image_id"] == new["id"] and event["payload"]["supersedes"] == old["id"]
    assert (event["payload"]["policy"], event["payload"]["outcome"]) == ("keep_newest", "stored_as_version")
    status = node_status(home, capsys)
    assert status["duplicates_today"] == 1 and status["received_today"] == 2
    assert status["latest_duplicates"][0]["supersedes"] == old["id"]


def test_refuse_answers_duplicate_sop_instance_and_stores_nothing(start_node, node_engine, home, tmp_path,
                                                                 capsys) -> None:
    node = start_node(analyze=False, duplicate_policy="refuse")
    store = node_engine.store
    first = make_instance(tmp_path / "first.dcm")
    corrected = resend_with_other_pixels(first, tmp_path)
    assert storescu(node.port, [first]).returncode == 0
    blobs_before = sorted(p.name for p in store.blobs.root.glob("*/*"))
    scu = AE(ae_title="RESENDER")
    scu.add_requested_context(pydicom.dcmread(first).SOPClassUID, pydicom.dcmread(first).file_meta.TransferSyntaxUID)
    assoc = scu.associate("127.0.0.1", node.port)
    try:
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(corrected)).Status == 0x0111  # Duplicate SOP Instance (Failure)
        assert assoc.send_c_store(pydicom.dcmread(first)).Status == 0x0000  # an identical resend is fine
    finally:
        assoc.release()
    [image] = store.db.query("SELECT id FROM images")
    assert same_dataset(first, stored_copy(store, image["id"]))
    assert sorted(p.name for p in store.blobs.root.glob("*/*")) == blobs_before
    [event] = duplicate_events(store)
    assert event["payload"]["image_id"] == image["id"]
    assert (event["payload"]["policy"], event["payload"]["outcome"]) == ("refuse", "refused")
    status = node_status(home, capsys)
    assert status["duplicates_today"] == 1 and status["received_today"] == 1
    assert status["store_failures_today"] == 1


def test_duplicate_policy_is_checked(tmp_path) -> None:
    import argparse

    from dicom_node.config import NodeConfig, add_arguments, load
    from engine.errors import MedVisionError

    config_file = tmp_path / "node.toml"
    config_file.write_text('duplicate_policy = "keep_newest"\n')
    assert load(path=config_file).duplicate_policy == "keep_newest"
    assert NodeConfig().duplicate_policy == "keep_first"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert load(parser.parse_args(["--config", str(config_file), "--duplicate-policy", "refuse"])).duplicate_policy \
        == "refuse"
    with pytest.raises(MedVisionError, match="duplicate_policy"):
        NodeConfig(duplicate_policy="overwrite")


# -- item 4: the log level -------------------------------------------------------------------
def test_cli_log_level_info_logs_the_nodes_own_lines(home, model_pack, tmp_path) -> None:
    """``medvision dicom-node serve --log-level INFO``: the CLI's quiet default no longer
    silences the node; the duplicate is logged (ids only)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-m", "engine.cli", "--home", str(home), "--pack", str(model_pack),
                                "dicom-node", "serve", "--port", str(port), "--no-analyze", "--log-level", "INFO"],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: process.poll() is not None or echoscu(port).returncode == 0, 60, "the node")
        assert process.poll() is None
        first = make_instance(tmp_path / "first.dcm")
        assert storescu(port, [first]).returncode == 0
        assert storescu(port, [resend_with_other_pixels(first, tmp_path)]).returncode == 0
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-2000:]
    assert f"listening as MEDVISION on 127.0.0.1:{port}" in stderr, stderr[-2000:]
    assert "INFO dicom_node.handlers: association" in stderr and "accepted from ECHOSCU@127.0.0.1" in stderr
    assert "WARNING dicom_node.ingest: duplicate SOP instance with different content dropped" in stderr
    assert "Test^Synthetic" not in stderr and "T-1" not in stderr  # ids only
    assert "Received Store Request" not in stderr  # pynetdicom's per-message lines only at DEBUG


def test_cli_v_reaches_the_node_and_status_stays_quiet_by_default(home, capsys) -> None:
    import logging

    from engine import cli

    assert cli.main(["--home", str(home), "dicom-node", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["listening"] == []
    assert logging.getLogger("dicom_node").level == logging.WARNING  # status: quiet unless asked
    assert cli.main(["-v", "--home", str(home), "dicom-node", "status", "--json"]) == 0
    capsys.readouterr()
    assert logging.getLogger("dicom_node").level == logging.INFO


# -- item 5: the association limit and its bookkeeping ---------------------------------------
def _associate(port: int, title: str):  # noqa: ANN202 - pynetdicom Association
    scu = AE(ae_title=title)
    scu.add_requested_context(Verification)
    return scu.associate("127.0.0.1", port)


def test_a_burst_gets_every_slot_and_each_rejection_is_recorded(start_node, node_engine, home, capsys) -> None:
    """20 associations at once against a limit of 8: exactly 8 accepted (rejected ones take
    no slot), 12 rejected and recorded; status counts only accepted ones as open."""
    node = start_node(max_associations=8)
    store = node_engine.store
    start, all_tried = threading.Barrier(20), threading.Event()
    results: list[tuple[bool, bool]] = []
    lock = threading.Lock()
    tried = [0]

    def one(n: int) -> None:
        start.wait()
        assoc = _associate(node.port, f"BURST{n}")
        with lock:
            results.append((assoc.is_established, assoc.is_rejected))
            tried[0] += 1
            if tried[0] == 20:
                all_tried.set()
        if assoc.is_established:
            all_tried.wait(60)  # every accepted one holds its slot until all 20 have tried
            assoc.release()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results).count((True, False)) == 8 and sorted(results).count((False, True)) == 12, results

    status = wait_for(lambda: (s := node_status(home, capsys))["open_associations"] == 0 and s, what="all closed")
    assert status["rejected_today"] == 12 and status["associations_today"] == 20
    rows = store.db.query("SELECT state, reason FROM dicom_associations")
    assert sorted(r["state"] for r in rows) == ["rejected"] * 12 + ["released"] * 8
    assert {r["reason"] for r in rows if r["state"] == "rejected"} == {"association limit (8) reached"}
    events = [e for e in store.events_since(0, limit=10_000) if e["kind"] == EventKind.DICOM_ASSOCIATION]
    assert sorted(e["payload"]["state"] for e in events) == ["rejected"] * 12 + ["released"] * 8

    # A second burst after the first: the slots all came back.
    held = [_associate(node.port, f"HOLD{n}") for n in range(8)]
    try:
        assert all(a.is_established for a in held)
        assert echoscu(node.port).returncode != 0
    finally:
        for assoc in held:
            assoc.release()
    status = wait_for(lambda: (s := node_status(home, capsys))["open_associations"] == 0 and s, what="all closed")
    assert status["rejected_today"] == 13 and status["associations_today"] == 29


def test_open_is_written_only_once_accepted(start_node, node_engine, home, capsys) -> None:
    """Held open: 8 accepted rows open; 12 more tried while they are held are rejected,
    never counted open; all released: open associations 0, rejected today 12."""
    node = start_node(max_associations=8)
    held = [_associate(node.port, f"HOLD{n}") for n in range(8)]
    try:
        assert all(a.is_established for a in held)
        extra = [_associate(node.port, f"MORE{n}") for n in range(12)]
        assert all(a.is_rejected for a in extra)
        # A rejection is recorded before the peer is answered; an acceptance just after.
        wait_for(lambda: (s := node_status(home, capsys))["open_associations"] == 8 and s["rejected_today"] == 12,
                 what="8 open, 12 rejected")
    finally:
        for assoc in held:
            assoc.release()
    status = wait_for(lambda: (s := node_status(home, capsys))["open_associations"] == 0 and s, what="all closed")
    assert status["rejected_today"] == 12
