"""fVLM (ICLR 2025): organ-wise zero-shot findings; modules, loading, windows, scoring, organ masks.

Importing its modules other than ``results`` needs torch (the ``neural`` extra); callers import
them lazily.
"""
