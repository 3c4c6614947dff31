"""Envelope encryption of blobs: one random *data key*, wrapped by the key-chain key.

Blob keys derive from the data key (:func:`engine.store.blobs.derive_blob_key`), not from
the key the provider chain finds, so a key rotation rewraps 32 bytes instead of
re-encrypting every blob: its cost does not grow with the data. ``keys.json`` in the data
directory holds the wraps, one per key-chain key that may open it (two only while a
rotation is in progress). A wrap is AES-256-GCM under a key derived from the key-chain key
(HKDF-SHA256, its own label), so a wrong key fails its tag, never yields a wrong data key.

A data directory made before envelopes had its blobs keyed from the database key itself:
its data key is that first key (wrapped at the first open), so its blobs stay readable.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.errors import ErrorCode, MedVisionError
from engine.files import fsync_dir

ENVELOPE_NAME = "keys.json"
_AAD = b"medvision data key v1"
DATA_KEY_BYTES = 32


def _wrapping_key(key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"medvision key wrap v1").derive(key)


def key_id(key: bytes) -> str:
    """A public name of a key-chain key (16 hex digits of a hash of its wrapping key)."""
    return hashlib.sha256(_wrapping_key(key)).hexdigest()[:16]


def new_data_key() -> bytes:
    """A fresh random data key."""
    return secrets.token_bytes(DATA_KEY_BYTES)


def read_wraps(home: Path) -> list[dict] | None:
    """The wraps in ``home``'s envelope, or None when it has none yet."""
    path = home / ENVELOPE_NAME
    try:
        document = json.loads(path.read_text())
        return list(document["wraps"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise MedVisionError(ErrorCode.DATABASE_ERROR, f"{ENVELOPE_NAME} is damaged") from exc


def unwrap(wraps: list[dict], key: bytes) -> bytes:
    """The data key, from the wrap made for ``key``.

    Raises ``DATABASE_ERROR`` when no wrap opens with ``key`` (another site's key, or a
    key that a finished rotation retired)."""
    kid = key_id(key)
    for wrap in wraps:
        if wrap.get("key_id") != kid:
            continue
        try:
            return AESGCM(_wrapping_key(key)).decrypt(bytes.fromhex(wrap["nonce"]), bytes.fromhex(wrap["wrapped"]), _AAD)
        except (InvalidTag, ValueError, KeyError) as exc:
            raise MedVisionError(ErrorCode.DATABASE_ERROR, "the data key failed its integrity check") from exc
    raise MedVisionError(ErrorCode.DATABASE_ERROR, "this key does not open the data key (wrong key or retired key)")


def write_wraps(home: Path, data_key: bytes, keys: list[bytes], *, exclusive: bool = False) -> None:
    """Replace the envelope with one wrap of ``data_key`` per key: temp, fsync, rename, fsync(dir).
    ``exclusive``: create it only if there is none (``FileExistsError`` otherwise), so two
    processes opening a new data directory at once cannot each make their own data key."""
    wraps = []
    for key in keys:
        nonce = os.urandom(12)
        wrapped = AESGCM(_wrapping_key(key)).encrypt(nonce, data_key, _AAD)
        wraps.append({"key_id": key_id(key), "nonce": nonce.hex(), "wrapped": wrapped.hex()})
    home.mkdir(parents=True, exist_ok=True)
    path = home / ENVELOPE_NAME
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump({"version": 1, "wraps": wraps}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(home)


def open_data_key(home: Path, key: bytes, *, database_existed: bool) -> bytes:
    """The data key of ``home`` for the key-chain key ``key``, made on first use: random in
    a new data directory, the key itself in one made before envelopes (its blobs' key)."""
    wraps = read_wraps(home)
    if wraps is None:
        data_key = key if database_existed else new_data_key()
        try:
            write_wraps(home, data_key, [key], exclusive=True)
            return data_key
        except FileExistsError:  # another process made it first: use its data key
            wraps = read_wraps(home) or []
    return unwrap(wraps, key)
