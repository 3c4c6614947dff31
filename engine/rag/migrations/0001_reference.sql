-- MedVision reference-case library ("Visual RAG"), schema version 1.
-- A second SQLCipher database (HOME/rag/reference.db, same key as the main store).
-- cases / reports / diagnoses / labels follow the product spec (appendix I.10.7);
-- library_meta, builds and index_entries are what the build, resume and the FAISS
-- index need. Nothing here is ever stored outside the encrypted file.

-- Key/value facts about the library: embedder_id, dimension, generation (bumped when
-- the library is wiped), case_count (kept in step with index_entries so other
-- processes can tell cheaply that their in-memory index is stale), index_blob (the
-- encrypted FAISS file currently in use).
CREATE TABLE library_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per build() run; a run killed half-way stays 'running' (or 'interrupted')
-- and is adopted by the next build() of the same manifest.
CREATE TABLE builds (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    source             TEXT NOT NULL,
    manifest_sha256    TEXT NOT NULL,
    data_name          TEXT,
    embedder_id        TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('running', 'interrupted', 'completed')),
    total              INTEGER NOT NULL DEFAULT 0,
    added              INTEGER NOT NULL DEFAULT 0,
    skipped_duplicates INTEGER NOT NULL DEFAULT 0,
    failed             INTEGER NOT NULL DEFAULT 0,
    started_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    finished_at        TEXT
);
CREATE INDEX idx_builds_manifest ON builds(manifest_sha256, status);

-- dedup_key: 'sop:<SOP Instance UID>' for DICOM, else 'sha256:<file sha256>'.
-- embedding: float32 little-endian, L2-normalised, dimension * 4 bytes.
-- image_path: the path as written in the manifest (relative to it).
CREATE TABLE cases (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id          TEXT NOT NULL UNIQUE,
    source           TEXT NOT NULL,
    dedup_key        TEXT NOT NULL UNIQUE,
    sop_instance_uid TEXT,
    sha256           TEXT NOT NULL,
    image_path       TEXT,
    modality         TEXT,
    image_type       TEXT,
    embedding        BLOB NOT NULL,
    embedder_id      TEXT NOT NULL,
    build_id         INTEGER REFERENCES builds(id),
    created_at       TEXT NOT NULL
);
CREATE INDEX idx_cases_source ON cases(source);
CREATE INDEX idx_cases_build ON cases(build_id);

-- section: 'full', 'findings', 'impression', 'indication', 'history', 'comparison', 'technique'.
CREATE TABLE reports (
    id      INTEGER PRIMARY KEY,
    case_id TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
    section TEXT NOT NULL,
    text    TEXT NOT NULL,
    UNIQUE (case_id, section)
);

CREATE TABLE diagnoses (
    id         INTEGER PRIMARY KEY,
    case_id    TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
    diagnosis  TEXT NOT NULL,
    confidence REAL
);
CREATE INDEX idx_diagnoses_case ON diagnoses(case_id);

-- value: -1 uncertain, 0 negative, 1 positive (CheXpert convention); a blank cell is no row.
CREATE TABLE labels (
    id        INTEGER PRIMARY KEY,
    case_id   TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
    pathology TEXT NOT NULL,
    value     INTEGER NOT NULL CHECK (value IN (-1, 0, 1)),
    UNIQUE (case_id, pathology)
);
CREATE INDEX idx_labels_pathology ON labels(pathology);

-- The FAISS id of each case (IndexIDMap2 ids). AUTOINCREMENT: an id is never reused,
-- even after a wipe, so a stale index can never point at the wrong case.
CREATE TABLE index_entries (
    faiss_id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id  TEXT NOT NULL UNIQUE REFERENCES cases(case_id) ON DELETE CASCADE
);
