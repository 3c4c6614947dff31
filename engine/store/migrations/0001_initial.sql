-- MedVision store, schema version 1.
-- Tables follow the product spec (section 8.4) plus what the design adds: the events
-- outbox, the jobs queue and the encrypted blob index. JSON columns hold TEXT JSON.

CREATE TABLE sessions (
    id                 TEXT PRIMARY KEY,
    name               TEXT,
    current_image_id   TEXT,
    study_instance_uid TEXT,
    metadata           TEXT NOT NULL DEFAULT '{}',
    status             TEXT NOT NULL DEFAULT 'open',
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);
CREATE UNIQUE INDEX idx_sessions_study ON sessions(study_instance_uid)
    WHERE study_instance_uid IS NOT NULL;

CREATE TABLE blobs (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX idx_blobs_sha256 ON blobs(sha256);

CREATE TABLE images (
    id                  TEXT PRIMARY KEY,
    session_id          TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    source_path         TEXT,
    source_name         TEXT,
    blob_id             TEXT REFERENCES blobs(id),
    sha256              TEXT NOT NULL,
    type                TEXT NOT NULL,
    type_source         TEXT NOT NULL DEFAULT 'detected',
    modality            TEXT,
    format              TEXT NOT NULL,
    rows                INTEGER,
    columns             INTEGER,
    frame_count         INTEGER NOT NULL DEFAULT 1,
    sop_class_uid       TEXT,
    sop_instance_uid    TEXT,
    series_instance_uid TEXT,
    study_instance_uid  TEXT,
    metadata            TEXT NOT NULL DEFAULT '{}',
    patient             TEXT NOT NULL DEFAULT '{}',
    created_at          TEXT NOT NULL
);
CREATE INDEX idx_images_session ON images(session_id);
CREATE INDEX idx_images_sop ON images(sop_instance_uid);

CREATE TABLE analyses (
    id             TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    image_id       TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    classification TEXT,
    detections     TEXT,
    segmentation   TEXT,
    report         TEXT,
    vqa_history    TEXT,
    result         TEXT NOT NULL,
    model_trained  INTEGER,
    created_at     TEXT NOT NULL
);
CREATE INDEX idx_analyses_image ON analyses(image_id);
CREATE INDEX idx_analyses_session ON analyses(session_id);

CREATE TABLE annotations (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    type        TEXT NOT NULL,
    coordinates TEXT NOT NULL,
    label       TEXT,
    confidence  REAL,
    source      TEXT NOT NULL CHECK (source IN ('ai', 'user', 'system')),
    layer       TEXT,
    notes       TEXT,
    style       TEXT NOT NULL DEFAULT '{}',
    analysis_id TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX idx_annotations_image ON annotations(image_id);

CREATE TABLE interactions (
    id         TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    image_id   TEXT,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL DEFAULT '{}',
    timestamp  TEXT NOT NULL
);
CREATE INDEX idx_interactions_session ON interactions(session_id);

-- Outbox: every change appends one row in the same transaction; readers follow ids.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);
CREATE INDEX idx_events_session ON events(session_id, id);

-- Work queue shared by every process of one data directory.
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL,
    session_id   TEXT,
    image_id     TEXT,
    payload      TEXT NOT NULL DEFAULT '{}',
    status       TEXT NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    error        TEXT,
    result       TEXT,
    worker       TEXT,
    heartbeat_at TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX idx_jobs_status ON jobs(status, id);
