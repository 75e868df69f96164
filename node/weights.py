"""``ctnode weights list|import|fetch``: inspect and fill the weights store (``weights/``).

Only this command downloads, and only when asked; the node itself never fetches at run time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from node.common import add_config_argument, load_settings

HELP = "list, import or fetch model weights named in weights/manifest.toml"


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
    imp = sub.add_parser("import", help="verify a file a site obtained and install it")
    imp.add_argument("file", type=Path)
    imp.add_argument("--name", required=True, help="model name in the manifest")
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


def run(args: argparse.Namespace) -> int:
    from inference import weights

    store = Path(args.store or load_settings(args).neural.weights_dir)
    manifest = Path(args.manifest) if args.manifest else store / "manifest.toml"
    try:
        entries = weights.read_manifest(manifest)
        if args.action == "list":
            if not entries:
                print("no models in the manifest")
            worst = 0
            for entry in entries:
                state, why = weights.status(store, entry)
                worst = max(worst, {"present": 0, "missing": 0, "corrupt": 1}[state])
                print(f"{entry.name}\t{entry.version}\t{state}\t{entry.analyzer}\t{why}")
            return worst
        entry = weights.find(entries, args.name)
        if args.action == "import":
            path = weights.import_file(store, entry, args.file)
        else:
            token = os.environ.get(args.token_env) or None
            path = weights.fetch(store, entry, token=token, progress=_progress)
    except weights.WeightsError as exc:
        print(f"ctnode weights: {exc}", file=sys.stderr)
        return 1
    print(f"{entry.name}: installed {path} (sha256 verified)")
    return 0
