"""The ``ctnode`` command line: one subcommand per module, imported only when used.

Each subcommand module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``,
so starting ``ctnode status`` never imports the network stack or the analyzers.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from config import __version__

SUBCOMMANDS: dict[str, str] = {
    "serve": "node.serve",
    "status": "cli.status",
    "config": "cli.show_config",
    "echo": "cli.echo",
    "retry": "cli.retry",
    "analyze": "cli.analyze",
    "weights": "cli.weights",
    "batch": "cli.batch",
    "features": "cli.features",
    "fusion": "cli.fusion",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctnode", description="DICOM node for chest-CT analysis.")
    parser.add_argument("--version", action="version", version=f"ctnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
