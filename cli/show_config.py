"""``ctnode config``: print the effective settings (file + environment + defaults) as TOML.

Secrets are masked: the API's bearer token and a password in ``[database] url`` are shown as
``***`` (set) or left empty (not set), since the output is what operators paste into tickets.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import urlsplit

import config
from cli.common import add_config_argument, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of TOML")


def run(args: argparse.Namespace) -> int:
    values = masked(config.as_dict(load_settings(args)))
    print(json.dumps(values, indent=2) if args.json else to_toml(values), end="\n")
    return 0


MASK = "***"


def masked(values: dict[str, Any]) -> dict[str, Any]:
    """The settings with their secrets replaced by ``MASK``."""
    api, database = values.get("api", {}), values.get("database", {})
    if api.get("token"):
        api["token"] = MASK
    if database.get("url"):
        database["url"] = _masked_url(database["url"])
    return values


def _masked_url(url: str) -> str:
    """A libpq URL without its password (in the authority or as a ``password=`` parameter)."""
    parts = urlsplit(url)
    if parts.password is not None:
        userinfo, host = parts.netloc.rsplit("@", 1)
        url = url.replace(f"//{parts.netloc}", f"//{userinfo.split(':')[0]}:{MASK}@{host}", 1)
    if parts.query:
        query = "&".join(
            f"password={MASK}" if q.startswith("password=") else q for q in parts.query.split("&")
        )
        url = url.replace(f"?{parts.query}", f"?{query}", 1)
    return url


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
