"""``ctnode retry [ID ...]``: re-queue FAILED deliveries (all of them when no id is given).

Safe while the node runs: the running outbox picks the rows up at its next tick.
"""

from __future__ import annotations

import argparse
import sys

from cli.common import add_config_argument, load_settings
from node.index import DB_NAME, Index
from node.outbox import Outbox


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="outbox row ids")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    url = settings.database.url
    if not url and not (settings.storage.root / DB_NAME).exists():
        print(f"no index in {settings.storage.root}", file=sys.stderr)
        return 1
    index = Index(settings.storage.root, url=url, pool_size=1)
    try:
        count = Outbox(index, settings.storage.root, {}, settings.outbox).retry(args.ids)
    finally:
        index.close()
    print(f"{count} deliveries re-queued")
    return 0
