"""The manual release of a cell: instance test, platform uploads, publication, notices (step.py)."""
