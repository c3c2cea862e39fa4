"""The address guard of source downloads (docs/security.md): no ``?source=`` URL reaches inside.

Checked at connect time, on the addresses a name resolves to, by wrapping the reactor's name
resolver (as synapse does): a name that resolves inside is refused, and DNS rebinding gains nothing,
because the addresses checked are the ones connected to.  Redirects resolve through the same
resolver, so every hop is checked.  IP literals go through the resolver too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
    IResolutionReceiver,
)
from zope.interface import implementer

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")

# Translation prefixes refused whole, whatever IPv4 address they seem to embed: a translator on
# the server's own network decides where they lead.  The local-use NAT64 prefix is laid out as
# each operator chooses (the IPv4 address may follow the first 48, 56, 64 or 96 bits), and SIIT
# translators may map IPv4-translated addresses by a table of their own, so reading an IPv4
# address out of them proves nothing.  (Teredo's 2001::/32 needs no entry: the standard library
# already counts it as not global.)
_TRANSLATED = (
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64
    ipaddress.ip_network("::ffff:0:0:0/96"),  # SIIT, IPv4-translated
)

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside a mapped, 6to4, NAT64 or IPv4-compatible IPv6 address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_blocked(address: IP) -> bool:
    """Whether a download may not connect to ``address``: anything that is not a public unicast
    address (loopback, private, link-local, CGNAT, unspecified, reserved, documentation,
    multicast), directly or embedded in IPv6, and every address of a translation prefix whose
    embedding cannot be trusted."""
    if not address.is_global or address.is_multicast:
        return True
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in prefix for prefix in _TRANSLATED):
            return True
        inner = embedded_ipv4(address)
        return inner is not None and is_blocked(inner)
    return False


@implementer(IHostnameResolver)
class GuardedResolver:
    """Resolves through ``resolver`` and drops every blocked address; remembers what it dropped,
    so a refusal can say why."""

    # Refusals remembered for error messages; the oldest go first, so names chosen by clients
    # cannot grow this without bound.
    REMEMBERED = 1000

    def __init__(self, resolver: IHostnameResolver) -> None:
        self._resolver = resolver
        self.refused: dict[str, str] = {}

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        guard = self

        @implementer(IResolutionReceiver)
        class _Filter:
            def resolutionBegan(self, resolution: IHostResolution) -> None:
                resolutionReceiver.resolutionBegan(resolution)

            def addressResolved(self, address: IAddress) -> None:
                assert isinstance(address, IPv4Address | IPv6Address)
                host = address.host.split("%", 1)[0]  # drop an IPv6 zone
                if is_blocked(ipaddress.ip_address(host)):
                    guard.refuse(hostName, host)
                else:
                    resolutionReceiver.addressResolved(address)

            def resolutionComplete(self) -> None:
                resolutionReceiver.resolutionComplete()

        resolution: IHostResolution = self._resolver.resolveHostName(
            _Filter(), hostName, portNumber, addressTypes, transportSemantics
        )
        return resolution

    def refuse(self, name: str, address: str) -> None:
        self.refused.pop(name, None)
        self.refused[name] = address
        while len(self.refused) > self.REMEMBERED:
            del self.refused[next(iter(self.refused))]


@implementer(IReactorPluggableNameResolver, IReactorTCP, IReactorTime)
class GuardedReactor:
    """The reactor, but resolving names through a `GuardedResolver` (what an `Agent` is given)."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.nameResolver = GuardedResolver(reactor.nameResolver)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
