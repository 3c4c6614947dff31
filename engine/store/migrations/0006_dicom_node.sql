-- Schema version 6: the DICOM node (dicom_node/). The received instances themselves
-- are ordinary images rows + blobs; these tables hold what only the node needs.

-- One row per association (accepted, rejected, released, aborted), for status and audit.
-- Holds AE titles and the peer address only: no patient data.
CREATE TABLE dicom_associations (
    id          TEXT PRIMARY KEY,
    node        TEXT NOT NULL,
    calling_ae  TEXT,
    called_ae   TEXT,
    peer_host   TEXT,
    state       TEXT NOT NULL CHECK (state IN ('open', 'rejected', 'released', 'aborted')),
    reason      TEXT,
    received    INTEGER NOT NULL DEFAULT 0,
    duplicates  INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    started_at  TEXT NOT NULL,
    ended_at    TEXT
);
CREATE INDEX idx_dicom_associations_started ON dicom_associations(started_at);

-- The running node(s) of this data dir, with a heartbeat ("listening" in status).
CREATE TABLE dicom_nodes (
    node         TEXT PRIMARY KEY,
    pid          INTEGER NOT NULL,
    ae_title     TEXT NOT NULL,
    host         TEXT NOT NULL,
    port         INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    stopped_at   TEXT
);

-- Receipt of each stored instance (one per images row the node created).
CREATE TABLE dicom_received (
    image_id       TEXT PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    association_id TEXT,
    calling_ae     TEXT,
    received_at    TEXT NOT NULL
);
CREATE INDEX idx_dicom_received_at ON dicom_received(received_at);

-- Persistent outbox of results to send to PACS (C-STORE SCU), retried with backoff.
-- The objects themselves are kept encrypted as an export (exports row + blobs).
CREATE TABLE dicom_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id      TEXT REFERENCES sessions(id) ON DELETE CASCADE,
    export_id       TEXT NOT NULL,
    file_name       TEXT NOT NULL,
    ae_title        TEXT NOT NULL,
    host            TEXT NOT NULL,
    port            INTEGER NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL DEFAULT 8,
    next_attempt_at TEXT NOT NULL,
    last_status     INTEGER,
    error           TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX idx_dicom_outbox_due ON dicom_outbox(status, next_attempt_at);
