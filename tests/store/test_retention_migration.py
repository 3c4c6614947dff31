"""Schema 7 on a database made by schema 6: every session gets a source (backfilled), none is pinned."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import sqlcipher3

from engine.store import Store, schema_version
from engine.store.keys import resolve_key


def test_existing_sessions_get_a_source_and_the_policy_tables(home: Path) -> None:
    key = resolve_key(home, home / "medvision.db", use_keyring=False)
    conn = sqlcipher3.connect(str(home / "medvision.db"))
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    folder = importlib.resources.files("engine.store") / "migrations"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql") and int(entry.name[:4]) <= 6:
            conn.executescript(entry.read_text())
    conn.executescript("""
        PRAGMA user_version = 6;
        INSERT INTO sessions (id, name, metadata, created_at, updated_at)
            VALUES ('node', 'pushed', '{"source": "dicom", "calling_ae": "MOD"}', 't', 't'),
                   ('retrieved', 'moved', '{}', 't', 't'),
                   ('opened', 'file', '{"note": "x"}', 't', 't');
        INSERT INTO images (id, session_id, sha256, type, format, created_at)
            VALUES ('img', 'retrieved', 'f', 'CXR', 'dicom', 't');
        INSERT INTO dicom_received (image_id, received_at) VALUES ('img', 't');
    """)
    conn.commit()
    conn.close()

    store = Store.open(home)
    try:
        assert store.db.query("PRAGMA user_version")[0]["user_version"] == schema_version() >= 7
        rows = {r["id"]: (r["source"], r["pinned"]) for r in store.db.query("SELECT * FROM sessions")}
        assert rows == {"node": ("dicom", 0), "retrieved": ("dicom", 0), "opened": ("file", 0)}
        assert store.db.query("SELECT count(*) AS n FROM session_tombstones")[0]["n"] == 0
        assert store.db.query("SELECT count(*) AS n FROM erasures")[0]["n"] == 0
    finally:
        store.close()
