"""Which series of a study to analyse, and why (pure; the rules are data from the config).

Candidates are the series that pass validation (``inference.validation``). Preference: a
lung (sharp) kernel, then a standard/soft kernel, then any other; among equals the most
slices; then the thinnest slices. Kernels are matched against ConvolutionKernel (every
value of it) and the series description: an entry matches a value equal to it, or starting
with it when the entry has 3 or more characters (``B60f`` matches ``B60f`` and ``B60f\\3``),
and ``LUNG`` also matches a description word.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from config import SelectionSettings, ValidationSettings
from inference.errors import InvalidSeries
from inference.headers import SliceHeader
from inference.validation import OrderedSeries, PixelDigest, check

LUNG, SOFT, OTHER = "lung", "soft", "other"
_RANK = {LUNG: 0, SOFT: 1, OTHER: 2}


@dataclass(frozen=True)
class Verdict:
    """One series of the study and what selection made of it."""

    series_uid: str
    series_number: int | None
    description: str
    kernel: str
    kernel_class: str
    images: int
    slice_thickness: float | None
    valid: bool
    reason: str

    @property
    def why(self) -> str:
        """The sentence the summary page prints under "Why:" for the series chosen."""
        return (
            f"series {self.series_number}: {self.description or 'no description'} "
            f"({self.kernel or 'no kernel'}, {self.images} images), {self.kernel_class} kernel"
        )


@dataclass(frozen=True)
class Selection:
    """Every series with its verdict, candidates in preference order (best first)."""

    verdicts: tuple[Verdict, ...]
    candidates: tuple[tuple[str, OrderedSeries], ...]

    @property
    def chosen(self) -> str | None:
        return self.candidates[0][0] if self.candidates else None


def kernel_class(kernel: str, description: str, rules: SelectionSettings) -> str:
    values = [v.strip().upper() for v in re.split(r"[\\\s]+", kernel) if v.strip()]
    words = set(re.findall(r"[A-Z0-9]+", description.upper()))
    for name, entries in ((LUNG, rules.lung_kernels), (SOFT, rules.soft_kernels)):
        for entry in (e.upper() for e in entries):
            if any(v == entry or (len(entry) >= 3 and v.startswith(entry)) for v in values):
                return name
    return LUNG if "LUNG" in words else OTHER


def pick(
    series: Mapping[str, Sequence[SliceHeader]],
    rules: SelectionSettings = SelectionSettings(),
    validation: ValidationSettings = ValidationSettings(),
    pixel_digest: PixelDigest | None = None,
) -> Selection:
    verdicts: list[Verdict] = []
    valid: list[tuple[tuple[int, int, float], str, OrderedSeries]] = []
    for uid, headers in series.items():
        first = headers[0]
        klass = kernel_class(first.kernel, first.series_description, rules)
        try:
            ordered = check(headers, validation, pixel_digest)
        except InvalidSeries as exc:
            verdicts.append(_verdict(uid, headers, klass, False, exc.code + ": " + exc.message))
            continue
        thickness = first.slice_thickness or ordered.spacing
        valid.append(((_RANK[klass], -len(ordered.slices), thickness), uid, ordered))
        verdicts.append(_verdict(uid, headers, klass, True, ""))
    valid.sort(key=lambda item: item[0])
    reasons = {}
    for rank, (_, uid, _) in enumerate(valid):
        reasons[uid] = (
            "selected"
            if rank == 0
            else f"candidate {rank + 1}: "
            + (
                "less preferred kernel"
                if valid[rank][0][0] > valid[0][0][0]
                else "fewer slices"
                if valid[rank][0][1] > valid[0][0][1]
                else "thicker slices"
            )
        )
    verdicts = [v if not v.valid else _with_reason(v, reasons[v.series_uid]) for v in verdicts]
    verdicts.sort(key=lambda v: (v.series_number is None, v.series_number or 0, v.series_uid))
    return Selection(tuple(verdicts), tuple((uid, ordered) for _, uid, ordered in valid))


def _verdict(
    uid: str, headers: Sequence[SliceHeader], klass: str, valid: bool, reason: str
) -> Verdict:
    first = headers[0]
    return Verdict(
        uid,
        first.series_number,
        first.series_description,
        first.kernel,
        klass,
        len(headers),
        first.slice_thickness,
        valid,
        reason,
    )


def _with_reason(verdict: Verdict, reason: str) -> Verdict:
    return Verdict(**{**verdict.__dict__, "reason": reason})
