"""Receipt checks (pure): UID syntax, identity against the command, size and disk limits."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from scp.uids import has_leading_zero, name_hash, uid_hash, uid_problem
from scp.validation import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    Identity,
    Rejection,
    check_free_space,
    check_identity,
    check_size,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", None),
        ("1.2.3.04", None),
        (None, "missing"),
        ("", "empty"),
        ("1." + "2" * 63, "longer than 64"),
        ("1..2", "not digits"),
        ("1.2.", "not digits"),
        ("1.2.a", "not digits"),
        (" 1.2", "not digits"),
    ],
)
def test_uid_syntax(value: str | None, problem: str | None) -> None:
    result = uid_problem(value)
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


def test_leading_zero_is_noticed_not_rejected() -> None:
    assert has_leading_zero("1.2.03")
    assert not has_leading_zero("1.2.0.3")


def test_hashes_are_stable_and_carry_no_uid() -> None:
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert uid_hash(uid) == uid_hash(uid) and len(uid_hash(uid)) == 12
    assert len(name_hash(uid)) == 32 and "." not in name_hash(uid)
    assert uid_hash(uid) != uid_hash(uid + "1")


def _dataset(**values: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.5"
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def test_valid_identity() -> None:
    assert check_identity(_dataset(), CT, "1.2.3.4") == Identity(CT, "1.2.3.4", "1.2.3", "1.2.3.5")


@pytest.mark.parametrize(
    ("changes", "command_instance", "status", "reason"),
    [
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "1.2.3.4", 0xA900, "sop_class_mismatch"),
        ({}, "1.2.3.9", 0xA900, "sop_instance_mismatch"),
        ({"SOPInstanceUID": "1.2.x"}, "1.2.x", 0xA900, "invalid_sop_uid"),
        ({"StudyInstanceUID": ""}, "1.2.3.4", 0xC000, "invalid_hierarchy_uid"),
        ({"SeriesInstanceUID": "1..2"}, "1.2.3.4", 0xC000, "invalid_hierarchy_uid"),
    ],
)
def test_identity_rejections(
    changes: dict[str, str], command_instance: str, status: int, reason: str
) -> None:
    result = check_identity(_dataset(**changes), CT, command_instance)
    assert isinstance(result, Rejection)
    assert (result.status, result.reason) == (status, reason)


def test_missing_series_uid_is_cannot_understand() -> None:
    ds = _dataset()
    del ds.SeriesInstanceUID
    result = check_identity(ds, CT, "1.2.3.4")
    assert isinstance(result, Rejection) and result.status == CANNOT_UNDERSTAND
    assert "missing" in result.message


def test_limits() -> None:
    assert check_size(100, 100) is None
    too_big = check_size(101, 100)
    assert too_big is not None and too_big.status == OUT_OF_RESOURCES
    assert check_free_space(2**30, 2**29) is None
    full = check_free_space(2**20, 2**30)
    assert full is not None and full.status == OUT_OF_RESOURCES and full.reason == "disk_full"
    assert DATASET_DOES_NOT_MATCH_SOP_CLASS == 0xA900
