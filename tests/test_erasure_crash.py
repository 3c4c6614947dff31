"""kill -9 in the middle of an erasure, then restart: consistent.

A child process (real SQLCipher, real blobs) erases a session and is stopped with SIGKILL at
one of three points: inside the deleting transaction, after its commit before any file is
unlinked, and after the first file is unlinked. Reopening the store (a restart) must leave
either the whole session (killed before the commit) or nothing of it, with no orphan blob,
no row pointing to a missing blob and no unfinished erasure, and the other session intact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.store import Database, Store
from engine.store.keys import resolve_key
from tests.conftest import REPO
from tests.erasure import (
    consistency_problems,
    dump_rows,
    fill_session,
    mentioning,
    needles,
    walk_files,
)

ERASER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import engine.store.erasure as erasure
    from engine.store import Store

    home, session_id, point = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    store = Store.open(home)
    real_remove, real_record = erasure.remove_file, erasure.ErasureJournal.record
    removed = 0

    def stop(marker):
        print(marker, flush=True)
        time.sleep(120)

    def record(self, tx, sid, files):
        journal_id = real_record(self, tx, sid, files)
        if point == "in_transaction":
            stop("in transaction")
        return journal_id

    def remove(path):
        global removed
        if point == "after_commit":
            stop("committed")
        real_remove(path)
        removed += 1
        if point == "mid_unlink":
            stop("unlinked one")

    erasure.ErasureJournal.record = record
    erasure.remove_file = remove
    store.delete_session(session_id)
    print("finished", flush=True)
""")


def kill_erasure_at(home: Path, session_id: str, point: str) -> str:
    """Run the eraser in a child and SIGKILL it at ``point``; returns the marker it printed."""
    child = subprocess.Popen([sys.executable, "-c", ERASER, str(home), session_id, point], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        marker = child.stdout.readline().strip()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
        stderr = child.stderr.read()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL, stderr
    return marker


@pytest.mark.parametrize(("point", "marker", "erased"), [
    ("in_transaction", "in transaction", False),
    ("after_commit", "committed", True),
    ("mid_unlink", "unlinked one", True),
])
def test_a_killed_erasure_is_consistent_after_restart(home: Path, point: str, marker: str, erased: bool) -> None:
    store = Store.open(home)
    victim = fill_session(store, "victim", "file", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"])
    keeper = fill_session(store, "keeper", "file", ["CT_small.dcm", "SC_rgb.dcm"])  # shares CT's blob
    files_before, rows_before = walk_files(home), dump_rows(store)
    store.close()
    shared = set(keeper["blob_ids"])
    own_files = set(victim["files"]) - set(keeper["files"])
    assert len(own_files) == 6  # MR and JPEG2000 blobs, the export, three embeddings

    assert kill_erasure_at(home, victim["session_id"], point) == marker

    # Before the restart: the kill really hit where it was meant to.
    db = Database(home / "medvision.db", resolve_key(home, home / "medvision.db", use_keyring=False))
    journal = db.query("SELECT files FROM erasures")
    db.close()
    on_disk = set(walk_files(home))
    if point == "in_transaction":
        assert journal == [] and own_files <= on_disk
    elif point == "after_commit":
        assert len(journal) == 1 and own_files <= on_disk
    else:
        assert len(journal) == 1 and len(own_files - on_disk) == 1

    store = Store.open(home)  # the restart replays what the killed process left
    try:
        assert consistency_problems(store) == []
        files_after, rows_after = walk_files(home), dump_rows(store)
        keeper_ids = [n for n in needles(keeper) if n not in shared]
        assert mentioning(rows_after, keeper_ids) == mentioning(rows_before, keeper_ids)
        assert all(files_after[f] == files_before[f] for f in keeper["files"])
        victim_ids = [n for n in needles(victim) if n not in shared]
        if erased:
            assert own_files.isdisjoint(files_after)
            assert set(mentioning(rows_after, victim_ids)) == {"events"}  # its session.deleted only
            assert set(files_before) - set(files_after) == own_files
        else:
            assert files_after == files_before and rows_after == rows_before
            store.delete_session(victim["session_id"])  # and it can still be erased
            assert own_files.isdisjoint(walk_files(home)) and consistency_problems(store) == []
    finally:
        store.close()
