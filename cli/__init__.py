"""The ``ctnode`` command line: one subcommand per module, imported only when used.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int`` and
imports what it needs at its top; its one-line summary is in ``SUMMARIES`` here. The
dispatch imports only the module of the command given, so starting ``ctnode status`` never
imports the network stack or the analyzers, and ``ctnode --help`` imports none.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from config import __version__

SUBCOMMANDS: dict[str, str] = {
    "serve": "cli.serve",
    "status": "cli.status",
    "config": "cli.show_config",
    "echo": "cli.echo",
    "retry": "cli.retry",
    "analyze": "cli.analyze",
    "weights": "cli.weights",
    "batch": "cli.batch",
    "features": "cli.features",
    "fusion": "cli.fusion",
    "mednext": "cli.mednext",
}

# What ``ctnode --help`` says of each command, and its parser's description.
SUMMARIES: dict[str, str] = {
    "serve": "run the node: storage SCP, series assembly",
    "status": "list studies and series with their state",
    "config": "print the effective configuration",
    "echo": "verify a DICOM node answers C-ECHO (default: this node)",
    "retry": "re-queue failed deliveries of results",
    "analyze": "analyse a folder, ZIP, DICOMDIR or file offline and print the decision",
    "weights": "list, import, fetch or register model weights (weights/manifest.toml)",
    "batch": "analyse every ZIP under a folder through a node's POST /predict into a spreadsheet",
    "features": (
        "extract the analyzers' features of studies into a Parquet table for fusion training"
    ),
    "fusion": "train a fusion model on labelled studies (train), or check a registered one (check)",
    "mednext": "train a MedNeXt multilabel classifier on labelled studies (train)",
}


def _module(module_name: str) -> ModuleType | None:
    """The subcommand's module; None where it is not installed."""
    try:  # the dispatch imports the command's module only now: start-up time
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand listed; ``command``'s own options added (its module
    alone imported)."""
    parser = argparse.ArgumentParser(prog="ctnode", description="DICOM node for chest-CT analysis.")
    parser.add_argument("--version", action="version", version=f"ctnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        summary = SUMMARIES[name]
        parser_of = sub.add_parser(name, help=summary, description=summary)
        if name != command:
            continue
        module = _module(module_name)
        if module is None:
            parser.error(f"{name}: {module_name} is not installed")
        module.add_arguments(parser_of)
        parser_of.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    given = next((w for w in words if not w.startswith("-")), None)
    args = build_parser(given if given in SUBCOMMANDS else None).parse_args(words)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
