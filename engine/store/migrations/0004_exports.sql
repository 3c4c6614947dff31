-- Schema version 4: exports the app keeps (encrypted blobs, kind 'export').
-- One row per export_study call; files is a JSON list of {name, blob_id, size, sha256,
-- media_type}. The plaintext copy the user asked for lives wherever they put it.

CREATE TABLE exports (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    format      TEXT NOT NULL,
    files       TEXT NOT NULL,
    options     TEXT NOT NULL DEFAULT '{}',
    missing     TEXT NOT NULL DEFAULT '[]',
    created_at  TEXT NOT NULL
);
CREATE INDEX idx_exports_session ON exports(session_id, created_at);
