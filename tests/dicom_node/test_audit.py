"""The node's audit records: each received instance, with the peer and the outcome we answered."""

from __future__ import annotations

import json
from pathlib import Path

from tests.dicom_node.conftest import make_series, storescu


def test_each_received_instance_is_an_audit_record(node, node_engine, tmp_path: Path) -> None:
    files = make_series(tmp_path / "series", 3)
    assert storescu(node.port, files).returncode == 0
    assert storescu(node.port, files[:1]).returncode == 0  # an identical resend: stored once, recorded twice
    node.ingestor.writer.flush()  # rows written (the records follow them), then the audit queue
    node_engine.store.audit.flush()
    records = [r for r in node_engine.audit.log.records() if r["operation"] == "received"]
    assert len(records) == 4
    assert {(r["front_end"], r["action"], r["action_code"], r["outcome"]) for r in records} == {
        ("node", "DICOM Instances Transferred", "C", 0)}
    assert sorted(r["outcome_detail"] or "" for r in records) == ["", "", "", "0x0000 duplicate"]
    assert len({r["image_id"] for r in records}) == 3 and all(r["session_id"] and r["study_uid"] for r in records)
    assert all(json.loads(r["details"]) == {"peer_ae": "STORESCU"} for r in records)
    assert all(r["sop_uid"] is None and r["patient_id"] is None for r in records)  # the default policy
    assert node_engine.audit.log.verify().ok
