"""Key rotation: a new key-chain key, the databases rekeyed, the data key rewrapped.

Steps, each durable before the next (a kill at any point leaves every database readable
with one of the two keys, and the next open rolls the rotation forward):

1. ``wrapped``: the envelope holds the data key wrapped by the old *and* the new key;
2. ``pending``: the provider (key file or keyring) holds ``new`` then ``old``;
3. ``rekeyed``: each database is rekeyed (``PRAGMA rekey``, one transaction each); one
   that already opens with the new key is left alone;
4. ``unwrapped``: the envelope holds the new key's wrap only;
5. the provider holds the new key only: the old key opens nothing any more.

Blobs are not touched (envelope encryption, :mod:`engine.store.envelope`), so the time
does not grow with the number of received instances; it grows with the databases' size
(rekey rewrites every page). Every process using the data directory must be stopped first.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path

import sqlcipher3

from engine.errors import ErrorCode, MedVisionError
from engine.store.envelope import key_id, read_wraps, unwrap, write_wraps
from engine.store.keys import ENV_KEY, KEY_BYTES, resolve_keys, write_keys

#: The databases of a data directory keyed with the key-chain key: the store, its audit trail
#: and the reference-case library (named here: the store layer cannot import engine.rag).
KEYED_DATABASES = ("medvision.db", "audit.db", "rag/reference.db")

Step = Callable[[str], None]


def _connect(path: Path, key: bytes) -> sqlcipher3.Connection | None:
    """A connection keyed with ``key``, or None when the key does not open the file."""
    conn = sqlcipher3.connect(str(path), isolation_level=None, timeout=30)
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher3.DatabaseError:
        conn.close()
        return None
    return conn


def _rekey(path: Path, old: bytes, new: bytes) -> None:
    conn = _connect(path, new)
    if conn is not None:  # done before an interruption
        conn.close()
        return
    conn = _connect(path, old)
    if conn is None:
        raise MedVisionError(ErrorCode.DATABASE_ERROR, f"{path.name} opens with neither the old nor the new key")
    try:
        conn.execute(f"PRAGMA rekey = \"x'{new.hex()}'\"")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _databases(home: Path) -> list[Path]:
    return [home / name for name in KEYED_DATABASES if (home / name).exists()]


def finish_rotation(home: Path, keys: list[bytes], provider: str, on_step: Step | None = None) -> None:
    """Steps 3 to 5 for ``keys`` = ``[new, old]`` (idempotent: also the roll-forward at open)."""
    step = on_step or (lambda name: None)
    new, old = keys
    for path in _databases(home):
        _rekey(path, old, new)
        step(f"rekeyed {path.name}")
    step("rekeyed")
    wraps = read_wraps(home)
    if wraps is None:
        raise MedVisionError(ErrorCode.DATABASE_ERROR, "the data key envelope is missing; the rotation cannot finish")
    try:
        data_key = unwrap(wraps, new)
    except MedVisionError:
        data_key = unwrap(wraps, old)
    write_wraps(home, data_key, [new])
    step("unwrapped")
    write_keys(home, [new], provider)
    step("done")


def rotate(home: Path, *, use_keyring: bool = True, on_step: Step | None = None) -> dict:
    """Replace the key of ``home``; returns ``{"key_id", "seconds", "databases"}``.

    Raises ``DATABASE_ERROR`` when no key is found or it opens nothing, ``INVALID_ARGUMENT``
    when the key comes from ``MEDVISION_DB_KEY`` (nothing is changed in either case)."""
    step = on_step or (lambda name: None)
    home = Path(home)
    started = time.perf_counter()
    found = resolve_keys(home, use_keyring=use_keyring)
    if found is None or not (home / KEYED_DATABASES[0]).exists():
        raise MedVisionError(ErrorCode.DATABASE_ERROR, "no data directory with a key here: nothing to rotate")
    keys, provider = found
    if provider == "env":
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"the key comes from {ENV_KEY}: a rotation cannot change it "
                             "(unset it to rotate the key file or keyring entry); nothing was changed")
    if len(keys) == 2:  # an earlier rotation was interrupted: finish it first
        finish_rotation(home, keys, provider, on_step)
    old = keys[0]
    conn = _connect(home / KEYED_DATABASES[0], old)
    if conn is None:
        raise MedVisionError(ErrorCode.DATABASE_ERROR, "wrong database key: nothing was changed")
    conn.close()
    wraps = read_wraps(home)
    if wraps is None:
        raise MedVisionError(ErrorCode.DATABASE_ERROR, "the data key envelope is missing: open the store once first")
    data_key = unwrap(wraps, old)
    new = secrets.token_bytes(KEY_BYTES)
    write_wraps(home, data_key, [old, new])
    step("wrapped")
    write_keys(home, [new, old], provider)
    step("pending")
    finish_rotation(home, [new, old], provider, on_step)
    return {"key_id": key_id(new), "seconds": time.perf_counter() - started,
            "databases": [p.relative_to(home).as_posix() for p in _databases(home)]}


def recover(home: Path, *, use_keyring: bool = True) -> None:
    """At open: finish a rotation a kill interrupted (the provider still holds two keys), or
    drop the wrap of a new key that never reached the provider (killed after step 1)."""
    found = resolve_keys(home, use_keyring=use_keyring)
    if found is None:
        return
    keys, provider = found
    if len(keys) == 2:
        finish_rotation(home, keys, provider)
        return
    wraps = read_wraps(home)
    if wraps is not None and len(wraps) > 1:
        write_wraps(home, unwrap(wraps, keys[0]), keys)
