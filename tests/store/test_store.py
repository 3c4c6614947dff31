"""The encrypted store: real SQLCipher files, real processes, real crashes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.errors import ErrorCode, MedVisionError
from engine.services.annotations import AnnotationService
from engine.store import Store, schema_version
from engine.store.store import DATABASE_NAME

PATIENT = "Quixote^Dulcinea-7Zq"


def _data_files(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()]


def test_database_file_is_encrypted_and_sqlcipher_is_active(home: Path) -> None:
    store = Store.open(home)
    store.create_session("x")
    store.close()
    assert store.cipher_version  # PRAGMA cipher_version answered: not plain SQLite
    header = (home / DATABASE_NAME).read_bytes()[:16]
    assert header != b"SQLite format 3\x00"


def test_key_file_is_created_private_and_reused(home: Path) -> None:
    Store.open(home).close()
    key_file = home / "db.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    first = key_file.read_text()
    store = Store.open(home)
    store.create_session("again")
    store.close()
    assert key_file.read_text() == first


def test_environment_key_wins(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDVISION_DB_KEY", "ab" * 32)
    Store.open(home).close()
    assert not (home / "db.key").exists()
    monkeypatch.setenv("MEDVISION_DB_KEY", "not-hex")
    with pytest.raises(MedVisionError) as err:
        Store.open(home)
    assert err.value.code is ErrorCode.DATABASE_ERROR


def test_wrong_key_is_a_clear_error_and_changes_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(home)
    session = store.create_session("keep me")
    store.close()
    database = home / DATABASE_NAME
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    monkeypatch.setenv("MEDVISION_DB_KEY", "cd" * 32)
    with pytest.raises(MedVisionError) as err:
        Store.open(home)
    assert err.value.code is ErrorCode.DATABASE_ERROR
    assert "wrong database key" in err.value.message
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before
    monkeypatch.delenv("MEDVISION_DB_KEY")
    store = Store.open(home)
    assert store.get_session(session["id"])["name"] == "keep me"
    store.close()


def test_existing_database_without_key_is_refused(home: Path) -> None:
    Store.open(home).close()
    (home / "db.key").unlink()
    with pytest.raises(MedVisionError) as err:
        Store.open(home)
    assert err.value.code is ErrorCode.DATABASE_ERROR
    assert "no key" in err.value.message


def test_patient_name_appears_in_no_file(home: Path, rg1_path: Path) -> None:
    """Session names, image headers and the DICOM file itself stay encrypted at rest."""
    store = Store.open(home)
    session = store.create_session(PATIENT, {"patient": PATIENT})
    dicom = rg1_path.read_bytes()
    assert b"CompressedSamples^RG1" in dicom  # the real patient name in the file
    store.add_image(session["id"], blob_data=dicom, record={
        "type": "CXR", "format": "dicom", "source_name": "RG1_UNCR.dcm",
        "patient": {"PatientName": "CompressedSamples^RG1", "alias": PATIENT},
    })
    files = _data_files(home)
    assert any(p.name.endswith("-wal") for p in files)  # checked while the WAL holds the data
    for needle in (PATIENT.encode(), b"CompressedSamples^RG1", PATIENT.encode("utf-16-le")):
        for path in files:
            assert needle not in path.read_bytes(), f"{needle!r} in plaintext in {path.name}"
    store.close()
    for path in _data_files(home):
        assert PATIENT.encode() not in path.read_bytes()


def test_schema_is_migrated_once_and_newer_schemas_are_refused(home: Path) -> None:
    store = Store.open(home)
    conn = store.db.connection()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {schema_version() + 1}")
    store.close()
    with pytest.raises(MedVisionError) as err:
        Store.open(home)
    assert "newer" in err.value.message


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from engine.store import Store
    store = Store.open(Path(sys.argv[1]))
    for i in range(int(sys.argv[3])):
        session = store.create_session(f"{sys.argv[2]}-{i}")
        store.add_interaction(session["id"], "query", {"i": i})
        store.enqueue_job("analyze", {"i": i}, session_id=session["id"])
    store.close()
    print("done")
    """
)


def test_two_processes_write_concurrently_without_lock_errors(home: Path) -> None:
    Store.open(home).close()  # create the database and key first
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(home), name, "120"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "locked" not in err
        assert out.strip() == "done"
    store = Store.open(home)
    sessions = store.list_sessions(limit=1000)
    assert len(sessions) == 240
    events = store.events_since(0, limit=10_000)
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert sum(e["kind"] == "session.created" for e in events) == 240
    store.close()


CRASHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from engine.store import Store
    store = Store.open(Path(sys.argv[1]))
    for i in range(10):
        store.create_session(f"committed-{i}")
    with store.db.transaction() as tx:
        tx.execute("INSERT INTO sessions (id, name, metadata, created_at, updated_at)"
                   " VALUES ('uncommitted', 'lost', '{}', 'x', 'x')")
        print("in-transaction", flush=True)
        time.sleep(60)
    """
)


def test_a_killed_writer_leaves_committed_data_and_no_partial_write(home: Path) -> None:
    Store.open(home).close()
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(home)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "in-transaction"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    store = Store.open(home)
    names = {s["name"] for s in store.list_sessions(limit=100)}
    assert names == {f"committed-{i}" for i in range(10)}
    assert store.db.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.create_session("after the crash")  # the write lock was released by the crash
    store.close()


def test_failed_image_insert_leaves_no_blob_and_no_event(home: Path) -> None:
    store = Store.open(home)
    session = store.create_session("s")
    last = store.last_event_id()
    with pytest.raises(MedVisionError):
        store.add_image(session["id"], blob_data=b"pixels" * 1000, record={"type": "CXR", "format": "png",
                                                                           "no_such_column": 1})
    assert store.blobs.ids_on_disk() == set()
    assert store.events_since(last) == []
    with pytest.raises(MedVisionError) as err:
        store.add_image("missing", blob_data=b"x", record={"type": "CXR", "format": "png"})
    assert err.value.code is ErrorCode.SESSION_NOT_FOUND
    store.close()


def test_identical_files_share_one_blob(home: Path) -> None:
    store = Store.open(home)
    session = store.create_session("s")
    record = {"type": "Other", "format": "png"}
    a = store.add_image(session["id"], blob_data=b"same bytes" * 100, record=record)
    b = store.add_image(session["id"], blob_data=b"same bytes" * 100, record=record)
    assert a["id"] != b["id"] and a["blob_id"] == b["blob_id"]
    assert len(store.blobs.ids_on_disk()) == 1
    assert store.image_bytes(b) == b"same bytes" * 100
    store.close()


def test_jobs_retry_then_fail_and_survive_a_restart(home: Path) -> None:
    store = Store.open(home)
    job_id = store.enqueue_job("analyze", {"image": "x"}, max_attempts=2)
    job = store.claim_job("worker-1")
    assert job["id"] == job_id and job["attempts"] == 1 and job["status"] == "running"
    assert store.claim_job("worker-2") is None  # running jobs are not handed out twice
    assert store.finish_job(job_id, error="boom") == "queued"
    store.claim_job("worker-1")
    store.close()
    # The process died while the job ran: the next start puts it back or fails it.
    store = Store.open(home)
    assert store.requeue_stale_jobs() == 1
    assert store.get_job(job_id)["status"] == "failed"  # 2 attempts used up
    other = store.enqueue_job("analyze", {})
    store.claim_job("w")
    assert store.finish_job(other, result={"ok": True}) == "done"
    kinds = [e["kind"] for e in store.events_since(0)]
    assert "job.queued" in kinds and "job.done" in kinds
    store.close()


def test_unknown_ids_are_coded_errors(home: Path) -> None:
    store = Store.open(home)
    with pytest.raises(MedVisionError) as err:
        store.get_session("nope")
    assert err.value.code is ErrorCode.SESSION_NOT_FOUND
    session = store.create_session("s")
    with pytest.raises(MedVisionError) as err:
        store.set_current_image(session["id"], "nope")
    assert err.value.code is ErrorCode.IMAGE_NOT_FOUND
    store.close()


def test_nested_transactions_are_atomic_together(home: Path) -> None:
    store = Store.open(home)
    session = store.create_session("s")
    image = store.add_image(session["id"], blob_data=b"x", record={"type": "CXR", "format": "png", "rows": 10, "columns": 10})
    before = store.last_event_id()
    with pytest.raises(MedVisionError), store.db.transaction():
        AnnotationService(store).add_row(session["id"], image["id"], "point", [5, 5])
        store.add_analysis(session["id"], image["id"], "region", {"model_trained": None})
        AnnotationService(store).add_row(session["id"], image["id"], "point", [50, 5])  # outside: INVALID_REGION
    assert store.list_annotations(session["id"]) == [] and store.list_analyses(session["id"]) == []
    assert store.events_since(before) == []
    with store.db.transaction():
        AnnotationService(store).add_row(session["id"], image["id"], "point", [5, 5])
        store.add_analysis(session["id"], image["id"], "region", {"model_trained": None})
    assert len(store.list_annotations(session["id"])) == 1 and len(store.list_analyses(session["id"])) == 1
    store.close()
