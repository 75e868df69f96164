"""Findings and source datasets -> DICOM SR (TID 1500), secondary captures and legacy JSON."""
