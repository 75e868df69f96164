"""CT-CLIP v2 (zero-shot, VocabFine, ClassFine): modules, loading, preprocessing, scoring.

Importing this package needs torch (the ``neural`` extra); callers import it lazily.
"""
