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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inference.neural import BY_NAME
from inference.weights_store import ModelEntry, WeightsError, read_manifest, status

# The ensemble of the design card, by the ``analyzer`` name the manifest uses.
NEURAL = ("ctclip", "ctclip-supervised", "diffusion-anomaly", "fvlm", "mednext", "fusion")
# Neural analyzers the node runs when their weights verify (``inference.ensemble.build``).
WIRED = frozenset(BY_NAME)
# Weights the store holds for another analyzer's use, not analyzers of the ensemble:
# TotalSegmentator's, which make fVLM's organ masks (``inference.fvlm.organs``).
HELPERS = ("totalsegmentator",)


@dataclass(frozen=True)
class AnalyzerState:
    """One analyzer: whether it runs, and a sentence saying why (or why not)."""

    name: str
    enabled: bool
    reason: str
    fault: bool = False  # registered weights missing, corrupt or unloadable: the site must act


def _entries(weights_dir: Path) -> list[ModelEntry]:
    manifest = weights_dir / "manifest.toml"
    return read_manifest(manifest) if manifest.is_file() else []


def _pick(entries: list[ModelEntry], name: str, models: Sequence[str]) -> list[ModelEntry]:
    """The entries analyzer ``name`` uses: for a neural analyzer the one ``[neural] models``
    names (else the first registered); a trained fusion keeps all its files."""
    mine = [e for e in entries if e.analyzer == name]
    if name not in WIRED or not mine:
        return mine
    named = [e for e in mine if e.name in models]
    return named[:1] or mine[:1]


def chosen_entries(weights_dir: Path, models: Sequence[str] = ()) -> dict[str, ModelEntry]:
    """The registered entry each wired neural analyzer runs."""
    entries = _entries(weights_dir)
    return {name: picked[0] for name in WIRED if (picked := _pick(entries, name, models))}


def analyzer_states(
    weights_dir: Path, fusion_model: str = "", models: Sequence[str] = ()
) -> list[AnalyzerState]:
    states = [AnalyzerState("quantitative", True, "needs no weights")]
    try:
        entries = _entries(weights_dir)
    except WeightsError as exc:
        return states + [AnalyzerState(n, False, str(exc), fault=True) for n in NEURAL]
    unknown = [m for m in models if m not in {e.name for e in entries}]
    for name in NEURAL:
        mine = _pick(entries, name, models)
        if name in WIRED and unknown and not any(e.name in models for e in mine):
            # a model the site chose is not registered and may have been meant for this
            # analyzer: running another of its models would not be what was asked
            wanted = ", ".join(unknown)
            states.append(
                AnalyzerState(name, False, f"[neural] models names {wanted}: not registered", True)
            )
            continue
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
            states.append(AnalyzerState(name, True, f"weights verified ({mine[0].name})"))
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
