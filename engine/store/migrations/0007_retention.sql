-- Schema version 7: retention and erasure (issue 18).
--
-- sessions.source: where a session came from, so the retention policy can treat each
-- source its own way: 'dicom' (received by the DICOM node), 'file' (a file opened in the
-- desktop or the CLI), 'mcp' (created by a local agent over MCP). Backfill: sessions the
-- node made say so in their metadata or hold a received instance; every other existing
-- session becomes 'file', the source whose default policy keeps it, so an upgrade never
-- makes old data expire by surprise.
ALTER TABLE sessions ADD COLUMN source TEXT NOT NULL DEFAULT 'file'
    CHECK (source IN ('dicom', 'file', 'mcp'));
UPDATE sessions SET source = 'dicom'
    WHERE json_extract(metadata, '$.source') = 'dicom'
       OR EXISTS (SELECT 1 FROM images i JOIN dicom_received r ON r.image_id = i.id
                  WHERE i.session_id = sessions.id);

-- sessions.pinned: 1 keeps the session past its source's retention policy.
ALTER TABLE sessions ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1));

-- A purged (expired) session leaves this row and nothing else: its id, its source and
-- when it expired. No name, no UID, no patient data. It lets an id asked for after the
-- purge answer SESSION_EXPIRED instead of SESSION_NOT_FOUND.
CREATE TABLE session_tombstones (
    session_id  TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    expired_at  TEXT NOT NULL
);

-- The erasure journal: written in the transaction that deletes a session's rows, it
-- lists the files (paths relative to the data directory) to unlink after the commit.
-- The row is deleted once every file is gone and its directory fsynced; a row found at
-- start-up belongs to an erasure a killed process did not finish, and is replayed.
CREATE TABLE erasures (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL,
    files       TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
