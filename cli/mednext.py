"""``ctnode mednext train``: train a MedNeXt multilabel classifier on a site's labelled
studies and put it into the weights store with its model card.

Studies are folders, ZIPs, DICOMDIRs or files (as ``ctnode features`` reads them); labels a
CSV in CT-RATE's format or ``study_uid,<label>,...`` (0/1), matched by study UID, series UID
or input name. Each study is prepared as the analyzer prepares it (the node's lung
segmentation, the card's preprocessing) and cached in the work folder; training keeps a
checkpoint per epoch there (``--resume`` continues an interrupted run). On a GPU it runs in
mixed precision; on the CPU it runs too, slowly. At the end the best epoch is registered as
the analyzer ``mednext``: the node runs it from its next start.

Exit codes: 0 done; 1 the inputs cannot be used (the message says why); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.common import add_config_argument, load_settings
from inference.mednext.card import VARIANTS, Architecture, CardError, Preprocessing
from training.mednext.loop import TrainOptions
from training.mednext.workflow import Request, train_and_register


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--store", metavar="DIR", help="weights folder (default: [neural] weights_dir)"
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = sub.add_parser("train", help="train on labelled studies, register with a card")
    train.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="studies")
    train.add_argument("--labels", type=Path, required=True, help="labels CSV (0/1)")
    train.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME",
        help="a label column to learn, in head order (repeat; default: every column but the "
        "identifier)",
    )
    train.add_argument("--id-column", help="identifier column (default: study_uid/VolumeName)")
    train.add_argument("--work", type=Path, required=True, help="work folder (inputs, checkpoints)")
    train.add_argument("--resume", action="store_true", help="continue from the work folder")
    train.add_argument("--name", default="site-mednext", help="model name (site-mednext)")
    train.add_argument("--version", help="model version (default: the registered one + 1)")
    train.add_argument("--variant", choices=sorted(VARIANTS), default="B", help="MedNeXt size (B)")
    train.add_argument("--kernel-size", type=int, choices=(3, 5), default=3, help="3 or 5 (3)")
    train.add_argument(
        "--architecture",
        type=Path,
        metavar="JSON",
        help="custom sizes instead of --variant: {n_channels, exp_r: [9], block_counts: [9]}",
    )
    train.add_argument(
        "--init", type=Path, help="a MedNeXt segmentation checkpoint whose encoder to start from"
    )
    default = Preprocessing()
    train.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=default.spacing_mm,
        metavar=("Z", "Y", "X"),
        help="voxel spacing in mm (2 2 2)",
    )
    train.add_argument(
        "--input-size",
        type=int,
        nargs=3,
        default=default.input_size,
        metavar=("D", "H", "W"),
        help="input voxels, multiples of 16 (160 192 192)",
    )
    train.add_argument(
        "--hu-window",
        type=float,
        nargs=2,
        default=default.hu_window,
        metavar=("LOW", "HIGH"),
        help="HU clipped to this window, scaled to [-1, 1] (-1000 1000)",
    )
    train.add_argument("--epochs", type=int, default=100, help="at most (100)")
    train.add_argument("--batch-size", type=int, default=2, help="volumes per step (2)")
    train.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (1e-3)")
    train.add_argument("--val-fraction", type=float, default=0.2, help="validation share (0.2)")
    train.add_argument(
        "--patience", type=int, default=15, help="epochs without a better mean AUROC (15)"
    )
    train.add_argument("--seed", type=int, default=42, help="split and initialisation (42)")
    train.add_argument("--device", default="", help="cuda, cuda:1, cpu (default: cuda if present)")
    train.add_argument("--no-amp", action="store_true", help="float32 on the GPU too")
    train.add_argument(
        "--ignore-unknown-labels",
        action="store_true",
        help="leave out labels naming no study instead of stopping",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")


def _architecture(path: Path) -> Architecture:
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        return Architecture(
            int(data["n_channels"]),
            tuple(int(v) for v in data["exp_r"]),
            tuple(int(v) for v in data["block_counts"]),
            bool(data.get("checkpointing", False)),
        )
    except (KeyError, TypeError) as exc:
        raise CardError(f"{path.name}: needs n_channels, exp_r and block_counts ({exc})") from exc


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    store = Path(args.store or settings.neural.weights_dir)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"ctnode mednext train: {missing[0]} does not exist", file=sys.stderr)
        return 2
    try:
        options = TrainOptions(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            val_fraction=args.val_fraction,
            patience=args.patience,
            seed=args.seed,
            amp=not args.no_amp,
            device=args.device,
        )
        preprocessing = Preprocessing(
            spacing_mm=tuple(args.spacing),
            input_size=tuple(args.input_size),
            hu_window=tuple(args.hu_window),
        )
        architecture = _architecture(args.architecture) if args.architecture else None
    except (ValueError, CardError, OSError) as exc:
        print(f"ctnode mednext train: {exc}", file=sys.stderr)
        return 2
    request = Request(
        paths=tuple(args.paths),
        labels=args.labels,
        store=store,
        workdir=args.work,
        name=args.name,
        version=args.version,
        variant=args.variant,
        kernel_size=args.kernel_size,
        architecture=architecture,
        preprocessing=preprocessing,
        label_names=tuple(args.label),
        id_column=args.id_column,
        init=args.init,
        ignore_unknown_labels=args.ignore_unknown_labels,
        resume=args.resume,
        options=options,
    )

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        outcome = train_and_register(request, settings, progress=not args.quiet, report=report)
    except ValueError as exc:
        print(f"ctnode mednext train: {exc}", file=sys.stderr)
        return 1
    card, entry = outcome.card, outcome.entry
    training = card.training
    for skipped in outcome.skipped:
        print(f"  skipped {skipped.source}: {skipped.code}: {skipped.reason}", file=sys.stderr)
    print(
        f"{card.name} {card.version} (MedNeXt-{card.variant} k{card.kernel_size}): "
        f"{training['studies']} studies, {training['validation_studies']} validated, best epoch "
        f"{training['best_epoch']} of {training['epochs_run']}"
    )
    for label, value, threshold in zip(
        card.labels, training["validation_auroc"], card.thresholds, strict=True
    ):
        shown = "n/a (one class)" if value is None else f"{value:.3f}"
        print(f"  {label}: validation AUROC {shown}, threshold {threshold:.3f}")
    print(f"  registered {entry.name}: {store / entry.file} sha256 {entry.sha256}")
    print(f"  model card: {store / entry.card}")
    return 0
