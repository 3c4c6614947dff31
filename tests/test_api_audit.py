"""The facade's audit records: every public Engine method is classified, calls are recorded with
their outcome, the front-end and the MCP client, and the trail outlives the session it describes."""

from __future__ import annotations

import inspect
from pathlib import Path

import anyio
import pytest
from pydicom.data import get_testdata_file

from engine.api import Engine
from engine.errors import MedVisionError
from engine.services.audit import ACTIONS, NOT_AUDITED
from tests.mcp import connect, ok


def test_every_public_engine_method_is_audited_or_says_why_not() -> None:
    public = {name for name, _ in inspect.getmembers(Engine) if not name.startswith("_")}
    unclassified = public - set(ACTIONS) - set(NOT_AUDITED)
    assert not unclassified, f"classify these in engine/services/audit.py: {sorted(unclassified)}"
    assert not set(ACTIONS) & set(NOT_AUDITED)
    assert Engine.analyze_image.__wrapped__  # wrapped once, at import


def test_calls_are_recorded_with_outcome_and_survive_the_deletion(home: Path, model_pack: Path) -> None:
    ct = get_testdata_file("CT_small.dcm")
    with Engine(home=home, model_pack=model_pack, front_end="desktop") as engine:
        session = engine.create_study_session("audit")["session_id"]
        image = engine.add_image_to_session(session, ct, auto_analyze=False)["image_id"]
        with pytest.raises(MedVisionError, match="INVALID_IMAGE_TYPE|expects CXR"):
            engine.analyze_image(session, image)
        engine.get_session_status(session)  # a desktop query: not recorded
        engine.delete_session(session)
        with pytest.raises(MedVisionError):
            engine.get_session_status(session)
        records = list(engine.audit.log.records(session_id=session))
        assert engine.audit.log.verify().ok
    assert [(r["operation"], r["action"], r["action_code"], r["outcome"], r["outcome_detail"]) for r in records] == [
        ("create_study_session", "Patient Record", "C", 0, None),
        ("add_image_to_session", "Import", "C", 0, None),
        ("analyze_image", "DICOM Instances Accessed", "E", 4, "INVALID_IMAGE_TYPE"),
        ("delete_session", "DICOM Study Deleted", "D", 0, None)]
    study = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"  # CT_small.dcm's Study Instance UID
    assert {r["front_end"] for r in records} == {"desktop"}
    assert [r["study_uid"] for r in records[1:]] == [study] * 3  # the deletion names what it deleted
    assert records[2]["image_id"] == image and records[0]["sop_uid"] is None  # not in the default policy
    assert all(r["os_user"] and r["pid"] and r["client"] is None for r in records)


def test_off_switch_records_nothing(home: Path, model_pack: Path) -> None:
    from dataclasses import replace

    from engine.config import Settings

    settings = replace(Settings.from_env(home, model_pack), audit_enabled=False)
    with Engine(settings) as engine:
        engine.create_study_session("quiet")
        assert engine.audit.log.head() is None


def test_an_mcp_client_is_named_and_its_queries_are_recorded(home: Path, model_pack: Path) -> None:
    async def scenario() -> str:
        async with connect(home, model_pack, []) as client:
            session = (await ok(client, "create_study_session"))["session_id"]
            await ok(client, "get_session_status", session_id=session)
            await client.read_resource(f"medvision://session/{session}/annotations")
            return session

    session = anyio.run(scenario)
    with Engine(home=home, model_pack=model_pack) as engine:
        records = list(engine.audit.log.records(session_id=session))
    assert [(r["operation"], r["action"], r["front_end"]) for r in records] == [
        ("create_study_session", "Patient Record", "mcp"), ("get_session_status", "Query", "mcp"),
        ("get_annotations", "Query", "mcp")]
    assert all(r["client"] and r["client"].startswith("mcp") for r in records)  # the SDK client's clientInfo


def test_a_purge_leaves_one_record_per_erased_session_and_the_trail_verifies(home: Path, model_pack: Path) -> None:
    from tests.erasure import age

    with Engine(home=home, model_pack=model_pack, front_end="node") as engine:
        expired = engine.create_study_session("agent study", source="mcp")["session_id"]
        engine.add_image_to_session(expired, get_testdata_file("CT_small.dcm"), auto_analyze=False)
        kept = engine.create_study_session("fresh", source="mcp")["session_id"]
        age(engine.store, expired, days=2)
        assert engine.purge_expired_sessions(dry_run=True)["sessions"]  # a dry run erases nothing: no record
        assert [s["session_id"] for s in engine.purge_expired_sessions()["sessions"]] == [expired]
        purged = [r for r in engine.audit.log.records() if r["operation"] == "purge_expired_sessions"]
        assert engine.audit.log.verify().ok
    assert [(r["session_id"], r["action"], r["action_code"], r["front_end"], r["study_uid"]) for r in purged] == [
        (expired, "DICOM Study Deleted", "D", "node", None)]  # the study UID: not known before the purge
    assert kept != expired
