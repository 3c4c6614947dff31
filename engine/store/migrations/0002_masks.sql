-- Schema version 2: stored masks (organ segmentation, interactive segmentation).
-- Masks are RLE JSON at the image's size; analyses and annotations refer to them by id.

CREATE TABLE masks (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    analysis_id TEXT,
    label       TEXT NOT NULL,
    source      TEXT NOT NULL,
    rle         TEXT NOT NULL,
    area_px     INTEGER NOT NULL,
    model_id    TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX idx_masks_image ON masks(image_id, source, created_at);
