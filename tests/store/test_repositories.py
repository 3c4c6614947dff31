"""The store by aggregate: repositories over one database, events through the one event log."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from engine.analysis import annotations as rules
from engine.errors import ErrorCode, MedVisionError
from engine.events import EventKind
from engine.services.annotations import AnnotationService
from engine.store import Store
from engine.store.agent_runs import AgentRunRepository
from engine.store.analyses import AnalysisRepository, MaskRepository
from engine.store.annotations import AnnotationRepository
from engine.store.canvas import CanvasRepository
from engine.store.common import loads
from engine.store.dicom import DicomRepository
from engine.store.events import EventLog
from engine.store.exports import ExportRepository
from engine.store.inputs import InputRequestRepository
from engine.store.jobs import JobRepository
from engine.store.sessions import ImageRepository, SessionRepository

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(home: Path):
    instance = Store.open(home)
    yield instance
    instance.close()


@pytest.fixture
def image(store: Store) -> dict:
    session = store.create_session("s")
    return store.add_image(session["id"], blob_data=b"x" * 64, record={
        "type": "CXR", "format": "png", "rows": 100, "columns": 80,
        "metadata": {"pixel_spacing": {"row_mm": 0.5, "column_mm": 0.5}}})


def test_the_store_is_composed_of_one_repository_per_aggregate(store: Store) -> None:
    expected = {"events": EventLog, "sessions": SessionRepository, "images": ImageRepository,
                "analyses": AnalysisRepository, "masks": MaskRepository, "annotations": AnnotationRepository,
                "jobs": JobRepository, "dicom": DicomRepository, "exports": ExportRepository,
                "agent_runs": AgentRunRepository, "inputs": InputRequestRepository, "canvas": CanvasRepository}
    for name, kind in expected.items():
        repository = getattr(store, name)
        assert isinstance(repository, kind), name
        assert repository.db is store.db, name  # one database, one transaction per thread
    session = store.sessions.create("direct")
    assert store.get_session(session["id"]) == store.sessions.get(session["id"])


def test_event_log_append_joins_the_callers_transaction(store: Store) -> None:
    session = store.create_session("s")
    before = store.events.last_id()
    with pytest.raises(RuntimeError), store.db.transaction() as tx:
        store.events.append(tx, session["id"], EventKind.CANVAS_MESSAGE, {"turn_id": 1, "message": "m"})
        raise RuntimeError("roll back")
    assert store.events.since(before) == []
    with store.db.transaction() as tx:
        event_id = store.events.append(tx, session["id"], EventKind.CANVAS_MESSAGE, {"turn_id": 1, "message": "m"})
        assert store.events.append_now(session["id"], "canvas.highlight", {}) == event_id + 1  # joins, too
    [first, second] = store.events.since(before, session["id"])
    assert (first["id"], first["kind"], first["payload"]) == (event_id, "canvas.message", {"turn_id": 1, "message": "m"})
    assert type(first["kind"]) is str and second["kind"] == EventKind.CANVAS_HIGHLIGHT
    assert store.events.last_id() == store.last_event_id() == second["id"]
    with pytest.raises(ValueError):
        store.events.append_now(None, "canvas.explode", {})  # only catalogued kinds are written
    assert store.events.last_id() == second["id"]


def test_every_event_the_store_writes_is_catalogued(store: Store, image: dict) -> None:
    session_id = image["session_id"]
    annotation = AnnotationService(store).add_row(session_id, image["id"], "point", [5, 5])
    AnnotationService(store).update_row(session_id, annotation["id"], label="x")
    store.delete_annotation(session_id, annotation["id"])
    store.add_analysis(session_id, image["id"], "region", {"model_trained": None})
    store.add_masks(session_id, image["id"], [{"label": "m", "rle": {"size": [1, 1], "counts": [0, 1]},
                                                "area_px": 1}], source="user")
    job_id = store.enqueue_job("analyze", {}, session_id=session_id)
    store.claim_job("w")
    store.finish_job(job_id, error="boom")
    store.set_current_image(session_id, image["id"])
    store.add_export(session_id, "json", [("a.json", b"{}", "application/json")])
    run = store.create_agent_run(session_id, run_id="r1", task="t", mode="auto", pipeline="p",
                                 image_id=image["id"], state={})
    store.update_agent_run(run["id"], status="completed")
    store.add_agent_trace(run["id"], session_id, 0, {"kind": "tool_call"})
    store.add_agent_turn(session_id, "user", "question", "hi")
    request = store.create_input_request(session_id, "confirm", "ok?")
    store.answer_input_request(request["id"], True)
    store.create_input_request(session_id, "confirm", "again?", run_id="r1")
    store.cancel_input_requests("r1")
    store.set_session_pinned(session_id, True)
    kinds = [e["kind"] for e in store.events_since(0, limit=1000)]
    store.delete_session(session_id)
    # Erasure removes the session's events too, leaving only its session.deleted.
    after = [e["kind"] for e in store.events_since(0, session_id=session_id, limit=1000)]
    assert after == ["session.deleted"]
    kinds += after
    assert all(kind in set(EventKind) for kind in kinds)
    assert {"session.created", "image.added", "annotation.created", "annotation.updated", "annotation.deleted",
            "analysis.created", "masks.created", "job.queued", "job.running",
            "session.current_image", "session.pinned", "export.created", "agent.run_created", "agent.run_updated",
            "agent.trace", "agent.turn", "agent.input_requested", "agent.input_answered", "agent.input_cancelled",
            "session.deleted"} <= set(kinds)


def test_dicom_instance_reuses_the_session_and_image_writers(store: Store) -> None:
    store.dicom_association("a1", node="n", calling_ae="MOD", called_ae="MV", peer_host="h")
    record = {"type": "CXR", "format": "dicom", "sop_instance_uid": "1.2.3", "study_instance_uid": "9.9",
              "rows": 4, "columns": 4}
    stored = store.dicom_add_instance(blob_id="b" * 32, size=3, sha256="f" * 64, record=record, association_id="a1",
                                      calling_ae="MOD", job_kind="dicom_node.analyze")
    assert stored["status"] == "stored" and stored["blob_used"] is True and stored["job_id"]
    again = store.dicom_add_instance(blob_id="c" * 32, size=3, sha256="f" * 64, record=record, association_id="a1",
                                     calling_ae="MOD")
    assert again["status"] == "duplicate" and again["same_content"] is True
    events = [(e["kind"], e["payload"]) for e in store.events_since(0)]
    assert events[:3] == [
        ("session.created", {"session_id": stored["session_id"], "source": "dicom"}),
        ("image.added", {"image_id": stored["image_id"], "type": "CXR", "source": "dicom"}),
        ("job.queued", {"job_id": stored["job_id"], "kind": "dicom_node.analyze", "image_id": stored["image_id"]}),
    ]
    session = store.get_session(stored["session_id"])
    assert session["current_image_id"] == stored["image_id"] and session["metadata"]["source"] == "dicom"


def _received(store: Store, blob_id: str, data: bytes, sequence: int, *, uid: str = "1.2.3",
              policy: str = "keep_first") -> None:
    """A blob as the DICOM node leaves it after its acknowledgement: index record sealed in, no row."""
    import hashlib

    from engine.store.dicom import instance_index

    record = {"type": "CXR", "format": "dicom", "sop_instance_uid": uid, "study_instance_uid": "9.9", "rows": 4,
              "columns": 4, "metadata": {"k": 1}, "patient": {"name": "Doe^Jane"}}
    writer = store.blobs.writer(blob_id)
    writer.write(data)
    writer.commit(instance_index(blob_id=blob_id, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                 record=record, association_id="a1", calling_ae="MOD", session_name="CXR study",
                                 job_kind="dicom_node.analyze", max_attempts=2, duplicate_policy=policy,
                                 received_at="2026-01-01T00:00:00.000+00:00", sequence=sequence))


def test_acknowledged_blobs_without_rows_are_indexed_once_when_the_store_opens(home: Path) -> None:
    store = Store.open(home)
    try:
        store.dicom_association("a1", node="n", calling_ae="MOD", called_ae="MV", peer_host="h")
        _received(store, "1" * 32, b"first", 1, policy="keep_newest")
        _received(store, "2" * 32, b"corrected", 2, policy="keep_newest")  # same UID: a version, in order
        _received(store, "3" * 32, b"corrected", 3, policy="keep_newest")  # an identical resend of the newest
        store.blobs.write_bytes("4" * 32, b"an artefact, not a received instance")
    finally:
        store.close()
    for _ in range(2):  # and again: nothing twice
        store = Store.open(home)
        try:
            images = store.db.query("SELECT id, session_id, blob_id, metadata, created_at FROM images ORDER BY rowid")
            assert [r["blob_id"] for r in images] == ["1" * 32, "2" * 32]
            assert loads(images[1]["metadata"])["supersedes"] == images[0]["id"]
            assert images[0]["created_at"] == "2026-01-01T00:00:00.000+00:00"
            session = store.get_session(images[0]["session_id"])
            assert session["name"] == "CXR study" and session["study_instance_uid"] == "9.9"
            jobs = store.db.query("SELECT kind, status, image_id, max_attempts FROM jobs ORDER BY id")
            assert [(j["kind"], j["status"], j["image_id"], j["max_attempts"]) for j in jobs] == [
                ("dicom_node.analyze", "queued", r["id"], 2) for r in images]
            assert store.db.query("SELECT received, duplicates FROM dicom_associations")[0] == {
                "received": 2, "duplicates": 2}
            assert {p.stem for p in store.blobs.root.glob("*/*.mvb")} == {"1" * 32, "2" * 32, "4" * 32}
            assert store.blobs.read_bytes("2" * 32) == b"corrected"
        finally:
            store.close()


def test_annotation_repository_takes_validated_values(store: Store, image: dict) -> None:
    session_id = image["session_id"]
    fields = rules.validate_fields(label="l", confidence=1, source="ai", notes="", layer=None, style=None,
                                   analysis_id=None)
    assert fields == {"label": "l", "confidence": 1.0, "source": "ai", "notes": None, "layer": None, "style": {},
                      "analysis_id": None}
    row = store.annotations.insert(session_id, image["id"], "point", rules.validate_coordinates(image, "point",
                                                                                                 [1, 2]), fields)
    assert row["coordinates"] == [1.0, 2.0] and row["source"] == "ai"
    assert store.annotations.update(session_id, row, {}) == row  # nothing changed: nothing written
    changed = rules.changed_values(row, rules.validate_changes({"label": "l", "notes": "n", "layer": None}), None)
    assert changed == {"notes": "n"}
    before = store.last_event_id()
    updated = store.annotations.update(session_id, row, changed)
    assert updated["notes"] == "n"
    [event] = store.events_since(before)
    assert event["payload"]["fields"] == ["notes"]


def test_annotation_rules_are_pure_and_keep_their_errors(image: dict) -> None:
    with pytest.raises(MedVisionError) as err:
        rules.validate_changes({"image_id": "x"})
    assert err.value.code is ErrorCode.INVALID_ARGUMENT and "updatable" in err.value.message
    with pytest.raises(MedVisionError) as err:
        rules.validate_fields(label="x" * (rules.ANNOTATION_LABEL_MAX_CHARS + 1), confidence=None, source="user",
                              notes=None, layer=None, style=None, analysis_id=None)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(MedVisionError) as err:
        rules.validate_coordinates(image, "point", [500, 5])
    assert err.value.code is ErrorCode.INVALID_REGION
    measured = rules.validate_coordinates(image, "measurement", {"kind": "distance", "points": [[0, 0], [3, 4]]})
    assert measured["result"]["value"] > 0


def test_analysis_rules_do_not_import_the_store() -> None:
    code = "import sys, engine.analysis.annotations; print(any(m.startswith('engine.store') for m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def _private_uses(path: Path) -> list[str]:
    """Imports of underscore names, and ``x._name`` on anything but ``self``/``cls``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
            found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_")]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


