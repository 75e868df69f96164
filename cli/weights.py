"""``ctnode weights list|import|fetch|register``: inspect and fill the weights store.

``import`` and ``fetch`` install a file the manifest already lists with its sha256;
``register`` adds a file a site obtained to the manifest (its size and sha256 computed
here), for checkpoints such as CT-CLIP's whose provider publishes no hash we could ship.

Only this command downloads, and only when asked; the node itself never fetches at run time.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cli.common import add_config_argument, load_settings
from inference import ensemble, weights_store
from inference.availability import HELPERS, NEURAL

if TYPE_CHECKING:
    from config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--store", metavar="DIR", help="weights folder (default: [neural] weights_dir)"
    )
    parser.add_argument(
        "--manifest", metavar="FILE", help="manifest (default: STORE/manifest.toml)"
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="show each model as present, missing or corrupt")
    sub.add_parser(
        "check",
        help="load every registered model as the node would (and cache CT-CLIP's prompt "
        "latents); non-zero if one cannot run",
    )
    imp = sub.add_parser("import", help="verify a file a site obtained and install it")
    imp.add_argument("file", type=Path)
    imp.add_argument("--name", required=True, help="model name in the manifest")
    reg = sub.add_parser("register", help="add a weights file a site obtained to the manifest")
    reg.add_argument("file", type=Path)
    reg.add_argument("--name", required=True, help="model name, e.g. ct-clip-v2")
    reg.add_argument(
        "--analyzer",
        required=True,
        choices=(*NEURAL, *HELPERS),
        help="the analyzer that uses the file (totalsegmentator: a zip of its weights folder)",
    )
    reg.add_argument("--version", default="1")
    reg.add_argument("--licence", default="", help="e.g. 'CC BY-NC-SA 4.0'")
    reg.add_argument("--source", default="", help="where the file came from (URL)")
    reg.add_argument(
        "--architecture", type=Path, help="hyperparameters JSON (sizes other than the published)"
    )
    reg.add_argument("--vocab", type=Path, help="tokenizer vocab.txt (zero-shot prompts)")
    reg.add_argument(
        "--companion", type=Path, help="a second checkpoint (diffusion-anomaly: the classifier)"
    )
    reg.add_argument("--card", type=Path, help="model card JSON (diffusion-anomaly, mednext)")
    fet = sub.add_parser("fetch", help="download a model from its manifest URL, with resume")
    fet.add_argument("name")
    fet.add_argument(
        "--token-env",
        default="CTNODE_WEIGHTS_TOKEN",
        metavar="VAR",
        help="environment variable holding a bearer token (default: CTNODE_WEIGHTS_TOKEN)",
    )


def _progress(done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    pct = 100.0 * done / total if total else 100.0
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {pct:5.1f}% {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _check(settings: Settings) -> int:
    """The analyzers as the node would start them: a registered model that cannot run
    (missing, corrupt, wrong layout, no prompt latents) fails the check, e.g. an image build."""
    built = ensemble.build(settings)
    for state in built.states:
        verdict = "enabled" if state.enabled else ("FAULT" if state.fault else "disabled")
        print(f"{state.name}\t{verdict}\t{state.reason}")
    return 1 if any(s.fault for s in built.states) else 0


def _register(args: argparse.Namespace, store: Path) -> int:
    """Register the file (and its architecture and vocab files) in ``store``."""
    try:
        entry = weights_store.register(
            store,
            args.file,
            name=args.name,
            analyzer=args.analyzer,
            version=args.version,
            licence=args.licence,
            origin=args.source,
            architecture=args.architecture,
            vocab=args.vocab,
            companion=args.companion,
            card=args.card,
        )
    except (weights_store.WeightsError, OSError) as exc:
        print(f"ctnode weights: {exc}", file=sys.stderr)
        return 1
    print(f"{entry.name}: registered {entry.file} ({entry.size} bytes, sha256 {entry.sha256})")
    return 0


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    store = Path(args.store or settings.neural.weights_dir)
    manifest = Path(args.manifest) if args.manifest else store / "manifest.toml"
    if args.action == "register":
        return _register(args, store)
    if args.action == "check":
        return _check(replace(settings, neural=replace(settings.neural, weights_dir=str(store))))
    try:
        entries = weights_store.read_manifest(manifest)
        if args.action == "list":
            if not entries:
                print("no models in the manifest")
            worst = 0
            for entry in entries:
                state, why = weights_store.status(store, entry)
                worst = max(worst, {"present": 0, "missing": 0, "corrupt": 1}[state])
                print(f"{entry.name}\t{entry.version}\t{state}\t{entry.analyzer}\t{why}")
            return worst
        entry = weights_store.find(entries, args.name)
        if args.action == "import":
            path = weights_store.import_file(store, entry, args.file)
        else:
            token = os.environ.get(args.token_env) or None
            path = weights_store.fetch(store, entry, token=token, progress=_progress)
    except weights_store.WeightsError as exc:
        print(f"ctnode weights: {exc}", file=sys.stderr)
        return 1
    print(f"{entry.name}: installed {path} (sha256 verified)")
    return 0
