"""The ``ctnode`` command line: one subcommand per module, imported only when used.

Each subcommand module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``,
and imports what it needs at its top. The dispatch imports only the module of the command
given, so starting ``ctnode status`` never imports the network stack or the analyzers; only
a command line without a known command (``ctnode --help``, a typo) imports every module, to
list their help.
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
}


def _module(module_name: str) -> ModuleType | None:
    """The subcommand's module; None where an optional part is not installed."""
    try:  # the dispatch imports the command's module only now: start-up time
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for ``command`` (its module alone imported), or for every subcommand."""
    parser = argparse.ArgumentParser(prog="ctnode", description="DICOM node for chest-CT analysis.")
    parser.add_argument("--version", action="version", version=f"ctnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name)
            continue
        module = _module(module_name)
        if module is None:
            continue
        parser_of = sub.add_parser(name, help=module.HELP, description=module.HELP)
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
