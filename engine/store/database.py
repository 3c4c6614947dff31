"""SQLCipher connections: open-time checks, WAL, migrations and retrying write transactions.

One connection per thread (sqlite connections are not shared across threads here);
all of them are closed by :meth:`Database.close`. Write transactions start with
``BEGIN IMMEDIATE`` so two processes never deadlock upgrading a read lock, wait on the
busy timeout, and retry a few times before giving up with ``DATABASE_ERROR``.
"""

from __future__ import annotations

import importlib.resources
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlcipher3

from engine.errors import ErrorCode, MedVisionError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
BEGIN_RETRIES = 5

Connection = sqlcipher3.Connection


DEFAULT_MIGRATIONS_PACKAGE = "engine.store"


def _migrations(package: str = DEFAULT_MIGRATIONS_PACKAGE) -> list[tuple[int, str]]:
    """``(version, sql)`` pairs from ``package``'s ``migrations/NNNN_*.sql`` files."""
    folder = importlib.resources.files(package) / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def schema_version(package: str = DEFAULT_MIGRATIONS_PACKAGE) -> int:
    """The schema version this code expects (the newest migration of ``package``)."""
    return _migrations(package)[-1][0]


def _is_busy(exc: sqlcipher3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class Database:
    """An encrypted SQLite database file, opened with a raw 256-bit key.

    ``migrations_package`` names the package whose ``migrations/`` folder defines the
    schema: the main store uses ``engine.store``, the reference-case library
    ``engine.rag`` (a second database file with its own schema, same key).
    """

    def __init__(
        self, path: Path, key: bytes, *, migrations_package: str = DEFAULT_MIGRATIONS_PACKAGE
    ) -> None:
        self.path = path
        self.migrations_package = migrations_package
        self._key_pragma = f"PRAGMA key = \"x'{key.hex()}'\""
        self._local = threading.local()
        self._all: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.cipher_version = ""
        conn = self.connection()
        self._migrate(conn)

    # -- connections -------------------------------------------------------------------
    def connection(self) -> Connection:
        """This thread's connection, opened and checked on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise MedVisionError(ErrorCode.DATABASE_ERROR, "the store is closed")
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _open(self) -> Connection:
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            conn = sqlcipher3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except sqlcipher3.Error as exc:
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"cannot open the database: {exc}") from exc
        try:
            conn.execute("PRAGMA cipher_log_level = NONE")
            version = conn.execute("PRAGMA cipher_version").fetchone()
            if not version or not version[0]:
                raise MedVisionError(
                    ErrorCode.DATABASE_ERROR,
                    "SQLCipher is not active (plain SQLite build); refusing to store unencrypted data",
                )
            self.cipher_version = version[0]
            conn.execute(self._key_pragma)
            # A wrong key (or a file that is not a MedVision database) fails right here.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher3.DatabaseError as exc:
            conn.close()
            reason = "wrong database key, or the file is not a MedVision database" if existed else str(exc)
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"cannot open the database: {reason}") from exc
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        # Erasure is real inside the file too: deleted rows are overwritten, not left in free pages.
        conn.execute("PRAGMA secure_delete = ON")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("journal mode is %s, not WAL", mode)
        # FULL: a commit is on disk before we acknowledge anything to a peer.
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def close(self) -> None:
        """Close every thread's connection; the object is unusable afterwards."""
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlcipher3.Error as exc:
                log.warning("closing a connection failed: %s", exc)
        self._local = threading.local()

    # -- transactions ------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); commits on success, rolls back on error.

        Nested use on the same thread joins the outer transaction, so several store
        writes can be made atomic together: ``with db.transaction(): a(); b()``.
        """
        conn = self.connection()
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield conn
            finally:
                self._local.depth = depth
            return
        for attempt in range(BEGIN_RETRIES + 1):
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlcipher3.OperationalError as exc:
                if not _is_busy(exc) or attempt == BEGIN_RETRIES:
                    raise MedVisionError(ErrorCode.DATABASE_ERROR, f"cannot start a write: {exc}") from exc
                time.sleep(0.05 * (2**attempt) * (1 + random.random()))
        self._local.depth = 1
        try:
            yield conn
        except sqlcipher3.Error as exc:
            _rollback(conn)
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"database write failed: {exc}") from exc
        except BaseException:
            _rollback(conn)
            raise
        finally:
            self._local.depth = 0
        try:
            conn.execute("COMMIT")
        except sqlcipher3.Error as exc:
            _rollback(conn)
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"commit failed: {exc}") from exc

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict]:
        """Run a read query on this thread's connection and return all rows."""
        conn = self.connection()
        try:
            cursor = conn.execute(sql, params)
        except sqlcipher3.Error as exc:
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"query failed: {exc}") from exc
        columns = [d[0] for d in cursor.description or ()]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    # -- schema ------------------------------------------------------------------------
    def _migrate(self, conn: Connection) -> None:
        migrations = _migrations(self.migrations_package)
        newest = migrations[-1][0]
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        pending = [(v, sql) for v, sql in migrations if v > current]
        if current > newest:
            raise MedVisionError(
                ErrorCode.DATABASE_ERROR,
                f"the database schema ({current}) is newer than this program ({newest})",
            )
        if not pending:
            return
        with self.transaction() as tx:
            # Re-read inside the write lock: another process may have migrated meanwhile.
            current = tx.execute("PRAGMA user_version").fetchone()[0]
            for version, sql in pending:
                if version <= current:
                    continue
                for statement in _split_sql(sql):
                    tx.execute(statement)
                tx.execute(f"PRAGMA user_version = {int(version)}")
                log.info("database migrated to schema %d", version)


def _rollback(conn: Connection) -> None:
    """Roll back the open transaction, if SQLite has not already (it does on a full disk or an I/O
    error, and a ROLLBACK then fails with "no transaction is active", hiding the real error)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit our transaction)."""
    statements, buffer = [], []
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        buffer.append(line)
        if sqlcipher3.complete_statement("\n".join(buffer)):
            statement = "\n".join(buffer).strip()
            if statement:
                statements.append(statement)
            buffer = []
    return statements
