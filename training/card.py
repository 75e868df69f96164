"""The model card of a trained fusion model: JSON (for machines), Markdown (for people) and
PNG figures (ROC curve, calibration curve, SHAP summary), written beside the model.

Every number is an out-of-fold estimate on the site's own labelled studies (see
``training.train``); the card says so, and what the model must not be used for.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm
import matplotlib
import matplotlib.pyplot as plt
import sklearn

from config import __version__
from training.train import TrainingResult

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # shap's deprecation notices at import
    import shap

LIMITATIONS = (
    "Estimates are cross-validated on this site's labelled studies only; performance on "
    "other scanners, protocols or populations is unknown.",
    "The threshold was chosen on the same out-of-fold predictions it is evaluated on, so "
    "sensitivity and specificity at the threshold are slightly optimistic.",
    "The labels are what the site supplied (e.g. report-derived CT-RATE labels); their "
    "errors are learnt and not detected.",
    "Not for primary diagnosis: the output supports a radiologist's reading.",
)


def figure_files(name: str) -> dict[str, str]:
    return {
        "roc": f"{name}.roc.png",
        "calibration": f"{name}.calibration.png",
        "shap": f"{name}.shap.png",
    }


def build(
    result: TrainingResult,
    *,
    name: str,
    version: str,
    schema_version: str,
    n_features: int,
    data: dict[str, Any],
    files: dict[str, dict[str, str]],
) -> dict[str, Any]:
    """The card as a JSON-ready dict."""
    options = result.options
    return {
        "name": name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "software": {
            "ctnode": __version__,
            "lightgbm": lightgbm.__version__,
            "shap": shap.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "intended_use": (
            "Overall probability that a chest CT shows the pathology below, fused from the "
            "analyzers' features, with SHAP explanations; decision support for a radiologist."
        ),
        "pathology": data["pathology"],
        "data": data,
        "feature_schema": {"version": schema_version, "features": n_features},
        "training": {
            "folds": options.folds,
            "seed": options.seed,
            "early_stopping": (
                f"{options.early_stopping_rounds} rounds on a stratified fifth of each "
                "training part (binary log-loss)"
            ),
            "best_iterations": [f.best_iteration for f in result.folds],
            "final_rounds": result.final_rounds,
            "final_model": "all labelled studies, median best iteration of the folds",
            "folds_detail": [asdict(f) for f in result.folds],
            "lightgbm_params": result.params,
        },
        "calibration": {
            "method": result.calibration_method,
            "reason": result.calibration_reason,
            "fitted_on": f"{len(result.y)} out-of-fold raw scores (log-odds)",
            "evaluated_on": "cross-fitted: each fold calibrated by the other folds",
        },
        "threshold": {
            "rule": options.threshold_rule,
            "value": result.threshold,
            "explanation": (
                "maximises Youden's J (sensitivity + specificity - 1)"
                if options.target_sensitivity is None
                else f"highest threshold whose sensitivity reaches {options.target_sensitivity:g}"
            ),
        },
        "metrics": result.metrics,
        "shap": {
            "explainer": "shap.TreeExplainer (exact tree SHAP), log-odds of the uncalibrated model",
            "rows": len(result.shap_x),
            "mean_abs_shap": [
                {"feature": n, "mean_abs_shap": v} for n, v in result.shap_ranking[:20] if v > 0
            ],
            "features_unused": sum(1 for _, v in result.shap_ranking if v == 0),
        },
        "files": files,
        "limitations": list(LIMITATIONS),
    }


def write(card: dict[str, Any], result: TrainingResult, folder: Path, names: list[str]) -> None:
    """Write ``<name>.card.json``, ``<name>.card.md`` and the three figures."""
    name = card["name"]
    (folder / f"{name}.card.json").write_text(
        json.dumps(_finite(card), indent=2) + "\n", encoding="utf-8"
    )
    (folder / f"{name}.card.md").write_text(markdown(card), encoding="utf-8")
    figures = figure_files(name)
    plot_roc(result, folder / figures["roc"])
    plot_calibration(result, folder / figures["calibration"])
    plot_shap(result, names, folder / figures["shap"])


def _finite(value: Any) -> Any:
    """NaN (not JSON) as null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _pct(p: dict[str, Any]) -> str:
    low, high = p["ci95"]
    if not math.isfinite(p["value"]):
        return "n/a"
    return (
        f"{100 * p['value']:.1f} % ({100 * low:.1f}-{100 * high:.1f}; "
        f"{p['numerator']}/{p['denominator']})"
    )


