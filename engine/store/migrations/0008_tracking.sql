-- Schema version 8: lesions tracked over time (issue 17 part 6).
--
-- annotations.tracking: the TID 1500 tracking link of a measurement or region, JSON
-- {"identifier": "<Tracking Identifier, DCM 112039>", "uid": "<Tracking Unique Identifier,
-- DCM 112040>"}, or NULL when the annotation is not a tracked lesion. The same UID in two
-- studies of one patient is the same lesion.
ALTER TABLE annotations ADD COLUMN tracking TEXT;
