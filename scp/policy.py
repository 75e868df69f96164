"""Association policy: which calling AE titles may connect, from where.

Checked during A-ASSOCIATE negotiation, so a refused peer gets a proper A-ASSOCIATE-RJ
(permanent, calling AE title not recognised; PS3.8 9.3.4) rather than a dropped connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from config import AllowedCaller

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class CallerRule:
    ae_title: str
    network: IPNetwork | None


class AssociationPolicy:
    """The allowlist: empty means any caller from anywhere."""

    def __init__(self, callers: Sequence[AllowedCaller]) -> None:
        rules = []
        for caller in callers:
            title = caller.ae_title.strip()
            if not title or len(title) > 16:
                raise ValueError(f"allowed caller AE title {caller.ae_title!r} is not 1-16 chars")
            network = ipaddress.ip_network(caller.network, strict=False) if caller.network else None
            rules.append(CallerRule(title, network))
        self.rules = tuple(rules)

    @property
    def is_open(self) -> bool:
        return not self.rules

    def allows(self, calling_ae: str, address: str) -> bool:
        if self.is_open:
            return True
        title = calling_ae.strip()
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for rule in self.rules:
            if rule.ae_title != title:
                continue
            if rule.network is None or (ip is not None and ip in rule.network):
                return True
        return False
