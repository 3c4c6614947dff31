"""Query/retrieve against remote archives (PACS): C-FIND, C-GET, C-MOVE, DICOMweb, C-STORE."""
