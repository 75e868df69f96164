"""Training the fusion model on a site's own labelled studies: feature tables extracted
with the node's own analysis code, labels, cross-validated LightGBM, calibration, the model
card, and registration in the weights store. Only the ``ctnode features`` and
``ctnode fusion`` commands import it; the node at run time needs ``inference`` only."""
