"""Fusion benchmark: training time on synthetic feature rows, and inference + SHAP time per
study with the trained model, each beside a reference.

Training: ``ctnode fusion train``'s work (5-fold cross-validation with early stopping,
calibration, 1000 bootstrap resamples, final model, SHAP on up to 2000 rows, model card
with its three figures) on N rows of the node's feature schema (63 features, 5 % missing),
the label a known function of three features plus noise. Reference: one LightGBM fit on
all rows for the same number of rounds, what training would cost without validation.

Inference: ``TrainedFusion.fuse`` per study (feature row, booster, calibrator, TreeExplainer
SHAP, top contributions, most-dangerous rule), over 500 different studies; references: the
rule-based fusion, the booster's raw score alone, and LightGBM's own contributions
(``pred_contrib``, single thread), the tree SHAP that TreeExplainer delegates to.

    python benchmarks/fusion.py [--rows 10000] [--studies 500]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def synthetic(n: int, names: tuple[str, ...], seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(names)))
    x[rng.random(x.shape) < 0.05] = np.nan
    known = (
        "quant.both_lungs.laa_950",
        "quant.both_lungs.percentage_of_opacity",
        "quant.nodule.max_diameter_mm",
    )
    a, b, c = (np.nan_to_num(x[:, names.index(k)]) for k in known)
    logit = 3.0 * a + 2.5 * b - 2.0 * c - 0.5
    return x, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int_)


def cold_load(store: Path) -> float:
    """Seconds to load the model in a fresh process, imports included (the node's start)."""
    code = (
        "import time; t = time.perf_counter(); "
        "from inference.ensemble import feature_schema; "
        "from inference.fusion.trained import load; "
        f"load(__import__('pathlib').Path({str(store)!r}), 'bench', feature_schema()); "
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    return float(out.stdout.strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--studies", type=int, default=500)
    args = parser.parse_args()

    import lightgbm

    from inference.ensemble import feature_schema
    from inference.findings import AnalyzerResult
    from inference.fusion.rules import RuleBasedFusion
    from inference.fusion.trained import Bundle, load
    from training import card as model_card
    from training.register import register
    from training.train import TrainOptions, lightgbm_params, train

    schema = feature_schema()
    names = schema.names
    x, y = synthetic(args.rows, names)
    options = TrainOptions()

    started = time.perf_counter()
    result = train(x, y, schema, options)
    trained = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        bundle = Bundle(
            name="bench",
            version="1",
            model_sha256=hashlib.sha256(result.model_text.encode()).hexdigest(),
            schema=schema,
            calibrator=result.calibrator,
            threshold=result.threshold,
            threshold_rule=options.threshold_rule,
            pathology="any abnormality",
        )
        register(store, result.model_text, bundle)
        data = {
            "pathology": "any abnormality",
            "labels_format": "synthetic",
            "id_column": "-",
            "studies": len(y),
            "positives": int(y.sum()),
            "negatives": int(len(y) - y.sum()),
            "prevalence": float(y.mean()),
            "unlabelled_rows": 0,
            "unknown_labels": 0,
            "missing_fraction": float(np.isnan(x).mean()),
        }
        card = model_card.build(
            result,
            name="bench",
            version="1",
            schema_version=schema.version,
            n_features=len(names),
            data=data,
            files={},
        )
        model_card.write(card, result, store, list(names))
        carded = time.perf_counter()

        params = lightgbm_params(options, len(y))
        ref_start = time.perf_counter()
        lightgbm.train(
            params,
            lightgbm.Dataset(x, y, feature_name=list(names), params=params),
            num_boost_round=result.final_rounds,
        )
        reference_s = time.perf_counter() - ref_start

        cold_s = cold_load(store)
        load_start = time.perf_counter()
        model = load(store, "bench", schema, top_k=5)
        load_s = time.perf_counter() - load_start

        studies = [
            [AnalyzerResult("quantitative", "1.0.0", features=dict(zip(names, row, strict=True)))]
            for row in x[: args.studies]
        ]
        model.fuse(studies[0])  # first call warms caches
        rule = RuleBasedFusion()
        timings: dict[str, list[float]] = {k: [] for k in ("fuse", "rule", "raw", "contrib")}
        for results in studies:
            row = schema.vector(results)[None, :]
            t0 = time.perf_counter()
            model.fuse(results)
            t1 = time.perf_counter()
            rule.fuse(results)
            t2 = time.perf_counter()
            model.booster.predict(row, raw_score=True, num_threads=1)
            t3 = time.perf_counter()
            model.booster.predict(row, pred_contrib=True, num_threads=1)
            t4 = time.perf_counter()
            timings["fuse"].append(1000 * (t1 - t0))
            timings["rule"].append(1000 * (t2 - t1))
            timings["raw"].append(1000 * (t3 - t2))
            timings["contrib"].append(1000 * (t4 - t3))

    auroc = result.metrics["auroc"]
    print(
        f"fusion benchmark, {date.today().isoformat()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"lightgbm {lightgbm.__version__}"
    )
    print()
    print(f"Training on {args.rows} synthetic rows x {len(names)} features ({options.folds} folds,")
    print(f"{options.bootstrap} bootstrap resamples, {options.threads} threads):")
    print()
    print("| step | seconds | ratio to reference |")
    print("|---|---|---|")
    total = carded - started
    print(
        f"| cross-validation, calibration, metrics, final model, SHAP | {trained - started:.1f} | "
        f"{(trained - started) / reference_s:.1f} |"
    )
    print(f"| model card (JSON, Markdown, 3 figures) | {carded - trained:.1f} | - |")
    print(f"| **total** | **{total:.1f}** | {total / reference_s:.1f} |")
    print(
        f"| reference: one LightGBM fit, {result.final_rounds} rounds, all rows | "
        f"{reference_s:.1f} | 1.0 |"
    )
    print()
    print(
        f"Out-of-fold AUROC {auroc['value']:.3f} ({auroc['ci95'][0]:.3f}-{auroc['ci95'][1]:.3f}), "
        f"ECE {result.metrics['ece']:.3f}, {result.calibration_method}, best iterations "
        f"{[f.best_iteration for f in result.folds]}, final {result.final_rounds} rounds."
    )
    print()
    print(
        f"Inference per study ({args.studies} studies, one at a time). Loading the model: "
        f"{cold_s:.1f} s in a fresh process (imports of lightgbm and shap included), "
        f"{load_s:.2f} s once they are imported; once per process."
    )
    print()
    print("| per study | median ms | p95 ms |")
    print("|---|---|---|")
    for key, label in (
        ("fuse", "trained fusion: features, booster, calibrator, TreeExplainer SHAP, top 5"),
        ("rule", "reference: rule-based fusion"),
        ("raw", "reference: booster raw score only (1 thread)"),
        ("contrib", "reference: LightGBM pred_contrib (1 thread)"),
    ):
        values = timings[key]
        print(f"| {label} | {statistics.median(values):.2f} | {percentile(values, 95):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
