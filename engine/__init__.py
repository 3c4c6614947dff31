"""MedVision engine package."""
