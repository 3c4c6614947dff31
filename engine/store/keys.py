"""The database key: a random 256-bit raw key found through a provider chain.

Chain (first hit wins): ``MEDVISION_DB_KEY`` (64 hex digits) -> the OS keyring, when
one is available and enabled -> ``<home>/db.key`` (mode 0600). When no provider has a
key and no database exists yet, a new key is created and kept in the keyring if
possible, else in the key file. A database with no key anywhere is an error, never a
reason to start an empty one.

During a key rotation (:mod:`engine.store.rotation`) the keyring entry or key file holds
two keys, one a line: the new key, then the one it replaces. :func:`resolve_keys` returns
both; :func:`write_keys` replaces what the provider holds (atomically).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path

from engine.errors import ErrorCode, MedVisionError
from engine.files import fsync_dir

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


def _parse_keys(text: str, origin: str) -> list[bytes]:
    """One key a line (two during a rotation: the new one first)."""
    lines = [line for line in text.split() if line.strip()]
    if not 1 <= len(lines) <= 2:
        raise MedVisionError(ErrorCode.DATABASE_ERROR, f"{origin} must hold one key ({KEY_BYTES * 2} hex digits)")
    return [_parse_hex_key(line, origin) for line in lines]


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


def _read_keyring(home: Path) -> list[bytes] | None:
    backend = _usable_keyring()
    if backend is None:
        return None
    try:
        stored = backend.get_password(KEYRING_SERVICE, _keyring_account(home))
    except Exception as exc:  # noqa: BLE001 - any keyring failure means "not available"
        log.warning("OS keyring not readable (%s); falling back to the key file", type(exc).__name__)
        return None
    return _parse_keys(stored, "the keyring entry") if stored else None


def _write_keyring(home: Path, keys: list[bytes]) -> bool:
    backend = _usable_keyring()
    if backend is None:
        return False
    try:
        backend.set_password(KEYRING_SERVICE, _keyring_account(home), "\n".join(k.hex() for k in keys))
    except Exception as exc:  # noqa: BLE001 - any keyring failure means "not available"
        log.warning("OS keyring not writable (%s); using the key file", type(exc).__name__)
        return False
    return True


def _read_key_file(path: Path) -> list[bytes] | None:
    if not path.exists():
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("key file %s is readable by other users (mode %o)", path.name, mode)
    return _parse_keys(path.read_text(), "the key file")


def _write_key_file(path: Path, keys: list[bytes]) -> None:
    """Write the key file with 0600 from the start (never world-readable, even briefly):
    a temp file, fsync, rename over the old one, fsync of the directory."""
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(k.hex() + "\n" for k in keys))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def resolve_keys(home: Path, *, use_keyring: bool = True) -> tuple[list[bytes], str] | None:
    """``(keys, provider)`` from the first provider holding a key (``env``, ``keyring`` or
    ``file``), or None when none does. Two keys: a rotation in progress (new one first)."""
    env_value = os.environ.get(ENV_KEY)
    if env_value:
        return [_parse_hex_key(env_value, ENV_KEY)], "env"
    if use_keyring:
        keys = _read_keyring(home)
        if keys is not None:
            return keys, "keyring"
    keys = _read_key_file(home / KEY_FILE_NAME)
    return (keys, "file") if keys is not None else None


def write_keys(home: Path, keys: list[bytes], provider: str) -> None:
    """Replace what ``provider`` holds for ``home`` with ``keys`` (new key first)."""
    if provider == "env":
        raise MedVisionError(
            ErrorCode.INVALID_ARGUMENT,
            f"the key comes from {ENV_KEY}: a rotation cannot change it (unset it to use the key file or keyring)",
        )
    if provider == "keyring":
        if not _write_keyring(home, keys):
            raise MedVisionError(ErrorCode.DATABASE_ERROR, "the OS keyring is not writable; the key was not changed")
        return
    _write_key_file(home / KEY_FILE_NAME, keys)


def resolve_key(home: Path, database: Path, *, use_keyring: bool = True) -> bytes:
    """Return the store key for ``home``, creating one on first run.

    Raises
    ------
    MedVisionError
        ``DATABASE_ERROR`` when the database exists but no provider holds a key, or a
        provider holds a malformed key.
    """
    found = resolve_keys(home, use_keyring=use_keyring)
    if found is not None:
        return found[0][0]
    key_file = home / KEY_FILE_NAME
    if database.exists():
        raise MedVisionError(
            ErrorCode.DATABASE_ERROR,
            "the database exists but no key was found: set MEDVISION_DB_KEY or restore "
            f"{KEY_FILE_NAME} / the keyring entry",
        )
    key = secrets.token_bytes(KEY_BYTES)
    if not (use_keyring and _write_keyring(home, [key])):
        home.mkdir(parents=True, exist_ok=True)
        _write_key_file(key_file, [key])
    log.info("created a new database key")
    return key


def load_key_file(path: Path) -> bytes:
    """The key in a key file (a copy of another data directory's ``db.key``)."""
    keys = _read_key_file(Path(path))
    if keys is None:
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"no key file {Path(path).name}")
    return keys[0]
