-- MedVision audit trail, schema version 1: its own SQLCipher file (HOME/audit.db, the
-- store's key), so a purge or erasure of the data it describes never touches it and its
-- appends never wait on the main database's write lock. Ids only: no pixels, no names.

CREATE TABLE audit (
    seq            INTEGER PRIMARY KEY,
    time           TEXT NOT NULL,
    front_end      TEXT NOT NULL,
    os_user        TEXT NOT NULL,
    host           TEXT NOT NULL,
    pid            INTEGER NOT NULL,
    client         TEXT,
    event_id       TEXT NOT NULL,
    action         TEXT NOT NULL,
    action_code    TEXT NOT NULL,
    operation      TEXT NOT NULL,
    outcome        INTEGER NOT NULL,
    outcome_detail TEXT,
    session_id     TEXT,
    image_id       TEXT,
    study_uid      TEXT,
    sop_uid        TEXT,
    patient_id     TEXT,
    details        TEXT NOT NULL DEFAULT '{}',
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
-- One index only: each costs every append. --since scans (times follow seq only roughly:
-- the node's records are queued), and a hash is looked up only at a break (near its seq first).
CREATE INDEX idx_audit_session ON audit(session_id);

-- The newest record's seq and hash, written in the same transaction as each append: a
-- deleted newest record is a gap below the head, not a shorter valid chain.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;
