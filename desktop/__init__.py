"""MedVision desktop package."""
