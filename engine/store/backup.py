"""Backup and restore of a data directory, encrypted end to end, while it is in use.

``backup(home, out)``: each database is copied with SQLite's online backup API into a file
keyed with the same key (one consistent snapshot; WAL readers never block the node or the
desktop); then every committed blob on disk is copied *after* that snapshot, so the copy
holds every blob the snapshot's rows name, and every instance acknowledged since (an
``MVB2`` blob is its own record: the restored store indexes it at its first open). Files are
copied as they are (still encrypted), hashed while copied; a verify pass re-reads every copy
and compares digests, and only then is ``manifest.json`` written: a backup without one is
not a backup. The key is never written into the backup.

``restore(backup, home, key)``: into an empty directory only (``TARGET_EXISTS`` otherwise);
every digest is checked and the key must open the backup's database and data key
(``DATABASE_ERROR`` for another site's key) before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlcipher3

from engine.errors import ErrorCode, MedVisionError
from engine.files import fsync_dir
from engine.store.envelope import ENVELOPE_NAME, key_id, read_wraps, unwrap
from engine.store.rotation import KEYED_DATABASES

MANIFEST_NAME = "manifest.json"
#: Folders of encrypted blobs that a backup carries (the embedding cache is recomputed).
BLOB_DIRS = ("blobs", "rag/index")
_COPY_BYTES = 8 << 20
_THREADS = 4


def _keyed(path: Path, key: bytes) -> sqlcipher3.Connection:
    conn = sqlcipher3.connect(str(path), isolation_level=None, timeout=30)
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    return conn


def _check_key(path: Path, key: bytes, what: str) -> None:
    conn = _keyed(path, key)
    try:
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"{what} failed its integrity check")
    except sqlcipher3.DatabaseError as exc:
        raise MedVisionError(ErrorCode.DATABASE_ERROR, f"{what} does not open with this key "
                             "(another site's key, or a retired one)") from exc
    finally:
        conn.close()


def _digest(path: Path) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(_COPY_BYTES):
            sha.update(block)
            size += len(block)
    return size, sha.hexdigest()


def _copy(source: Path, target: Path) -> tuple[int, str]:
    """Copy a file and return the size and SHA-256 of what was read (made durable later by
    :func:`_sync_all`: a wait for each file in turn would serialise the writes)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sha, size = hashlib.sha256(), 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        while block := src.read(_COPY_BYTES):
            sha.update(block)
            dst.write(block)
            size += len(block)
    return size, sha.hexdigest()


def _copy_if_present(source: Path, target: Path) -> tuple[int, str] | None:
    try:
        return _copy(source, target)
    except FileNotFoundError:
        return None


def _parallel(function, items: list) -> list:  # noqa: ANN001
    """``function`` over ``items`` on a few threads, in order: hashing (which releases the
    GIL) overlaps the reads and writes of the other files."""
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        return list(pool.map(function, items))


