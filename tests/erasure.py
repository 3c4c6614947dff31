"""Sessions holding every kind of data a session can hold, and walks of the data directory and database.

Used by the retention and erasure tests: they fill a store through its own writers (real
SQLCipher, real encrypted blobs, real DICOM files from pydicom), age sessions by moving their
timestamps back, and compare what is on disk and in the database before and after.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydicom.data import get_testdata_file

from engine.store import Store
from engine.store.blobs import owner_mark, scoped_blob_id

#: The database files themselves change on every write; everything else in the data dir is compared.
#: The databases (the audit trail grows with every purge by design: tests/store/test_audit.py checks it).
DATABASE_FILES = ("medvision.db", "medvision.db-wal", "medvision.db-shm", "audit.db", "audit.db-wal", "audit.db-shm")


def dicom_bytes(name: str) -> bytes:
    """A real DICOM file from pydicom's test data."""
    return Path(get_testdata_file(name)).read_bytes()


def fill_session(store: Store, name: str, source: str, files: list[str]) -> dict:
    """A session with images (one per file), an analysis, masks, an annotation, an interaction,
    an agent turn, a kept export, an outbox item, a queued job and a cached embedding per image.
    Returns its ids and the files it owns (paths relative to the data dir)."""
    session_id = store.create_session(name, source=source)["id"]
    image_ids, blob_ids = [], []
    for file_name in files:
        image = store.add_image(session_id, blob_data=dicom_bytes(file_name),
                                record={"type": "Other", "format": "dicom", "source_name": file_name})
        image_ids.append(image["id"])
        blob_ids.append(image["blob_id"])
        store.embeddings.write_bytes(scoped_blob_id(image["id"], "encoder-sha256"), b"embedding" * 512)
    first = image_ids[0]
    analysis = store.add_analysis(session_id, first, "analyze_image", {"classification": {"x": 0.5}})
    store.add_masks(session_id, first, [{"label": "lung", "rle": {"size": [4, 4], "counts": [0, 16]}, "area_px": 16}],
                    source="organ_seg", analysis_id=analysis["id"])
    store.annotations.insert(session_id, first, "bbox", [1, 2, 3, 4], {
        "label": "nodule", "confidence": None, "source": "user", "layer": "user", "notes": None, "style": {},
        "analysis_id": None})
    store.add_interaction(session_id, "query", {"question": "what is this?"}, first)
    store.add_agent_turn(session_id, "user", "question", "is there an effusion?")
    export = store.add_export(session_id, "dicom_sr", [("sr.dcm", b"DICM" * 256, "application/dicom")])
    store.dicom_outbox_add(session_id, export["id"], ["sr.dcm"], {"ae_title": "PACS", "host": "127.0.0.1", "port": 104})
    store.enqueue_job("test.unclaimed", {"image_id": first}, session_id=session_id, image_id=first)
    export_blobs = [f["blob_id"] for f in export["files"]]
    owned = [rel(store, store.blobs.path_for(b)) for b in blob_ids + export_blobs]
    owned += [rel(store, store.embeddings.path_for(b)) for i in image_ids for b in store.embeddings.ids_of_owner(i)]
    return {"session_id": session_id, "image_ids": image_ids, "blob_ids": blob_ids + export_blobs,
            "analysis_id": analysis["id"], "export_id": export["id"], "files": sorted(set(owned))}


def rel(store: Store, path: Path) -> str:
    return str(path.relative_to(store.home))


def age(store: Store, session_id: str, days: float) -> None:
    """Move a session's last activity ``days`` into the past (its row and its events)."""
    stamp = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="milliseconds")
    with store.db.transaction() as tx:
        tx.execute("UPDATE sessions SET created_at = ?, updated_at = ? WHERE id = ?", (stamp, stamp, session_id))
        tx.execute("UPDATE events SET created_at = ? WHERE session_id = ?", (stamp, session_id))


def walk_files(home: Path) -> dict[str, str]:
    """Every file of the data directory but the database's own: relative path -> SHA-256."""
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(home.rglob("*")) if p.is_file() and p.name not in DATABASE_FILES}


def dump_rows(store: Store) -> dict[str, list[tuple]]:
    """Every row of every table, as text tuples (sqlite_sequence left out: AUTOINCREMENT counters)."""
    conn = store.db.connection()
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                         " AND name != 'sqlite_sequence' ORDER BY name")]
    return {t: sorted(tuple(str(v) for v in row) for row in conn.execute(f"SELECT * FROM {t}")) for t in tables}


def mentioning(dump: dict[str, list[tuple]], needles: list[str]) -> dict[str, list[tuple]]:
    """The rows of ``dump`` in which any column contains one of ``needles`` (ids)."""
    found = {}
    for table, rows in dump.items():
        hits = [row for row in rows if any(n in value for value in row for n in needles)]
        if hits:
            found[table] = hits
    return found


def needles(filled: dict) -> list[str]:
    """Every id of a filled session, to look for in the database."""
    return [filled["session_id"], filled["analysis_id"], filled["export_id"], *filled["image_ids"],
            *filled["blob_ids"]]


def consistency_problems(store: Store) -> list[str]:
    """What a crash may have left inconsistent: rows pointing to missing or unreadable blobs,
    blob files no row names, embeddings of images that do not exist, unfinished erasures."""
    problems = []
    conn = store.db.connection()
    rows = {r[0] for r in conn.execute("SELECT id FROM blobs")}
    for blob_id in rows:
        try:
            store.blobs.read_bytes(blob_id)
        except Exception as exc:  # noqa: BLE001 - reported as a problem
            problems.append(f"blob row {blob_id}: {exc}")
    for (blob_id,) in conn.execute("SELECT blob_id FROM images WHERE blob_id IS NOT NULL"):
        if blob_id not in rows:
            problems.append(f"image points to missing blob row {blob_id}")
    problems += [f"orphan blob file {b}" for b in store.blobs.ids_on_disk() - rows]
    marks = {owner_mark(r[0]) for r in conn.execute("SELECT id FROM images")}
    problems += [f"orphan embedding {b}" for b in store.embeddings.ids_on_disk() if b[:32] not in marks]
    problems += [f"unfinished erasure {r[0]}" for r in conn.execute("SELECT id FROM erasures")]
    if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
        problems.append("integrity_check failed")
    return problems
