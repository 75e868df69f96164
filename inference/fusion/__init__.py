"""Fusion: every analyzer's findings -> the overall result (``rules``: rule-based; ``trained``:
a site-trained model)."""
