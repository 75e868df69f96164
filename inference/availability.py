"""Which analyzers of the ensemble this node can run, and why the others cannot.

Decided once at start-up from the weights store (``[neural] weights_dir``): every model the
manifest registers is verified by size and sha256 (hashes cached by size and mtime, so a
large checkpoint is not hashed again on every start). The quantitative analyzer needs no
weights. A neural analyzer is enabled only when its weights are present and verified and
the node has it wired in; otherwise it is disabled with the reason, which the node logs and
``/health`` reports. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inference.weights import WeightsError, read_manifest, status

# The ensemble of the design card, by the ``analyzer`` name the manifest uses.
NEURAL = ("ctclip", "ctclip-supervised", "diffusion-anomaly", "fvlm", "mednext", "fusion")
# Neural analyzers the node runs when their weights verify (none yet: CT-CLIP's model and
# loading are done, its place in the node's ensemble is the rest of issue 9).
WIRED: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AnalyzerState:
    """One analyzer: whether it runs, and a sentence saying why (or why not)."""

    name: str
    enabled: bool
    reason: str
    fault: bool = False  # weights registered but missing or corrupt: the site must act


def analyzer_states(weights_dir: Path) -> list[AnalyzerState]:
    states = [AnalyzerState("quantitative", True, "needs no weights")]
    manifest = weights_dir / "manifest.toml"
    try:
        entries = read_manifest(manifest) if manifest.is_file() else []
    except WeightsError as exc:
        return states + [AnalyzerState(n, False, str(exc), fault=True) for n in NEURAL]
    for name in NEURAL:
        mine = [e for e in entries if e.analyzer == name]
        if not mine:
            states.append(AnalyzerState(name, False, "no weights registered in the manifest"))
            continue
        problems = [
            f"{entry.name}: {why}"
            for entry in mine
            for state, why in [status(weights_dir, entry)]
            if state != "present"
        ]
        if problems:
            states.append(AnalyzerState(name, False, "; ".join(problems), fault=True))
        elif name not in WIRED:
            reason = "weights verified; not yet part of the node's ensemble"
            states.append(AnalyzerState(name, False, reason))
        else:
            states.append(AnalyzerState(name, True, "weights verified"))
    return states
