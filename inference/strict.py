"""Strict checkpoint loading shared by every neural analyzer: a file either matches the
network key for key and shape for shape, or is refused with what differs (a wrong variant,
a truncated save, another model's file), never half-loaded with ``strict=False``."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


class CheckpointError(ValueError):
    """A checkpoint that does not match the network it is loaded into; ``reason`` is a
    short code (``key-mismatch``, ``shape-mismatch``, or the analyzer's own)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class LoadError(ValueError):
    """Verified weights that still cannot run as their analyzer (a wrong architecture, card
    or device); the message names the entry and says why, for ``/health`` and the log."""


def check_layout(
    own: Mapping[str, Tensor], state: Mapping[str, Tensor], what: str = "", hint: str = ""
) -> None:
    """Refuse ``state`` unless it has exactly ``own``'s keys with ``own``'s shapes; the
    message starts with ``what`` (which file) and ends with ``hint`` (a likely cause)."""
    lead = f"{what}: " if what else ""
    tail = f" ({hint})" if hint else ""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            "key-mismatch",
            f"{lead}{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}){tail}",
        )
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            "shape-mismatch",
            f"{lead}{len(wrong)} keys with wrong shape, e.g. {k} {tuple(state[k].shape)} "
            f"!= {tuple(own[k].shape)}{tail}",
        )
