"""A build killed with SIGKILL half-way resumes: no duplicates, index consistent with the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from engine.rag import ReferenceLibrary
from tests.conftest import REPO
from tests.rag.conftest import QUICK_FILES, embed_file
from tests.rag.embedders import EMBEDDER_ID, thumbnail_embedder

KILL_AT = 4  # the child is killed inside the embedding of this case (1-based)

# Builds the library and, once KILL_AT - 1 cases are committed, stops inside the next
# embedding (after decoding, before its transaction) so the parent can SIGKILL it there.
BUILDER = textwrap.dedent(f"""
    import sys, time
    from pathlib import Path
    from engine.rag import ReferenceLibrary
    from tests.rag.embedders import EMBEDDER_ID, thumbnail_embedder

    calls = 0

    def embedder(image):
        global calls
        calls += 1
        if calls == {KILL_AT}:
            print("embedding", calls, flush=True)
            time.sleep(120)
        return thumbnail_embedder(image)

    def progress(done, total, message):
        print("progress", done, total, message, flush=True)

    home, key, manifest = Path(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3]
    library = ReferenceLibrary(home, key, embedder=embedder, embedder_id=EMBEDDER_ID)
    library.build(data_path=manifest, progress=progress)
    print("finished", flush=True)
""")


def _kill_build_midway(home: Path, key: bytes, manifest: Path) -> list[str]:
    """Run the builder in a child process and SIGKILL it inside case ``KILL_AT``."""
    child = subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(home), key.hex(), str(manifest)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines = []
    try:
        for line in child.stdout:
            lines.append(line.strip())
            if line.startswith("embedding"):
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL, lines
    return lines


def test_killed_build_resumes_without_duplicates(home: Path, key: bytes, quick_csv: Path) -> None:
    lines = _kill_build_midway(home, key, quick_csv)
    committed = [line for line in lines if line.startswith("progress") and " added " in line]
    assert len(committed) == KILL_AT - 1 and lines[-1] == f"embedding {KILL_AT}"

    seen: list[tuple[int, int, str]] = []
    library = ReferenceLibrary(home, key, embedder=thumbnail_embedder, embedder_id=EMBEDDER_ID)
    try:
        # The killed process never saved an index: it is rebuilt from the database.
        assert library.index_recovery == "missing"
        assert library.stats()["index_size"] == KILL_AT - 1
        result = library.build(data_path=quick_csv, progress=lambda *event: seen.append(event))
        assert result["resumed"] is True and result["status"] == "completed"
        assert result["already_done"] == KILL_AT - 1
        assert result["added"] == len(QUICK_FILES) - (KILL_AT - 1)
        assert result["skipped_duplicates"] == 0 and result["failed"] == []
        assert seen[0][2] == "resuming an interrupted build"
        assert [event[2].split()[0] for event in seen[1:KILL_AT]] == ["already"] * (KILL_AT - 1)

        database = library._db.db
        assert database.query("SELECT count(*) AS n FROM cases")[0]["n"] == len(QUICK_FILES)
        assert database.query("SELECT count(DISTINCT dedup_key) AS n FROM cases")[0]["n"] == len(QUICK_FILES)
        assert database.query("SELECT count(*) AS n FROM index_entries")[0]["n"] == len(QUICK_FILES)
        builds = database.query("SELECT status, added FROM builds")
        assert builds == [{"status": "completed", "added": len(QUICK_FILES)}]
        assert database.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # The index holds exactly the database's ids, and each maps to the right case.
        assert np.array_equal(np.sort(library._index.ids()), library._db.faiss_ids())
        for name in QUICK_FILES:
            top = library.search(embed_file(quick_csv.parent / name), top_k=1)["results"][0]
            path = database.query("SELECT image_path FROM cases WHERE case_id = ?", (top["case_id"],))
            assert path[0]["image_path"] == name and top["similarity"] == 1.0
    finally:
        library.close()

    again = ReferenceLibrary(home, key, embedder=thumbnail_embedder, embedder_id=EMBEDDER_ID)
    try:
        assert again.index_recovery is None
        rerun = again.build(data_path=quick_csv)
        assert rerun["resumed"] is False and rerun["added"] == 0
        assert rerun["skipped_duplicates"] == len(QUICK_FILES)
    finally:
        again.close()
