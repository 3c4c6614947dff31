"""Retention: ``medvision sessions purge`` (a real process, real SQLCipher) erases every file and row of
an expired session and nothing of a pinned, unexpired or kept one; ``--dry-run`` changes nothing;
an expired id then answers SESSION_EXPIRED (engine, CLI, MCP over stdio), an unknown one SESSION_NOT_FOUND."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from engine.api import Engine
from engine.config import RetentionPolicy
from engine.errors import ErrorCode, MedVisionError
from engine.store import Store
from tests.conftest import REPO
from tests.erasure import (
    age,
    consistency_problems,
    dump_rows,
    fill_session,
    mentioning,
    needles,
    walk_files,
)


def medvision(home: Path, model_pack: Path, *args: str) -> subprocess.CompletedProcess:
    """``medvision ARGS`` as its own process over ``home`` (default retention policy)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVISION_RETAIN")}
    env.update(MEDVISION_HOME=str(home), MEDVISION_MODEL_PACK=str(model_pack), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def aged(home: Path) -> tuple[Store, dict[str, dict]]:
    """Six sessions under the default policy (MCP 24 h, received 30 days, opened files kept)."""
    store = Store.open(home)
    sessions = {
        "expired_mcp": fill_session(store, "agent study", "mcp", ["CT_small.dcm", "MR_small.dcm"]),
        "expired_dicom": fill_session(store, "received study", "dicom", ["US1_UNCR.dcm"]),
        "pinned_mcp": fill_session(store, "pinned agent study", "mcp", ["JPEG2000.dcm"]),
        "fresh_mcp": fill_session(store, "fresh agent study", "mcp", ["SC_rgb.dcm"]),
        "recent_dicom": fill_session(store, "recent received study", "dicom", ["MR_small_RLE.dcm"]),
        # Holds the same file as an expired session: the shared blob must stay.
        "old_file": fill_session(store, "opened file", "file", ["CT_small.dcm"]),
    }
    store.set_session_pinned(sessions["pinned_mcp"]["session_id"], True)
    age(store, sessions["expired_mcp"]["session_id"], days=2)
    age(store, sessions["pinned_mcp"]["session_id"], days=2)
    age(store, sessions["expired_dicom"]["session_id"], days=31)
    age(store, sessions["recent_dicom"]["session_id"], days=29)
    age(store, sessions["old_file"]["session_id"], days=400)
    yield store, sessions
    store.close()


def test_purge_erases_every_file_and_row_of_expired_sessions_only(home: Path, model_pack: Path, aged) -> None:
    store, sessions = aged
    expired = {sessions[k]["session_id"] for k in ("expired_mcp", "expired_dicom")}
    files_before, rows_before = walk_files(home), dump_rows(store)
    assert all(f in files_before for s in sessions.values() for f in s["files"])

    dry = medvision(home, model_pack, "sessions", "purge", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)
    assert listed["dry_run"] is True and {s["session_id"] for s in listed["sessions"]} == expired
    assert walk_files(home) == files_before and dump_rows(store) == rows_before  # the dry run changed nothing

    purge = medvision(home, model_pack, "sessions", "purge", "--json")
    assert purge.returncode == 0, purge.stderr
    assert {s["session_id"] for s in json.loads(purge.stdout)["sessions"]} == expired
    files_after, rows_after = walk_files(home), dump_rows(store)

    # Files: exactly the expired sessions' own files are gone (the blob shared with old_file stays).
    shared = set(sessions["old_file"]["files"])
    erased = {f for k in ("expired_mcp", "expired_dicom") for f in sessions[k]["files"]} - shared
    assert len(erased) >= 7  # 3 images (one shared), 2 exports, 3 embeddings
    assert set(files_before) - set(files_after) == erased
    assert {f: h for f, h in files_after.items()} == {f: h for f, h in files_before.items() if f not in erased}

    # Rows: nothing names an expired session any more but its tombstone and its session.deleted event.
    kept_blobs = set(sessions["old_file"]["blob_ids"])
    for key in ("expired_mcp", "expired_dicom"):
        left = mentioning(rows_after, [n for n in needles(sessions[key]) if n not in kept_blobs])
        assert set(left) == {"session_tombstones", "events"}, left
        assert len(left["session_tombstones"]) == 1 and len(left["events"]) == 1
        assert "session.deleted" in left["events"][0] and "expired" in left["events"][0][3]
        tombstone = left["session_tombstones"][0]
        assert tombstone[0] == sessions[key]["session_id"] and "study" not in " ".join(tombstone)  # no name
    # Every other session's rows are untouched.
    for key in ("pinned_mcp", "fresh_mcp", "recent_dicom", "old_file"):
        ids = [n for n in needles(sessions[key]) if n not in kept_blobs]  # the shared blob: checked by the walk
        assert mentioning(rows_after, ids) == mentioning(rows_before, ids), key
    assert consistency_problems(store) == []
    assert store.db.query("PRAGMA secure_delete")[0]["secure_delete"] == 1  # deleted rows overwritten in the file

    again = medvision(home, model_pack, "sessions", "purge")
    assert again.returncode == 0 and "erased 0 expired session(s)" in again.stdout
    assert walk_files(home) == files_after


def test_an_expired_id_answers_session_expired_and_an_unknown_one_session_not_found(
        home: Path, model_pack: Path, aged) -> None:
    store, sessions = aged
    expired = sessions["expired_mcp"]["session_id"]
    assert medvision(home, model_pack, "sessions", "purge").returncode == 0

    with pytest.raises(MedVisionError) as err:
        store.get_session(expired)
    assert err.value.code is ErrorCode.SESSION_EXPIRED and err.value.details["source"] == "mcp"
    with pytest.raises(MedVisionError) as err:
        store.get_session("0123456789ab")
    assert err.value.code is ErrorCode.SESSION_NOT_FOUND

    shown = medvision(home, model_pack, "sessions", "show", expired)
    assert shown.returncode == 2 and shown.stderr.startswith("SESSION_EXPIRED:"), shown.stderr
    unknown = medvision(home, model_pack, "sessions", "show", "0123456789ab")
    assert unknown.returncode == 2 and unknown.stderr.startswith("SESSION_NOT_FOUND:"), unknown.stderr

    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVISION_RETAIN")}
    env.update(MEDVISION_HOME=str(home), MEDVISION_MODEL_PACK=str(model_pack), PYTHONPATH=str(REPO))
    parameters = StdioServerParameters(command=sys.executable, args=["-m", "engine.mcp", "--root", str(home),
                                                                     "--timeout", "120"],
                                       env=env, cwd=str(REPO))

    async def scenario() -> None:
        async with stdio_client(parameters) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            for session_id, code in ((expired, "SESSION_EXPIRED"), ("0123456789ab", "SESSION_NOT_FOUND")):
                result = await client.call_tool("get_session_status", {"session_id": session_id})
                assert result.isError and json.loads(result.content[0].text)["code"] == code
            kept = sessions["fresh_mcp"]["session_id"]
            pinned = await client.call_tool("pin_session", {"session_id": kept})
            assert not pinned.isError and pinned.structuredContent["pinned"] is True
            deleted = await client.call_tool("delete_session", {"session_id": kept})
            assert not deleted.isError and deleted.structuredContent["deleted"] is True
            result = await client.call_tool("get_session_status", {"session_id": kept})
            assert json.loads(result.content[0].text)["code"] == "SESSION_NOT_FOUND"  # deleted, not expired

    anyio.run(scenario)
    assert set(sessions["fresh_mcp"]["files"]).isdisjoint(walk_files(home))
    assert consistency_problems(store) == []


def test_pin_unpin_and_a_policy_from_the_environment(home: Path, model_pack: Path, aged,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store, sessions = aged
    pinned = sessions["pinned_mcp"]["session_id"]
    with Engine(home=home, model_pack=model_pack) as engine:
        assert engine.pin_session(pinned, False)["pinned"] is False
        age(store, pinned, days=2)  # unpinning is activity; age it again
        listing = {s["session_id"]: s for s in engine.list_sessions()}
        assert listing[pinned]["pinned"] is False and listing[pinned]["source"] == "mcp"
        assert listing[sessions["expired_dicom"]["session_id"]]["source"] == "dicom"
        dry = engine.purge_expired_sessions(dry_run=True)
        assert pinned in {s["session_id"] for s in dry["sessions"]}
        with pytest.raises(MedVisionError) as err:
            engine.pin_session("0123456789ab")
        assert err.value.code is ErrorCode.SESSION_NOT_FOUND

    monkeypatch.setenv("MEDVISION_RETAIN_MCP_HOURS", "keep")
    monkeypatch.setenv("MEDVISION_RETAIN_OPENED_DAYS", "365")
    monkeypatch.setenv("MEDVISION_RETAIN_RECEIVED_DAYS", "60")
    with Engine(home=home, model_pack=model_pack) as engine:
        result = engine.purge_expired_sessions()
    assert {s["session_id"] for s in result["sessions"]} == {sessions["old_file"]["session_id"]}
    assert result["policy"]["mcp"] is None and result["policy"]["file"] == 365 * 86400

    for bad in ("-3", "0", "nan", "inf", "a day"):
        monkeypatch.setenv("MEDVISION_RETAIN_MCP_HOURS", bad)
        with pytest.raises(ValueError, match="MEDVISION_RETAIN_MCP_HOURS must be a positive number or 'keep'"):
            RetentionPolicy.from_env()
