"""Association policy: which calling AE titles may connect, from where.

pynetdicom checks calling AE titles (``require_calling_aet``) but cannot bind a title to an
address. ``PolicyACSE`` adds that check where the standard puts it, in A-ASSOCIATE
negotiation, so a refused peer gets a proper A-ASSOCIATE-RJ (permanent, calling AE title not
recognised; PS3.8 9.3.4) rather than a dropped connection.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pynetdicom.acse
import pynetdicom.association
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from config import AllowedCaller

log = logging.getLogger(__name__)

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


class PolicyACSE(ACSE):
    """ACSE that consults the acceptor AE's ``policy`` (if it has one) before negotiating."""

    def _negotiate_as_acceptor(self) -> None:
        policy = getattr(self.assoc.ae, "policy", None)
        if isinstance(policy, AssociationPolicy):
            request = self.requestor.primitive
            calling = str(request.calling_ae_title) if request is not None else ""
            address = str(self.assoc.requestor.address)
            if not policy.allows(calling, address):
                log.warning(
                    "association from %s refused: calling AE title not allowed from there",
                    address,
                    extra={"cid": getattr(self.assoc, "ctnode_cid", "-")},
                )
                self.send_reject(0x01, 0x01, 0x03)
                evt.trigger(self.assoc, evt.EVT_REJECTED, {})
                self.assoc.kill()
                return
        super()._negotiate_as_acceptor()


def negotiate_preferring_requestor(
    rq_contexts: list[PresentationContext],
    ac_contexts: list[PresentationContext],
    roles: Any = None,
) -> tuple[list[PresentationContext], list[Any]]:
    """Presentation context negotiation (PS3.8 9.3.2.2) where, among the transfer syntaxes
    both sides support, the requestor's first choice wins.

    pynetdicom picks by the acceptor's order; a sender proposes its file's own syntax first,
    so honouring its order is what lets the node store the bytes exactly as they were kept
    at the source instead of a re-encoding (storescu would convert Explicit to Implicit VR).
    """
    supported = {cx.abstract_syntax: cx for cx in ac_contexts}
    results: list[PresentationContext] = []
    replies: dict[str, Any] = {}
    for rq in rq_contexts:
        ours = supported.get(rq.abstract_syntax)
        candidates = ac_contexts
        if ours is not None:
            preferred: list[str | bytes | UID] = [
                ts for ts in rq.transfer_syntax if ts in ours.transfer_syntax
            ]
            ordered = PresentationContext()
            ordered.abstract_syntax = ours.abstract_syntax
            ordered.transfer_syntax = preferred + [
                ts for ts in ours.transfer_syntax if ts not in preferred
            ]
            ordered.scu_role, ordered.scp_role = ours.scu_role, ours.scp_role
            candidates = [ordered]
        accepted, reply_roles = negotiate_as_acceptor([rq], candidates, roles)
        results += accepted
        for role in reply_roles:
            replies[str(role.sop_class_uid)] = role
    results.sort(key=lambda cx: cx.context_id or 0)
    return results, [replies[uid] for uid in sorted(replies)]


def install() -> None:
    """Make new associations use ``PolicyACSE`` (inert for AEs without a policy) and the
    requestor-preferring transfer syntax negotiation."""
    pynetdicom.association.ACSE = PolicyACSE  # type: ignore[attr-defined]
    pynetdicom.acse.negotiate_as_acceptor = negotiate_preferring_requestor  # type: ignore[attr-defined]
