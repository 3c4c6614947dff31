-- Schema version 5: the canvas (engine.canvas).
-- canvas_layers: visual layers pushed to a session's canvas (push_to_canvas add_layer):
--   kind segmentation|bbox|annotation|heatmap|mask|text; data is the validated JSON in
--   pixel coordinates of the image; style is free display JSON. Display only: real
--   annotations live in the annotations table.
-- canvas_state: the last state the canvas reported (sync_canvas_state): viewport,
--   active tool, current image, the user's unsaved drawings, a pending selection.
-- Every write appends a canvas.* event in the same transaction (the desktop follows it).

CREATE TABLE canvas_layers (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL
                CHECK (kind IN ('segmentation', 'bbox', 'annotation', 'heatmap', 'mask', 'text')),
    name        TEXT NOT NULL DEFAULT '',
    data        TEXT NOT NULL,
    style       TEXT NOT NULL DEFAULT '{}',
    visible     INTEGER NOT NULL DEFAULT 1 CHECK (visible IN (0, 1)),
    source      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX idx_canvas_layers_session ON canvas_layers(session_id, created_at);

CREATE TABLE canvas_state (
    session_id  TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    state       TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
