"""Key rotation: new database key, data key rewrapped, old key refused; a kill -9 at each
step leaves a data directory that the next open rolls forward, every blob readable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from engine.errors import ErrorCode, MedVisionError
from engine.store import Store
from engine.store.envelope import read_wraps
from engine.store.keys import KEY_FILE_NAME, resolve_keys
from engine.store.rotation import rotate

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = Path(get_testdata_file("CT_small.dcm")).read_bytes()
BLOB_ID = "ab" * 16


def _populate(home: Path) -> tuple[bytes, str]:
    store = Store.open(home, use_keyring=False)
    try:
        session = store.create_session("rotation")["id"]
        store.blobs.write_bytes(BLOB_ID, PAYLOAD)
        return store.key, session
    finally:
        store.close()


def _check_readable(home: Path, session: str) -> bytes:
    store = Store.open(home, use_keyring=False)
    try:
        assert store.get_session(session)["id"] == session
        assert store.blobs.read_bytes(BLOB_ID) == PAYLOAD
        return store.key
    finally:
        store.close()


def test_rotation_replaces_the_key_and_refuses_the_old_one(home: Path) -> None:
    old, session = _populate(home)
    steps: list[str] = []
    result = rotate(home, use_keyring=False, on_step=steps.append)
    assert steps == ["wrapped", "pending", "rekeyed medvision.db", "rekeyed", "unwrapped", "done"]
    assert result["databases"] == ["medvision.db"]
    new = _check_readable(home, session)
    assert new != old and resolve_keys(home, use_keyring=False) == ([new], "file")
    assert len(read_wraps(home)) == 1
    with pytest.raises(MedVisionError) as raised:
        Store.open(home, key=old)
    assert raised.value.code == ErrorCode.DATABASE_ERROR
    assert (home / KEY_FILE_NAME).stat().st_mode & 0o077 == 0


def test_rotation_refuses_a_key_from_the_environment_and_changes_nothing(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, session = _populate(home)
    monkeypatch.setenv("MEDVISION_DB_KEY", old.hex())
    before = (home / "keys.json").read_bytes()
    with pytest.raises(MedVisionError) as raised:
        rotate(home, use_keyring=False)
    assert raised.value.code == ErrorCode.INVALID_ARGUMENT
    assert (home / "keys.json").read_bytes() == before
    assert _check_readable(home, session) == old


def test_wrong_or_missing_key_is_refused_and_changes_nothing(home: Path) -> None:
    old, session = _populate(home)
    (home / KEY_FILE_NAME).write_text(os.urandom(32).hex() + "\n")
    files = {p: p.read_bytes() for p in home.rglob("*") if p.is_file() and p.name != KEY_FILE_NAME}
    with pytest.raises(MedVisionError) as raised:
        rotate(home, use_keyring=False)
    assert raised.value.code == ErrorCode.DATABASE_ERROR
    (home / KEY_FILE_NAME).unlink()
    with pytest.raises(MedVisionError) as raised:
        rotate(home, use_keyring=False)
    assert raised.value.code == ErrorCode.DATABASE_ERROR
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} == files


def test_a_data_directory_made_before_envelopes_keeps_its_blobs(home: Path) -> None:
    """Blobs written when their key derived from the database key stay readable."""
    old, session = _populate(home)
    (home / "keys.json").unlink()  # what such a directory looks like: data key = database key
    from engine.store.blobs import BlobStore

    BlobStore(home / "blobs", old).write_bytes(BLOB_ID, PAYLOAD)
    assert _check_readable(home, session) == old
    rotate(home, use_keyring=False)
    _check_readable(home, session)


CHILD = """
import os, signal, sys
from pathlib import Path
from engine.store.rotation import rotate
target = sys.argv[2]
def step(name):
    if name == target:
        os.kill(os.getpid(), signal.SIGKILL)
rotate(Path(sys.argv[1]), use_keyring=False, on_step=step)
"""


@pytest.mark.parametrize("point", ["wrapped", "pending", "rekeyed medvision.db", "unwrapped"])
def test_kill_9_during_rotation_leaves_a_consistent_directory(home: Path, point: str) -> None:
    old, session = _populate(home)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(home), point], env=env, timeout=60)
    assert done.returncode == -9
    keys, _ = resolve_keys(home, use_keyring=False)
    assert old in keys  # until the databases are rekeyed, the old key is still held
    new = _check_readable(home, session)  # the open rolls the rotation forward
    assert resolve_keys(home, use_keyring=False) == ([new], "file") and len(read_wraps(home)) == 1
    if point == "wrapped":  # killed before the provider held the new key: nothing rotated
        assert new == old
    else:
        assert new != old
        with pytest.raises(MedVisionError):
            Store.open(home, key=old)
    rotate(home, use_keyring=False)  # and a later rotation works
    _check_readable(home, session)


def test_rotation_rekeys_the_audit_trail_and_the_reference_library_too(home: Path) -> None:
    from engine.rag import ReferenceLibrary

    def library(key: bytes, data_key: bytes) -> ReferenceLibrary:
        return ReferenceLibrary(home, key, blob_key=data_key, embedder=lambda image: None, embedder_id="test")

    old, session = _populate(home)
    store = Store.open(home, use_keyring=False)
    data_key = store.data_key
    store.audit.db.query("SELECT 1")  # the audit trail's database exists from its first use
    store.close()
    library(old, data_key).close()
    assert rotate(home, use_keyring=False)["databases"] == ["medvision.db", "audit.db", "rag/reference.db"]
    store = Store.open(home, use_keyring=False)
    new, same_data_key = store.key, store.data_key
    assert store.audit.db.query("SELECT count(*) AS n FROM sqlite_master")[0]["n"] > 0
    store.close()
    assert same_data_key == data_key
    library(new, data_key).close()
    with pytest.raises(MedVisionError) as raised:
        library(old, data_key)
    assert raised.value.code == ErrorCode.DATABASE_ERROR


def test_two_processes_opening_a_new_data_directory_share_one_data_key(home: Path) -> None:
    from engine.store.envelope import open_data_key, unwrap, write_wraps

    key = os.urandom(32)
    first = open_data_key(home, key, database_existed=False)
    with pytest.raises(FileExistsError):  # what the slower of two racing processes meets
        write_wraps(home, os.urandom(32), [key], exclusive=True)
    assert unwrap(read_wraps(home), key) == first and list(home.glob("*.tmp")) == []
    assert open_data_key(home, key, database_existed=False) == first
    (home / "keys.json").unlink()
    assert open_data_key(home, key, database_existed=True) == key  # made before envelopes
