"""The database key: a random 256-bit raw key found through a provider chain.

Chain (first hit wins): ``MEDVISION_DB_KEY`` (64 hex digits) -> the OS keyring, when
one is available and enabled -> ``<home>/db.key`` (mode 0600). When no provider has a
key and no database exists yet, a new key is created and kept in the keyring if
possible, else in the key file. A database with no key anywhere is an error, never a
reason to start an empty one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path

from engine.errors import ErrorCode, MedVisionError

log = logging.getLogger(__name__)

KEY_BYTES = 32
KEY_FILE_NAME = "db.key"
KEYRING_SERVICE = "medvision"
ENV_KEY = "MEDVISION_DB_KEY"


def _parse_hex_key(text: str, origin: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise MedVisionError(
            ErrorCode.DATABASE_ERROR, f"{origin} must be {KEY_BYTES * 2} hex digits"
        ) from exc
    if len(key) != KEY_BYTES:
        raise MedVisionError(
            ErrorCode.DATABASE_ERROR, f"{origin} must be {KEY_BYTES * 2} hex digits"
        )
    return key


def _keyring_account(home: Path) -> str:
    """One keyring entry per data directory, named without revealing the path."""
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
    return f"db-key-{digest}"


def _usable_keyring():  # noqa: ANN202 - returns a keyring backend or None
    """The OS keyring backend, or None when only a fail/null backend is present."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return None
    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 0) <= 0:
        return None
    return backend


def _read_keyring(home: Path) -> bytes | None:
    backend = _usable_keyring()
    if backend is None:
        return None
    try:
        stored = backend.get_password(KEYRING_SERVICE, _keyring_account(home))
    except Exception as exc:  # noqa: BLE001 - any keyring failure means "not available"
        log.warning("OS keyring not readable (%s); falling back to the key file", type(exc).__name__)
        return None
    return _parse_hex_key(stored, "the keyring entry") if stored else None


def _write_keyring(home: Path, key: bytes) -> bool:
    backend = _usable_keyring()
    if backend is None:
        return False
    try:
        backend.set_password(KEYRING_SERVICE, _keyring_account(home), key.hex())
    except Exception as exc:  # noqa: BLE001 - any keyring failure means "not available"
        log.warning("OS keyring not writable (%s); using the key file", type(exc).__name__)
        return False
    return True


def _read_key_file(path: Path) -> bytes | None:
    if not path.exists():
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("key file %s is readable by other users (mode %o)", path.name, mode)
    return _parse_hex_key(path.read_text(), "the key file")


def _write_key_file(path: Path, key: bytes) -> None:
    """Create the key file with 0600 from the start (never world-readable, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def resolve_key(home: Path, database: Path, *, use_keyring: bool = True) -> bytes:
    """Return the store key for ``home``, creating one on first run.

    Raises
    ------
    MedVisionError
        ``DATABASE_ERROR`` when the database exists but no provider holds a key, or a
        provider holds a malformed key.
    """
    env_value = os.environ.get(ENV_KEY)
    if env_value:
        return _parse_hex_key(env_value, ENV_KEY)
    if use_keyring:
        key = _read_keyring(home)
        if key is not None:
            return key
    key_file = home / KEY_FILE_NAME
    key = _read_key_file(key_file)
    if key is not None:
        return key
    if database.exists():
        raise MedVisionError(
            ErrorCode.DATABASE_ERROR,
            "the database exists but no key was found: set MEDVISION_DB_KEY or restore "
            f"{KEY_FILE_NAME} / the keyring entry",
        )
    key = secrets.token_bytes(KEY_BYTES)
    if not (use_keyring and _write_keyring(home, key)):
        home.mkdir(parents=True, exist_ok=True)
        _write_key_file(key_file, key)
    log.info("created a new database key")
    return key
