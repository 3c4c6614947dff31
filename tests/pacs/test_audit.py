"""Instances retrieved from an archive (C-GET, WADO-RS) are audit records, like pushed ones."""

from __future__ import annotations

import json

from dicom_node.pacs.retrieve import Retriever, wado


def test_retrieved_instances_are_audited_with_the_archive(archive, settings, ingestor, engine, upload) -> None:
    by_get = upload(2, patient_id="AUDIT-GET")
    by_web = upload(1, patient_id="AUDIT-WADO")
    assert Retriever(archive, settings, ingestor).get(by_get).stored == 2
    assert wado(archive, ingestor, by_web).stored == 1
    ingestor.writer.flush()
    engine.store.audit.flush()
    records = [r for r in engine.audit.log.records() if r["action"] == "DICOM Instances Transferred"]
    assert sorted((r["operation"], r["study_uid"]) for r in records) == sorted(
        [("received", by_get)] * 2 + [("received", by_web)])
    assert {(r["action_code"], r["outcome"], json.loads(r["details"])["peer_ae"]) for r in records} == {
        ("C", 0, archive.ae_title)}
    assert engine.audit.log.verify().ok
