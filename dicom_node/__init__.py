"""MedVision dicom_node package."""
