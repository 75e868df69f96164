"""The neural analyzers the node can run, described without loading them.

Torch-free: the feature schema, the reports, the availability check and the legacy JSON
know every neural analyzer's name, title and features from here, while the model code (and
torch) is imported only when weights are registered (``inference.ensemble.build``).
Adding a model to the ensemble is one ``inference.analyzer.NeuralSpec`` in ``SPECS``: its
package gives the torch-free description, and a ``load(store, entry, settings)`` function
the ensemble calls once per process.
"""

from __future__ import annotations

from inference.analyzer import NeuralSpec
from inference.anomaly import results as anomaly_results
from inference.ctclip import results as ctclip_results
from inference.fvlm import results as fvlm_results
from inference.mednext import results as mednext_results

SPECS: tuple[NeuralSpec, ...] = (
    *ctclip_results.SPECS,
    *anomaly_results.SPECS,
    *fvlm_results.SPECS,
    *mednext_results.SPECS,
)
BY_NAME: dict[str, NeuralSpec] = {s.name: s for s in SPECS}
TITLES: dict[str, str] = {s.name: s.title for s in SPECS}
