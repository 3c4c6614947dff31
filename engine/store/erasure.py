"""Crash-safe erasure of a session's files: a journal row committed with the row deletions.

A session's rows and its files cannot be removed in one atomic step, so the transaction
that deletes the rows also writes an ``erasures`` row listing the files (relative to the
data directory). After the commit the files are unlinked, their directories fsynced, and
the journal row deleted. A process killed anywhere in between leaves either the rows
(nothing committed: the session is whole) or a journal row naming files that no row
points to any more; :meth:`ErasureJournal.replay` (run whenever a store is opened)
finishes it. No row ever points to a missing file, and no erased file outlives a restart.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engine.errors import ErrorCode, MedVisionError
from engine.files import fsync_dir
from engine.store.common import dumps, loads, now_iso
from engine.store.database import Connection, Database

log = logging.getLogger(__name__)


def remove_file(path: Path) -> None:
    """Unlink one erased file (a missing one is already erased). Tests wrap it to stop a child mid-erasure."""
    path.unlink(missing_ok=True)


class ErasureJournal:
    """The ``erasures`` table of one data directory: record, finish and replay erasures."""

    def __init__(self, db: Database, home: Path) -> None:
        self.db, self.home = db, home

    def record(self, tx: Connection, session_id: str, files: list[Path]) -> int:
        """Inside ``tx`` (the one deleting the rows), note the files to unlink after the commit."""
        relative = sorted({str(path.relative_to(self.home)) for path in files})
        cursor = tx.execute("INSERT INTO erasures (session_id, files, created_at) VALUES (?, ?, ?)",
                            (session_id, dumps(relative), now_iso()))
        return int(cursor.lastrowid)

    def finish(self, journal_id: int) -> int:
        """Unlink a recorded erasure's files, fsync their directories, drop the journal row.

        Idempotent: replaying a finished or half-finished erasure unlinks what is left.
        Returns how many files were listed."""
        rows = self.db.query("SELECT files FROM erasures WHERE id = ?", (journal_id,))
        if not rows:
            return 0
        files = [self._inside_home(name) for name in loads(rows[0]["files"])]
        try:
            for path in files:
                remove_file(path)
            for folder in sorted({path.parent for path in files}):
                if folder.exists():
                    fsync_dir(folder)
        except OSError as exc:
            raise MedVisionError(ErrorCode.DATABASE_ERROR,
                                 f"erasing a session's files failed ({exc.strerror}); it is retried at the next start",
                                 journal_id=journal_id) from exc
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM erasures WHERE id = ?", (journal_id,))
        return len(files)

    def pending(self) -> list[int]:
        """Journal rows of erasures not finished yet (a process died after its commit)."""
        return [int(r["id"]) for r in self.db.query("SELECT id FROM erasures ORDER BY id")]

    def pending_blob_ids(self) -> set[str]:
        """The blob ids among the files unfinished erasures will unlink (never to be indexed again meanwhile)."""
        return {Path(name).stem for row in self.db.query("SELECT files FROM erasures")
                for name in loads(row["files"]) if name.endswith(".mvb")}

    def replay(self) -> int:
        """Finish every unfinished erasure; returns how many there were."""
        pending = self.pending()
        for journal_id in pending:
            self.finish(journal_id)
        if pending:
            log.info("finished %d interrupted session erasure(s)", len(pending))
        return len(pending)

    def _inside_home(self, name: str) -> Path:
        path = (self.home / name).resolve()
        if not path.is_relative_to(self.home.resolve()):
            raise MedVisionError(ErrorCode.DATABASE_ERROR, "an erasure journal names a file outside the data directory")
        return path
