"""Cross-validated LightGBM training of the fusion model, deterministic for a given seed.

1. Stratified k-fold cross-validation (``folds``, shuffled with ``seed``). In each outer
   training part a stratified fifth is held out for early stopping, so the outer fold's
   out-of-fold predictions never influenced the model that made them.
2. The calibrator is fitted on all out-of-fold raw scores (Platt or isotonic:
   ``training.calibration``); the metrics use cross-fitted calibrated probabilities (each
   fold calibrated by the other folds), so calibration is judged on unseen data too.
3. The threshold is chosen on those probabilities by the stated rule (Youden by default,
   or the highest threshold reaching a target sensitivity).
4. The final model is trained on all studies for the median of the folds' best numbers of
   rounds (no data left for early stopping; the folds say how long to train).

Same data, same options and seed -> the same model text, byte for byte: LightGBM runs with
``deterministic``, column-wise histograms and a fixed number of threads (``threads``, not
the machine's core count), and every random choice takes a seed derived from ``seed``.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any

import lightgbm
import numpy as np
import numpy.typing as npt
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

from inference.calibration import Calibrator, Method
from inference.feature_schema import FeatureSchema
from training import calibration, metrics

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # shap's deprecation notices at import
    import shap

Array = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int_]


@dataclass(frozen=True)
class TrainOptions:
    """Everything that decides the model; recorded in the model card."""

    folds: int = 5
    seed: int = 42
    calibration: calibration.Choice = "auto"
    target_sensitivity: float | None = None  # None: Youden's J
    bootstrap: int = 1000
    learning_rate: float = 0.05
    num_leaves: int = 15
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    threads: int = 2

    @property
    def threshold_rule(self) -> str:
        if self.target_sensitivity is None:
            return "youden"
        return f"sensitivity>={self.target_sensitivity:g}"


@dataclass(frozen=True)
class Fold:
    number: int
    train: int
    test: int
    positives: int
    best_iteration: int
    auroc: float


@dataclass
class TrainingResult:
    """The final model (as LightGBM text) and everything the model card reports."""

    model_text: str
    calibrator: Calibrator
    calibration_method: Method
    calibration_reason: str
    threshold: float
    options: TrainOptions
    params: dict[str, Any]
    folds: list[Fold]
    final_rounds: int
    oof_margin: Array
    oof_probability: Array
    y: Labels
    metrics: dict[str, Any] = field(default_factory=dict)
    shap_values: Array = field(default_factory=lambda: np.zeros((0, 0)))
    shap_x: Array = field(default_factory=lambda: np.zeros((0, 0)))
    shap_ranking: list[tuple[str, float]] = field(default_factory=list)


def lightgbm_params(options: TrainOptions, n_rows: int, fold: int = 0) -> dict[str, Any]:
    """LightGBM parameters; leaves may hold fewer studies on small cohorts (a tenth of the
    rows, between 2 and 20) so that a site with a few dozen studies still gets splits."""
    seed = options.seed + 1000 * fold
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": options.learning_rate,
        "num_leaves": options.num_leaves,
        "min_data_in_leaf": max(2, min(20, n_rows // 10)),
        "min_sum_hessian_in_leaf": 1e-3,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": seed,
        "bagging_seed": seed + 1,
        "feature_fraction_seed": seed + 2,
        "data_random_seed": seed + 3,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": options.threads,
        "verbosity": -1,
    }


def train(
    x: Array, y: Labels, schema: FeatureSchema, options: TrainOptions = TrainOptions()
) -> TrainingResult:
    """Cross-validate, calibrate, choose the threshold, train the final model, explain it."""
    names = list(schema.names)
    if x.shape != (len(y), len(names)):
        raise ValueError(f"features are {x.shape}, expected ({len(y)}, {len(names)})")
    outer = StratifiedKFold(n_splits=options.folds, shuffle=True, random_state=options.seed)
    oof = np.zeros(len(y))
    fold_of = np.zeros(len(y), dtype=np.int_)
    folds: list[Fold] = []
    for number, (train_rows, test_rows) in enumerate(outer.split(x, y)):
        inner = StratifiedShuffleSplit(
            n_splits=1,
            test_size=max(2, round(0.2 * len(train_rows))),
            random_state=options.seed + number,
        )
        fit_part, stop_part = next(inner.split(x[train_rows], y[train_rows]))
        fit_rows, stop_rows = train_rows[fit_part], train_rows[stop_part]
        params = lightgbm_params(options, len(fit_rows), number + 1)
        booster = lightgbm.train(
            params,
            lightgbm.Dataset(x[fit_rows], y[fit_rows], feature_name=names, params=params),
            num_boost_round=options.max_rounds,
            valid_sets=[
                lightgbm.Dataset(x[stop_rows], y[stop_rows], feature_name=names, params=params)
            ],
            callbacks=[lightgbm.early_stopping(options.early_stopping_rounds, verbose=False)],
        )
        best = max(1, int(booster.best_iteration or booster.current_iteration()))
        oof[test_rows] = booster.predict(x[test_rows], num_iteration=best, raw_score=True)
        fold_of[test_rows] = number
        folds.append(
            Fold(
                number + 1,
                len(train_rows),
                len(test_rows),
                int(y[test_rows].sum()),
                best,
                metrics.auroc(y[test_rows], oof[test_rows]),
            )
        )
    method, reason = calibration.choose(options.calibration, len(y))
    calibrator = calibration.fit(method, oof, y)
    probability = calibration.cross_fitted(method, oof, y, fold_of)
    threshold = metrics.choose_threshold(y, probability, options.target_sensitivity)
    final_rounds = max(1, round(statistics.median(f.best_iteration for f in folds)))
    params = lightgbm_params(options, len(y))
    final = lightgbm.train(
        params,
        lightgbm.Dataset(x, y, feature_name=names, params=params),
        num_boost_round=final_rounds,
    )
    result = TrainingResult(
        model_text=final.model_to_string(num_iteration=-1),
        calibrator=calibrator,
        calibration_method=method,
        calibration_reason=reason,
        threshold=threshold,
        options=options,
        params=params,
        folds=folds,
        final_rounds=final_rounds,
        oof_margin=oof,
        oof_probability=probability,
        y=y,
    )
    result.metrics = evaluate(result)
    _explain(result, final, x, names)
    return result


def evaluate(result: TrainingResult) -> dict[str, Any]:
    """The card's numbers, all on out-of-fold (cross-fitted calibrated) probabilities."""
    y, p = result.y, result.oof_probability
    low, high = metrics.bootstrap_auroc(y, p, n=result.options.bootstrap, seed=result.options.seed)
    curve, ece = metrics.reliability(y, p)
    fpr, tpr, thresholds = metrics.roc_curve(y, p)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).round().astype(int))
    return {
        "auroc": {
            "value": metrics.auroc(y, p),
            "ci95": [low, high],
            "bootstrap_resamples": result.options.bootstrap,
        },
        "auroc_uncalibrated": metrics.auroc(y, result.oof_margin),
        "fold_auroc": [f.auroc for f in result.folds],
        "at_threshold": metrics.at_threshold(y, p, result.threshold),
        "brier": metrics.brier(y, p),
        "ece": ece,
        "calibration_curve": curve,
        "roc_curve": {
            "fpr": [float(v) for v in fpr[keep]],
            "tpr": [float(v) for v in tpr[keep]],
            "threshold": [float(v) if np.isfinite(v) else None for v in thresholds[keep]],
        },
    }


def _explain(result: TrainingResult, booster: Any, x: Array, names: list[str]) -> None:
    """SHAP values of the final model (TreeExplainer, exact tree SHAP in log-odds) on up to
    2000 training studies: the ranking by mean |SHAP| and the summary plot's data."""
    rng = np.random.default_rng(result.options.seed)
    rows = np.sort(rng.choice(len(x), size=min(len(x), 2000), replace=False))
    sample = x[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shap's deprecation notices
        values = shap.TreeExplainer(booster).shap_values(sample)
    if isinstance(values, list):
        values = values[-1]
    values = np.asarray(values, dtype=np.float64)
    mean_abs = np.abs(values).mean(axis=0)
    order = sorted(range(len(names)), key=lambda i: (-mean_abs[i], names[i]))
    result.shap_values, result.shap_x = values, sample
    result.shap_ranking = [(names[i], float(mean_abs[i])) for i in order]
