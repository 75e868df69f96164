"""Which analyzers of the ensemble this node can run, and why the others cannot.

Decided once at start-up from the weights store (``[neural] weights_dir``): every model the
manifest registers is verified by size and sha256 (hashes cached by size and mtime, so a
large checkpoint is not hashed again on every start). The quantitative analyzer needs no
weights. A neural analyzer is enabled only when its weights are present and verified and
the node has it wired in; otherwise it is disabled with the reason, which the node logs and
``/health`` reports. ``fusion`` (site-trained models, ``ctnode fusion train``) runs when
``[fusion] model`` names one of them; without one the rule-based fusion decides. Nothing is
downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inference.weights import ModelEntry, WeightsError, read_manifest, status

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


def analyzer_states(weights_dir: Path, fusion_model: str = "") -> list[AnalyzerState]:
    states = [AnalyzerState("quantitative", True, "needs no weights")]
    manifest = weights_dir / "manifest.toml"
    try:
        entries = read_manifest(manifest) if manifest.is_file() else []
    except WeightsError as exc:
        return states + [AnalyzerState(n, False, str(exc), fault=True) for n in NEURAL]
    for name in NEURAL:
        mine = [e for e in entries if e.analyzer == name]
        if not mine:
            reason = "no weights registered in the manifest"
            if name == "fusion":
                reason += "; the rule-based fusion decides"
            states.append(AnalyzerState(name, False, reason))
            continue
        problems = [
            f"{entry.name}: {why}"
            for entry in mine
            for state, why in [status(weights_dir, entry)]
            if state != "present"
        ]
        if problems:
            states.append(AnalyzerState(name, False, "; ".join(problems), fault=True))
        elif name == "fusion":
            states.append(_fusion_state(mine, fusion_model))
        elif name not in WIRED:
            reason = "weights verified; not yet part of the node's ensemble"
            states.append(AnalyzerState(name, False, reason))
        else:
            states.append(AnalyzerState(name, True, "weights verified"))
    return states


def _fusion_state(entries: list[ModelEntry], selected: str) -> AnalyzerState:
    """Trained fusion models are registered; the one ``[fusion] model`` names runs."""
    if not selected:
        reason = "weights verified; not selected ([fusion] model is empty): rule-based fusion"
        return AnalyzerState("fusion", False, reason)
    if not any(e.name == selected for e in entries):
        names = ", ".join(e.name for e in entries)
        return AnalyzerState(
            "fusion", False, f"[fusion] model {selected!r} is not registered ({names})", True
        )
    return AnalyzerState("fusion", True, f"weights verified; model {selected!r} runs")
