"""Auto-analysis queue, results back to PACS (DCMTK storescp as the PACS), status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from dicom_node.config import Destination
from dicom_node.ingest import ANALYZE_JOB
from tests.dicom_node.conftest import REPO, echoscu, free_port, storescu


def wait_for(check: Callable[[], bool], timeout: float = 180, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_chest_xray_is_analysed_and_sr_plus_capture_reach_pacs_after_a_retry(start_node, node_engine,
                                                                             tmp_path) -> None:
    store = node_engine.store
    pacs_port, received = free_port(), tmp_path / "pacs"
    received.mkdir()
    node = start_node(destination=Destination("PACS", "127.0.0.1", pacs_port), outbox_backoff_s=0.3)
    assert storescu(node.port, [get_testdata_file("RG1_UNCR.dcm")]).returncode == 0
    image = store.db.query("SELECT * FROM images")[0]
    assert image["type"] == "CXR"
    wait_for(lambda: store.db.query("SELECT status FROM jobs")[0]["status"] == "done", what="the analysis")
    assert store.list_analyses(image["session_id"], image["id"])
    # The PACS is down: the first attempt fails and is rescheduled, nothing is lost.
    wait_for(lambda: store.db.query("SELECT min(attempts) AS n FROM dicom_outbox")[0]["n"] >= 1, what="a try")
    assert {r["status"] for r in store.db.query("SELECT status FROM dicom_outbox")} == {"pending"}
    pacs = subprocess.Popen(["storescp", "-od", str(received), str(pacs_port)])
    try:
        wait_for(lambda: {r["status"] for r in store.db.query("SELECT status FROM dicom_outbox")} == {"sent"},
                 timeout=60, what="the outbox")
    finally:
        pacs.terminate()
        pacs.wait(10)
    objects = [pydicom.dcmread(path) for path in received.iterdir()]
    classes = sorted(ds.SOPClassUID.name for ds in objects)
    assert len(objects) == 2 and any("SR" in name for name in classes) \
        and any("Secondary Capture" in name for name in classes), classes
    source = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    assert all(ds.StudyInstanceUID == source.StudyInstanceUID for ds in objects)  # filed with the study
    kinds = [e["kind"] for e in store.events_since(0)]
    for kind in ("session.created", "image.added", "job.queued", "job.done", "analysis.created",
                 "dicom.outbox_queued", "dicom.outbox_sent"):
        assert kind in kinds, kind


def test_queue_survives_a_dead_node(start_node, node_engine) -> None:
    """A job left running by a dead node is retried; one that used its attempts fails."""
    store = node_engine.store
    first = start_node(analyze=False)
    assert storescu(first.port, [get_testdata_file("RG1_UNCR.dcm")]).returncode == 0
    first.stop()
    image = store.db.query("SELECT id, session_id FROM images")[0]
    payload = {"session_id": image["session_id"], "image_id": image["id"]}
    retried = store.enqueue_job(ANALYZE_JOB, payload, session_id=image["session_id"], image_id=image["id"])
    exhausted = store.enqueue_job(ANALYZE_JOB, payload, session_id=image["session_id"], image_id=image["id"],
                                  max_attempts=1)
    for _ in range(2):  # both claimed by a node that then died (kill -9: no finish_job)
        assert store.claim_job("dicom-node:deadbeef:0", kinds=[ANALYZE_JOB])["status"] == "running"
    start_node()
    wait_for(lambda: store.get_job(retried)["status"] == "done", what="the retried job")
    failed = store.get_job(exhausted)
    assert failed["status"] == "failed" and failed["error"] == "interrupted"
    assert store.get_job(retried)["attempts"] == 2


def test_status_from_the_store(node, node_engine, home, capsys) -> None:
    from dicom_node.scp import main

    assert storescu(node.port, [get_testdata_file("CT_small.dcm")]).returncode == 0
    assert echoscu(node.port, aet="NOBODY").returncode == 0

    def read_status() -> dict:
        assert main(["status", "--home", str(home), "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    # The node records an association's end on its own thread after the peer released it.
    deadline = time.monotonic() + 10
    while (status := read_status())["open_associations"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [n["port"] for n in status["listening"]] == [node.port]
    assert status["received_today"] == 1 and status["associations_today"] == 2
    assert status["queue_depth"] == 0 and status["store_failures_today"] == 0 and status["open_associations"] == 0
    # The same from another process, while the node runs (what `medvision dicom-node status` does).
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "dicom_node", "status", "--home", str(home)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and f"MEDVISION@127.0.0.1:{node.port}" in result.stdout, result.stderr
    node.stop()
    assert main(["status", "--home", str(home), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["listening"] == []


def test_module_entry_point_serves(home, model_pack) -> None:
    from tests.dicom_node.conftest import node_process

    port = free_port()
    process = node_process(Path(home), port, model_pack, "--ae-title", "ENTRY", "--allow", "ECHOSCU")
    try:
        assert echoscu(port).returncode == 0 and echoscu(port, aet="OTHER").returncode != 0
    finally:
        process.terminate()
        assert process.wait(60) == 0
