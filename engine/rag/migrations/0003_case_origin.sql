-- Schema version 3: where each case came from, so that a similar case names something a user
-- can open. origin_kind: 'folder' (built from a folder of images) or 'csv' (from a CSV
-- manifest); origin_dataset: the folder's or the CSV's own name, never a path; origin_row: the
-- CSV row of the case (the header is row 1), NULL for a folder. image_path (version 1) already
-- holds the file: relative to the folder, or as the CSV wrote it (a base name when absolute).
-- Cases added before version 3 keep NULL here and are shown as "source unknown".
ALTER TABLE cases ADD COLUMN origin_kind TEXT;
ALTER TABLE cases ADD COLUMN origin_dataset TEXT;
ALTER TABLE cases ADD COLUMN origin_row INTEGER;
