"""``ctnode fusion train|check``: train a fusion model on a site's labelled studies and put
it into the weights store; check that a registered model can run on this node.

``train`` reads the features (``ctnode features``) and a labels CSV (CT-RATE's format or
``study_uid,pathology``), cross-validates LightGBM, calibrates, chooses the threshold,
writes the model, its calibrator and its model card (JSON, Markdown, PNG figures) into the
store and registers them in ``manifest.toml``. Set ``[fusion] model`` to its name to use it.

Exit codes: 0 done; 1 the inputs cannot be used (the message says why); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli.common import add_config_argument, load_settings
from inference.ensemble import planned_schema
from inference.fusion.trained import FusionModelError, load
from training.train import TrainOptions
from training.workflow import Request, train_and_register

if TYPE_CHECKING:
    from config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--store", metavar="DIR", help="weights folder (default: [neural] weights_dir)"
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = sub.add_parser("train", help="cross-validate, calibrate, register, write the card")
    train.add_argument("--features", type=Path, required=True, help="from ctnode features")
    train.add_argument("--labels", type=Path, required=True, help="labels CSV (0/1)")
    train.add_argument(
        "--pathology",
        help="label column to learn (default: any abnormality: any of CT-RATE's 18 columns, "
        "or the 'pathology' column of a simple file)",
    )
    train.add_argument("--id-column", help="identifier column (default: study_uid/VolumeName)")
    train.add_argument("--name", default="site-fusion", help="model name (default: site-fusion)")
    train.add_argument("--version", help="model version (default: the registered one + 1)")
    train.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    train.add_argument("--seed", type=int, default=42, help="random seed (42)")
    train.add_argument(
        "--calibration",
        choices=("auto", "platt", "isotonic"),
        default="auto",
        help="auto: isotonic from 1000 studies on, Platt below (default)",
    )
    train.add_argument(
        "--target-sensitivity",
        type=float,
        metavar="S",
        help="threshold rule: highest threshold reaching sensitivity S (default: Youden's J)",
    )
    train.add_argument(
        "--bootstrap", type=int, default=1000, help="AUROC bootstrap resamples (1000)"
    )
    train.add_argument(
        "--ignore-unknown-labels",
        action="store_true",
        help="leave out labels naming no feature row instead of stopping",
    )
    check = sub.add_parser("check", help="load a registered model as the node would")
    check.add_argument("name", nargs="?", help="model name (default: [fusion] model)")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    store = Path(args.store or settings.neural.weights_dir)
    if args.action == "check":
        return _check(settings, store, args.name or settings.fusion.model)
    return _train(args, settings, store)


def _check(settings: Settings, store: Path, name: str) -> int:
    if not name:
        print("ctnode fusion check: no model named and [fusion] model is empty", file=sys.stderr)
        return 2
    try:
        model = load(store, name, planned_schema(settings), top_k=settings.fusion.top_k)
    except FusionModelError as exc:
        print(f"ctnode fusion check: {exc}", file=sys.stderr)
        return 1
    bundle = model.bundle
    print(
        f"{name} {bundle.version}: usable on this node (schema {bundle.schema.version}, "
        f"{bundle.calibrator.method} calibration, threshold {bundle.threshold:.4f} "
        f"[{bundle.threshold_rule}], pathology: {bundle.pathology})"
    )
    return 0


def _train(args: argparse.Namespace, settings: Settings, store: Path) -> int:
    if args.folds < 2:
        print("ctnode fusion train: --folds must be at least 2", file=sys.stderr)
        return 2
    if args.target_sensitivity is not None and not 0 < args.target_sensitivity <= 1:
        print("ctnode fusion train: --target-sensitivity must be in (0, 1]", file=sys.stderr)
        return 2
    if args.bootstrap < 100:
        print("ctnode fusion train: --bootstrap must be at least 100", file=sys.stderr)
        return 2
    request = Request(
        features=args.features,
        labels=args.labels,
        store=store,
        name=args.name,
        version=args.version,
        pathology=args.pathology,
        id_column=args.id_column,
        ignore_unknown_labels=args.ignore_unknown_labels,
        options=TrainOptions(
            folds=args.folds,
            seed=args.seed,
            calibration=args.calibration,
            target_sensitivity=args.target_sensitivity,
            bootstrap=args.bootstrap,
        ),
    )
    try:
        outcome = train_and_register(request, planned_schema(settings))
    except ValueError as exc:
        print(f"ctnode fusion train: {exc}", file=sys.stderr)
        return 1
    card = outcome.card
    auroc = card["metrics"]["auroc"]
    at = card["metrics"]["at_threshold"]
    print(
        f"{card['name']} {card['version']} ({card['pathology']}): {card['data']['studies']} "
        f"studies, {card['data']['positives']} positive"
    )
    print(
        f"  AUROC {auroc['value']:.3f} (95 % CI {auroc['ci95'][0]:.3f}-{auroc['ci95'][1]:.3f}), "
        f"Brier {card['metrics']['brier']:.4f}, ECE {card['metrics']['ece']:.4f} "
        f"({card['calibration']['method']})"
    )
    print(
        f"  threshold {card['threshold']['value']:.4f} ({card['threshold']['rule']}): "
        f"sensitivity {at['sensitivity']['value']:.3f}, specificity "
        f"{at['specificity']['value']:.3f}, PPV {at['ppv']['value']:.3f}, "
        f"NPV {at['npv']['value']:.3f}"
    )
    for entry in outcome.entries:
        print(f"  registered {entry.name}: {store / entry.file} sha256 {entry.sha256}")
    print(f"  model card: {store / (card['name'] + '.card.md')}")
    print(f'  to use it: [fusion] model = "{card["name"]}" (or CTNODE_FUSION__MODEL)')
    return 0
