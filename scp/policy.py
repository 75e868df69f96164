"""Association policy: which calling AE titles may connect, from where, with which TLS
client certificate.

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
    certificate: str = ""

    def matches(self, identity: tuple[str, str] | None) -> bool:
        """Whether the client certificate (subject CN, SHA-256 hex) is the bound one."""
        if not self.certificate:
            return True
        if identity is None:
            return False
        cn, fingerprint = identity
        return self.certificate in (cn, fingerprint)


def _certificate(value: str) -> str:
    """A fingerprint normalised to lower-case hex without colons; a CN as given."""
    bare = value.strip().replace(":", "").lower()
    if len(bare) == 64 and all(c in "0123456789abcdef" for c in bare):
        return bare
    return value.strip()


class AssociationPolicy:
    """The allowlist: empty means any caller from anywhere."""

    def __init__(self, callers: Sequence[AllowedCaller]) -> None:
        rules = []
        for caller in callers:
            title = caller.ae_title.strip()
            if not title or len(title) > 16:
                raise ValueError(f"allowed caller AE title {caller.ae_title!r} is not 1-16 chars")
            network = ipaddress.ip_network(caller.network, strict=False) if caller.network else None
            rules.append(CallerRule(title, network, _certificate(caller.certificate)))
        self.rules = tuple(rules)

    @property
    def is_open(self) -> bool:
        return not self.rules

    def allows(
        self, calling_ae: str, address: str, identity: tuple[str, str] | None = None
    ) -> bool:
        """Whether a rule admits the caller; ``identity`` is the verified client
        certificate's (subject CN, SHA-256 fingerprint), None without one."""
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
            if rule.network is not None and (ip is None or ip not in rule.network):
                continue
            if rule.matches(identity):
                return True
        return False