def markdown(card: dict[str, Any]) -> str:
    m = card["metrics"]
    at = m["at_threshold"]
    data = card["data"]
    auroc = m["auroc"]
    figures = figure_files(card["name"])
    shap_rows = card["shap"]["mean_abs_shap"]
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        f"Fusion model for **{card['pathology']}**, trained with ctnode "
        f"{card['software']['ctnode']} on {card['created']}.",
        "",
        f"Intended use: {card['intended_use']}",
        "",
        "## Data",
        "",
        f"- {data['studies']} labelled studies: {data['positives']} positive, "
        f"{data['negatives']} negative (prevalence {100 * data['prevalence']:.1f} %)",
        f"- labels: {data['labels_format']} file, identifier column `{data['id_column']}`",
        f"- feature rows without a label (left out): {data['unlabelled_rows']}; labels naming "
        f"no feature row (left out): {data['unknown_labels']}",
        f"- feature schema `{card['feature_schema']['version']}`, "
        f"{card['feature_schema']['features']} features; missing values: "
        f"{100 * data['missing_fraction']:.1f} %",
        "",
        "## Training",
        "",
        f"- LightGBM, stratified {card['training']['folds']}-fold cross-validation, seed "
        f"{card['training']['seed']}; early stopping: {card['training']['early_stopping']}",
        f"- best iterations per fold: {card['training']['best_iterations']}; final model: "
        f"{card['training']['final_model']} ({card['training']['final_rounds']} rounds)",
        f"- calibration: {card['calibration']['reason']}; fitted on "
        f"{card['calibration']['fitted_on']}, evaluated {card['calibration']['evaluated_on']}",
        f"- threshold {card['threshold']['value']:.4f}: {card['threshold']['explanation']} "
        f"(rule `{card['threshold']['rule']}`)",
        "",
        "## Performance (out-of-fold)",
        "",
        "| metric | value (95 % CI) |",
        "|---|---|",
        f"| AUROC | {auroc['value']:.3f} ({auroc['ci95'][0]:.3f}-{auroc['ci95'][1]:.3f}; "
        f"bootstrap, {auroc['bootstrap_resamples']} resamples) |",
        f"| sensitivity | {_pct(at['sensitivity'])} |",
        f"| specificity | {_pct(at['specificity'])} |",
        f"| PPV | {_pct(at['ppv'])} |",
        f"| NPV | {_pct(at['npv'])} |",
        f"| Brier score | {m['brier']:.4f} |",
        f"| expected calibration error (10 bins) | {m['ece']:.4f} |",
        "",
        f"AUROC per fold: {', '.join(f'{v:.3f}' for v in m['fold_auroc'])}. "
        f"At the threshold: TP {at['tp']}, FP {at['fp']}, TN {at['tn']}, FN {at['fn']}.",
        "",
        f"![ROC curve]({figures['roc']})",
        f"![Calibration curve]({figures['calibration']})",
        "",
        "## Explanations",
        "",
        f"{card['shap']['explainer']}; mean |SHAP| over {card['shap']['rows']} training studies "
        f"(the 20 largest; {card['shap']['features_unused']} features are not used at all):",
        "",
        "| feature | mean abs SHAP |",
        "|---|---|",
        *[f"| `{r['feature']}` | {r['mean_abs_shap']:.4f} |" for r in shap_rows],
        "",
        f"![SHAP summary]({figures['shap']})",
        "",
        "## Files",
        "",
        *[f"- {role}: `{f['file']}` sha256 `{f['sha256']}`" for role, f in card["files"].items()],
        "",
        "## Limitations",
        "",
        *[f"- {text}" for text in card["limitations"]],
        "",
    ]
    return "\n".join(lines)


def _pyplot() -> Any:
    matplotlib.use("Agg")  # files only, whatever display the machine has
    return plt


def plot_roc(result: TrainingResult, path: Path) -> None:
    plt = _pyplot()
    roc = result.metrics["roc_curve"]
    auroc = result.metrics["auroc"]
    at = result.metrics["at_threshold"]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot(roc["fpr"], roc["tpr"], color="tab:blue", label="out-of-fold ROC")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.scatter(
        [1 - at["specificity"]["value"]],
        [at["sensitivity"]["value"]],
        color="tab:red",
        zorder=3,
        label=f"threshold {result.threshold:.3f}",
    )
    ax.set(
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title=f"AUROC {auroc['value']:.3f} ({auroc['ci95'][0]:.3f}-{auroc['ci95'][1]:.3f})",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_calibration(result: TrainingResult, path: Path) -> None:
    plt = _pyplot()
    curve = result.metrics["calibration_curve"]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6), dpi=100, gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
    top.plot(
        [b["mean_predicted"] for b in curve],
        [b["observed"] for b in curve],
        marker="o",
        color="tab:blue",
        label=f"{result.calibration_method} (ECE {result.metrics['ece']:.3f})",
    )
    top.set(ylabel="observed fraction positive", ylim=(0, 1), title="Calibration (out-of-fold)")
    top.legend(loc="upper left")
    bottom.hist(result.oof_probability, bins=20, range=(0, 1), color="tab:blue")
    bottom.set(xlabel="predicted probability", ylabel="studies", xlim=(0, 1))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_shap(result: TrainingResult, names: list[str], path: Path) -> None:
    plt = _pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shap.summary_plot(
            result.shap_values,
            result.shap_x,
            feature_names=names,
            max_display=15,
            show=False,
            plot_size=(8, 6),
        )
    fig = plt.gcf()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
