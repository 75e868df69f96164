"""``ctnode mednext train``: a MedNeXt multilabel classifier trained on a site's studies.

``labels`` reads the multilabel CSV, ``data`` turns studies into model inputs with the
analyzer's own preprocessing, ``loop`` trains (resumable), ``workflow`` ties them together
and registers the result with its model card. Needs torch (the ``neural`` extra).
"""
