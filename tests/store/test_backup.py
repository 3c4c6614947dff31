"""Backup while the DICOM node receives, verified restore into an empty directory, and the
coded refusals (not empty, damaged, wrong or missing key, another site's key) that change nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import ErrorCode, MedVisionError
from engine.store import Store
from engine.store.backup import MANIFEST_NAME, backup, restore
from engine.store.keys import KEY_FILE_NAME, load_key_file
from tests.dicom_node.conftest import REPO, free_port, make_series, node_process


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def test_backup_while_storescu_pushes_200_instances_restores_every_recorded_one(
        home: Path, tmp_path: Path, model_pack: Path) -> None:
    files = make_series(tmp_path / "series", 200)
    port = free_port()
    node = node_process(home, port, model_pack, "--no-analyze")
    try:
        push = subprocess.Popen(["storescu", "-aet", "MODALITY", "127.0.0.1", str(port), *map(str, files)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(list((home / "blobs").glob("*/*.mvb"))) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        key = load_key_file(home / KEY_FILE_NAME)
        result = backup(home, tmp_path / "backup", key)
        assert push.wait(300) == 0, push.stderr.read()
    finally:
        node.terminate()
        node.wait(60)
    recorded = {Path(f["path"]).stem for f in result["files"] if f["path"].startswith("blobs/")}
    assert len(recorded) >= 30
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    target = tmp_path / "restored"
    done = subprocess.run([sys.executable, "-m", "engine.cli", "--home", str(target), "restore",
                           str(tmp_path / "backup"), "--key-file", str(home / KEY_FILE_NAME)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    store = Store.open(target, use_keyring=False)
    try:
        images = store.db.query("SELECT * FROM images WHERE sop_instance_uid IS NOT NULL")
        assert {image["blob_id"] for image in images} == recorded
        for image in images:
            assert store.image_bytes(image)[128:132] == b"DICM"
    finally:
        store.close()
    original = Store.open(home, use_keyring=False)  # the node lost nothing meanwhile
    try:
        assert original.db.query("SELECT count(*) AS n FROM images")[0]["n"] == 200
    finally:
        original.close()


@pytest.fixture
def backed_up(home: Path, tmp_path: Path) -> tuple[Path, Path]:
    store = Store.open(home, use_keyring=False)
    try:
        session = store.create_session("backup")["id"]
        store.blobs.write_bytes("cd" * 16, b"payload" * 1000)
    finally:
        store.close()
    out = tmp_path / "backup"
    backup(home, out, load_key_file(home / KEY_FILE_NAME))
    assert json.loads((out / MANIFEST_NAME).read_text())["databases"][0]["path"] == "medvision.db"
    return out, Path(session)


def test_restore_refuses_a_non_empty_target_a_damaged_backup_and_other_keys(
        backed_up: tuple[Path, Path], home: Path, tmp_path: Path) -> None:
    out, _ = backed_up
    key = load_key_file(home / KEY_FILE_NAME)
    target = tmp_path / "target"
    target.mkdir()
    (target / "something").write_text("x")
    with pytest.raises(MedVisionError) as raised:
        restore(out, target, key)
    assert raised.value.code == ErrorCode.TARGET_EXISTS
    assert _snapshot(target) == {target / "something": b"x"}

    empty = tmp_path / "empty"
    with pytest.raises(MedVisionError) as raised:
        restore(out, empty, os.urandom(32))  # another site's key
    assert raised.value.code == ErrorCode.DATABASE_ERROR and not empty.exists()

    blob = next(out.glob("blobs/*/*.mvb"))
    blob.write_bytes(blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 1]))
    with pytest.raises(MedVisionError) as raised:
        restore(out, empty, key)
    assert raised.value.code == ErrorCode.DATABASE_ERROR and "digest" in raised.value.message
    assert not empty.exists()


def test_backup_refuses_a_non_empty_folder_and_a_wrong_key(home: Path, tmp_path: Path) -> None:
    Store.open(home, use_keyring=False).close()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(MedVisionError) as raised:
        backup(home, out, load_key_file(home / KEY_FILE_NAME))
    assert raised.value.code == ErrorCode.TARGET_EXISTS and _snapshot(out) == {out / "keep": b"x"}
    with pytest.raises(MedVisionError) as raised:
        backup(home, tmp_path / "new", os.urandom(32))
    assert raised.value.code == ErrorCode.DATABASE_ERROR and not (tmp_path / "new").exists()


def test_cli_restore_without_a_key_is_a_coded_error(backed_up: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out, _ = backed_up
    assert main(["--home", str(tmp_path / "t"), "restore", str(out)]) == 2
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT:")
    assert not (tmp_path / "t").exists()
    assert main(["--home", str(tmp_path / "t"), "restore", str(tmp_path / "nothing"), "--key-file",
                 str(tmp_path / "none.key")]) == 2
    assert capsys.readouterr().err.startswith("FILE_NOT_FOUND:")
