"""``ctnode config``: print the effective settings (file + environment + defaults) as TOML."""

from __future__ import annotations

import argparse
import json
from typing import Any

import config
from cli.common import add_config_argument, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of TOML")


def run(args: argparse.Namespace) -> int:
    values = config.as_dict(load_settings(args))
    print(json.dumps(values, indent=2) if args.json else to_toml(values), end="\n")
    return 0


def to_toml(values: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the settings tree: scalars, lists of scalars or tables."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append((f"{prefix}{key}", value))
        elif isinstance(value, list | tuple):
            items = [_inline(v) for v in value]
            lines.append(f"{key} = [{', '.join(items)}]")
        else:
            lines.append(f"{key} = {_scalar(value)}")
    out = "\n".join(lines)
    for name, table in tables:
        out += f"\n\n[{name}]\n" + to_toml(table, f"{name}.")
    return out.strip("\n")


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_scalar(v)}" for k, v in value.items()) + " }"
    return _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))
