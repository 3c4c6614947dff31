-- Schema version 2: a small preview of each reference case for the desktop's similar-case
-- list (PNG, longest side THUMBNAIL_SIDE px, windowed like the viewer shows it). Inside the
-- encrypted file like everything else; NULL for cases added before version 2.
ALTER TABLE cases ADD COLUMN thumbnail BLOB;
