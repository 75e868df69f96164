"""Discrimination and calibration metrics for the model card, with intervals.

AUROC by the rank (Mann-Whitney) formula with a percentile bootstrap 95 % interval over
studies; sensitivity, specificity, PPV and NPV at a threshold with Wilson 95 % intervals;
the Brier score; a reliability curve in ten equal-width probability bins and its expected
calibration error (ECE: bin-size-weighted mean |observed - predicted|).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

Array = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int_]


def auroc(y: Labels, p: Array) -> float:
    ranks = rankdata(p)
    positives = int(np.sum(y == 1))
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_auroc(y: Labels, p: Array, *, n: int, seed: int) -> tuple[float, float]:
    """Percentile 95 % interval of the AUROC over ``n`` resamples of the studies (resamples
    with a single class are drawn again)."""
    rng = np.random.default_rng(seed)
    values: list[float] = []
    while len(values) < n:
        pick = rng.integers(0, len(y), len(y))
        value = auroc(y[pick], p[pick])
        if not math.isnan(value):
            values.append(value)
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def roc_curve(y: Labels, p: Array) -> tuple[Array, Array, Array]:
    """(false positive rate, true positive rate, threshold), threshold descending; a study
    is positive when its probability is at or above the threshold."""
    order = np.argsort(-p, kind="mergesort")
    scores, truth = p[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(truth)[distinct]
    fp = (distinct + 1) - tp
    positives, negatives = max(int(truth.sum()), 1), max(int(len(truth) - truth.sum()), 1)
    tpr = np.r_[0.0, tp / positives]
    fpr = np.r_[0.0, fp / negatives]
    thresholds = np.r_[np.inf, scores[distinct]]
    return fpr, tpr, thresholds


def choose_threshold(y: Labels, p: Array, target_sensitivity: float | None) -> float:
    """Youden's J (sensitivity + specificity - 1 largest) when ``target_sensitivity`` is
    None, else the highest threshold whose sensitivity reaches the target (the best
    specificity at that sensitivity). The cut is placed halfway between the lowest score
    called positive and the next lower score."""
    fpr, tpr, thresholds = roc_curve(y, p)
    finite = np.isfinite(thresholds)
    if target_sensitivity is None:
        j = np.where(finite, tpr - fpr, -np.inf)
        chosen = int(np.argmax(j))
    else:
        reaching = np.flatnonzero(finite & (tpr >= target_sensitivity - 1e-12))
        chosen = int(reaching[0]) if reaching.size else len(thresholds) - 1
    if chosen + 1 < len(thresholds):
        # halfway to the next lower score: the same decisions on these studies, and a
        # margin on both sides for the next ones (a score exactly at a training study's
        # probability is the least robust cut)
        return float((thresholds[chosen] + thresholds[chosen + 1]) / 2)
    return float(thresholds[chosen])


@dataclass(frozen=True)
class Proportion:
    value: float
    ci95: tuple[float, float]
    numerator: int
    denominator: int


def wilson(successes: int, total: int) -> Proportion:
    """A proportion with its Wilson score 95 % interval (NaN when ``total`` is 0)."""
    if total == 0:
        return Proportion(float("nan"), (float("nan"), float("nan")), 0, 0)
    z = 1.959963984540054
    phat = successes / total
    centre = (phat + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(phat * (1 - phat) / total + z * z / (4 * total * total))
    half /= 1 + z * z / total
    return Proportion(phat, (max(0.0, centre - half), min(1.0, centre + half)), successes, total)


def at_threshold(y: Labels, p: Array, threshold: float) -> dict[str, Any]:
    predicted = p >= threshold
    tp = int(np.sum(predicted & (y == 1)))
    fp = int(np.sum(predicted & (y == 0)))
    tn = int(np.sum(~predicted & (y == 0)))
    fn = int(np.sum(~predicted & (y == 1)))
    return {
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": asdict(wilson(tp, tp + fn)),
        "specificity": asdict(wilson(tn, tn + fp)),
        "ppv": asdict(wilson(tp, tp + fp)),
        "npv": asdict(wilson(tn, tn + fn)),
    }


def brier(y: Labels, p: Array) -> float:
    return float(np.mean((p - y) ** 2))


def reliability(y: Labels, p: Array, bins: int = 10) -> tuple[list[dict[str, float]], float]:
    """Per equal-width bin of predicted probability: count, mean predicted, observed rate;
    and the expected calibration error over the non-empty bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    curve, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if not count:
            continue
        predicted, observed = float(p[inside].mean()), float(y[inside].mean())
        curve.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": count,
                "mean_predicted": predicted,
                "observed": observed,
            }
        )
        ece += count / len(y) * abs(observed - predicted)
    return curve, float(ece)
