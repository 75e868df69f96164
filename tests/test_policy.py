"""The association allowlist: AE titles, optionally bound to addresses or networks."""

from __future__ import annotations

import pytest

from config import AllowedCaller
from scp.policy import AssociationPolicy


def test_empty_allowlist_accepts_anyone() -> None:
    policy = AssociationPolicy(())
    assert policy.is_open and policy.allows("ANY", "192.0.2.1")


def test_titles_and_networks() -> None:
    policy = AssociationPolicy(
        (
            AllowedCaller("PACS", "10.1.2.0/24"),
            AllowedCaller("CT1"),
            AllowedCaller("LOCAL", "127.0.0.1"),
        )
    )
    assert policy.allows("PACS", "10.1.2.77")
    assert not policy.allows("PACS", "10.1.3.77")
    assert policy.allows("CT1", "203.0.113.9")
    assert policy.allows("LOCAL  ", "::ffff:127.0.0.1")
    assert not policy.allows("LOCAL", "127.0.0.2")
    assert not policy.allows("OTHER", "10.1.2.77")


def test_bad_rules_are_refused_at_start() -> None:
    with pytest.raises(ValueError):
        AssociationPolicy((AllowedCaller("X", "10.0.0.0/33"),))
    with pytest.raises(ValueError, match="1-16"):
        AssociationPolicy((AllowedCaller("A" * 17),))


def test_titles_bound_to_a_client_certificate() -> None:
    print_ = "AB:" * 31 + "CD"
    policy = AssociationPolicy(
        (
            AllowedCaller("CT1", certificate="ct1.example.org"),
            AllowedCaller("CT2", certificate=print_),
        )
    )
    ct1, ct2 = ("ct1.example.org", "00" * 32), ("other", "ab" * 31 + "cd")
    assert policy.allows("CT1", "10.0.0.1", ct1)
    assert not policy.allows("CT1", "10.0.0.1", ct2)
    assert not policy.allows("CT1", "10.0.0.1", None)
    assert policy.allows("CT2", "10.0.0.1", ct2)
    assert not policy.allows("CT2", "10.0.0.1", ct1)
