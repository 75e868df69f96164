"""The table of codes: one meaning per code value, every measurement coded, README in step."""

from __future__ import annotations

import re

from inference import codes
from inference.findings import CT_RATE_LABELS, label_code
from inference.quant import densitometry
from tests.conftest import REPO


def test_code_values_are_unique_and_fit_their_vr() -> None:
    rows = codes.table()
    keys = [(r.code.value, r.code.scheme) for r in rows]
    assert len(keys) == len(set(keys))
    meanings = [(r.code.scheme, r.code.meaning) for r in rows]
    assert len(meanings) == len(set(meanings)), "two codes of one scheme share a meaning"
    for row in rows:
        assert 0 < len(row.code.value) <= 16  # SH
        assert 0 < len(row.code.meaning) <= 64  # LO
    retired = set(codes.RETIRED)
    assert not retired & {r.code.value for r in rows if r.code.scheme == codes.PRIVATE_SCHEME}


def test_every_measurement_and_label_has_a_code() -> None:
    for m in densitometry.empty_region("both lungs").measurements():
        assert codes.measurement(m.name).unit == m.unit
    for label in CT_RATE_LABELS:
        assert label_code(label) in {r.code for r in codes.table()}


def test_readme_lists_the_table() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- codes -->\n(.*?)\n<!-- /codes -->", readme, re.S)
    assert block is not None, "README.md has no <!-- codes --> table"
    assert block.group(1).strip() == codes.markdown().strip(), (
        "README's table of codes is stale: python -m inference.codes"
    )
