"""MedNeXt v1 as a multilabel classifier: modules, loading, preprocessing, scoring.

``card`` and ``results`` are torch-free (the node's schema and reports read them); the other
modules need torch (the ``neural`` extra) and are imported lazily.
"""
