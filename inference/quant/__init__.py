"""Quantitative chest CT analysis that needs no weights: segmentation, densitometry,
nodule candidates, and the mapping of measurements to findings."""
