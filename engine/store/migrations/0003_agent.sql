-- Schema version 3: the medical agent.
-- agent_runs: one row per invoke_medical_agent run (its resumable state, final report).
-- agent_trace: every step and tool call of a run, in order; each row is written in the
--   same transaction as its events-outbox row (and, for tools that write, their data).
-- agent_turns + agent_memory: per-session conversation memory (turns + running summary).
-- agent_requests: request_user_input records a run (or an external agent) waits on.

CREATE TABLE agent_runs (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    image_id    TEXT,
    task        TEXT NOT NULL,
    mode        TEXT NOT NULL CHECK (mode IN ('auto', 'interactive', 'step_by_step')),
    pipeline    TEXT NOT NULL,
    status      TEXT NOT NULL
                CHECK (status IN ('running', 'in_progress', 'need_input', 'completed', 'failed')),
    state       TEXT NOT NULL DEFAULT '{}',
    report      TEXT,
    result      TEXT,
    error       TEXT,
    owner       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX idx_agent_runs_session ON agent_runs(session_id, created_at);

CREATE TABLE agent_trace (
    run_id      TEXT NOT NULL REFERENCES agent_runs(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    session_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    step_id     TEXT,
    tool_id     TEXT,
    status      TEXT,
    payload     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE agent_turns (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    run_id      TEXT,
    image_id    TEXT,
    role        TEXT NOT NULL CHECK (role IN ('user', 'agent')),
    kind        TEXT NOT NULL,
    content     TEXT NOT NULL,
    sources     TEXT NOT NULL DEFAULT '[]',
    created_at  TEXT NOT NULL
);
CREATE INDEX idx_agent_turns_session ON agent_turns(session_id, id);

CREATE TABLE agent_memory (
    session_id        TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    summary           TEXT NOT NULL DEFAULT '',
    summarized_until  INTEGER NOT NULL DEFAULT 0,
    updated_at        TEXT NOT NULL
);

CREATE TABLE agent_requests (
    id           TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    run_id       TEXT,
    step_id      TEXT,
    input_type   TEXT NOT NULL CHECK (input_type IN ('select_region', 'confirm', 'choose', 'draw')),
    prompt       TEXT NOT NULL,
    options      TEXT NOT NULL DEFAULT '[]',
    status       TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'answered', 'cancelled')),
    answer       TEXT,
    created_at   TEXT NOT NULL,
    answered_at  TEXT
);
CREATE INDEX idx_agent_requests_session ON agent_requests(session_id, status);