def test_no_repository_or_the_canvas_reaches_into_private_names() -> None:
    store_dir = REPO / "engine" / "store"
    paths = [p for p in store_dir.glob("*.py") if p.name != "blobs.py"]  # blobs: its writer uses its own store's key
    paths += [REPO / "engine" / "canvas.py", REPO / "engine" / "analysis" / "annotations.py"]
    assert [use for path in paths for use in _private_uses(path)] == []
    assert "_event" not in (REPO / "engine" / "canvas.py").read_text()


def test_the_blob_of_an_erasure_in_progress_is_not_indexed_again(home: Path) -> None:
    """Another process has committed a session's erasure (rows gone, journal written) and not yet
    unlinked its blob: indexing at store open leaves that blob alone; the erasure then finishes."""
    store = Store.open(home)
    try:
        store.dicom_association("a1", node="n", calling_ae="MOD", called_ae="MV", peer_host="h")
        _received(store, "5" * 32, b"received", 1)
        store.dicom.index_unindexed_blobs()
        (image,) = store.db.query("SELECT session_id, blob_id FROM images")
        with store.db.transaction() as tx:  # what a session's erasure commits before its unlinks
            tx.execute("DELETE FROM images WHERE session_id = ?", (image["session_id"],))
            tx.execute("DELETE FROM blobs WHERE id = ?", (image["blob_id"],))
            store.erasures.record(tx, image["session_id"], [store.blobs.path_for(image["blob_id"])])
        assert store.dicom.index_unindexed_blobs(erasing=store.erasures.pending_blob_ids)["indexed"] == 0
        assert store.dicom.index_unindexed_blobs()["indexed"] == 1  # without the journal it would come back
    finally:
        store.close()