def _sync_all(root: Path, entries: list[dict]) -> None:
    """fsync every copied file, once the kernel has been writing them back, then their folders."""
    def sync(entry: dict) -> None:
        fd = os.open(root / entry["path"], os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    _parallel(sync, entries)
    for folder in {(root / e["path"]).parent for e in entries} | {root}:
        fsync_dir(folder)


def _require_empty(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise MedVisionError(ErrorCode.TARGET_EXISTS, f"{path.name} exists and is not an empty folder",
                             path=path.name)


def _disk_error(exc: OSError) -> MedVisionError:
    if exc.errno in (28, 122):  # ENOSPC, EDQUOT
        return MedVisionError(ErrorCode.DISK_FULL, "no space left for the backup")
    return MedVisionError(ErrorCode.DATABASE_ERROR, f"backup failed: {exc.strerror}")


def backup(home: Path, out: Path, key: bytes) -> dict:
    """Copy ``home`` into the empty or new folder ``out``; returns the manifest (plus timings)."""
    home, out = Path(home), Path(out)
    _require_empty(out)
    if not (home / KEYED_DATABASES[0]).exists():
        raise MedVisionError(ErrorCode.DATABASE_ERROR, "no database in the data directory: nothing to back up")
    _check_key(home / KEYED_DATABASES[0], key, "the database")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    try:
        manifest = _write_backup(home, out, key)
    except OSError as exc:
        raise _disk_error(exc) from exc
    manifest["seconds"] = time.perf_counter() - started
    return manifest


def _write_backup(home: Path, out: Path, key: bytes) -> dict:
    databases = []
    for name in KEYED_DATABASES:
        if not (home / name).exists():
            continue
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        source, target = _keyed(home / name, key), _keyed(out / name, key)
        try:
            source.backup(target)  # one consistent snapshot, all pages in one step
        finally:
            target.close()
            source.close()
        size, digest = _digest(out / name)
        databases.append({"path": name, "size": size, "sha256": digest})
    files = []
    envelope = home / ENVELOPE_NAME
    if envelope.exists():
        size, digest = _copy(envelope, out / ENVELOPE_NAME)
        files.append({"path": ENVELOPE_NAME, "size": size, "sha256": digest})
    listed = [path.relative_to(home).as_posix()  # listed after the snapshot: a superset of the blobs its rows name
              for folder in BLOB_DIRS for path in sorted((home / folder).glob("*/*.mvb"))]
    for relative, copied in zip(listed, _parallel(lambda r: _copy_if_present(home / r, out / r), listed), strict=True):
        if copied is not None:  # None: erased since it was listed
            files.append({"path": relative, "size": copied[0], "sha256": copied[1]})
    _sync_all(out, [*databases, *files])
    manifest = {"version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "key_id": key_id(key), "databases": databases, "files": files}
    verify(out, manifest)
    for entry in databases:
        _check_key(out / entry["path"], key, f"the copy of {entry['path']}")
    tmp = out / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, out / MANIFEST_NAME)
    fsync_dir(out)
    return {**manifest, "bytes": sum(e["size"] for e in databases + files)}


def read_manifest(folder: Path) -> dict:
    """The manifest of a finished backup (``INVALID_ARGUMENT`` when there is none)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text())
        manifest["databases"], manifest["files"]  # noqa: B018 - the shape is checked here
    except FileNotFoundError as exc:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "not a finished backup (no manifest.json)") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "the backup's manifest.json is damaged") from exc
    return manifest


def verify(folder: Path, manifest: dict) -> None:
    """Every file of ``manifest`` is in ``folder`` with its size and digest (``DATABASE_ERROR``)."""
    entries = [*manifest["databases"], *manifest["files"]]
    for entry in entries:
        relative = Path(entry["path"])
        if ".." in relative.parts or relative.is_absolute():
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "the backup's manifest names a path outside it")
        if not (Path(folder) / relative).is_file():
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"the backup lacks {entry['path']}")
    digests = _parallel(lambda entry: _digest(Path(folder) / entry["path"]), entries)
    for entry, found in zip(entries, digests, strict=True):
        if found != (entry["size"], entry["sha256"]):
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"{entry['path']} in the backup failed its digest check")


def restore(source: Path, home: Path, key: bytes) -> dict:
    """Restore the backup in ``source`` into the empty or new folder ``home``."""
    source, home = Path(source), Path(home)
    _require_empty(home)
    manifest = read_manifest(source)
    verify(source, manifest)
    for entry in manifest["databases"]:
        _check_key(source / entry["path"], key, "the backup")
    wraps = read_wraps(source)
    if wraps is not None:
        unwrap(wraps, key)  # another site's key fails here, before anything is written
    created = not home.exists()
    try:
        entries = [*manifest["databases"], *manifest["files"]]
        _parallel(lambda entry: _copy(source / entry["path"], home / entry["path"]), entries)
        _sync_all(home, [*manifest["databases"], *manifest["files"]])
    except OSError as exc:
        _clear(home, created)
        raise _disk_error(exc) from exc
    except BaseException:
        _clear(home, created)
        raise
    return {"databases": len(manifest["databases"]), "files": len(manifest["files"]),
            "bytes": sum(e["size"] for e in manifest["databases"] + manifest["files"])}


def _clear(home: Path, created: bool) -> None:
    """Leave ``home`` as it was found: empty (or absent)."""
    if created:
        shutil.rmtree(home, ignore_errors=True)
        return
    for child in home.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
