"""Pieces every subcommand shares: the ``--config`` option and loading settings from it."""

from __future__ import annotations

import argparse
import sys

import config


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file (default: built-in defaults; CTNODE_* variables override)",
    )


def load_settings(args: argparse.Namespace) -> config.Settings:
    """Settings for a subcommand, or exit 2 with the reason when they are unusable."""
    try:
        return config.load(getattr(args, "config", None))
    except config.ConfigError as exc:
        print(f"ctnode: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
