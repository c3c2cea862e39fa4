"""The address guard of ``?source=`` downloads (docs/security.md#source-urls)."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import resource, server, util
from zope.interface import implementer

from imageserver import addresses
from tests.support import WINE_HASH, ServerTestCase, SourceServer, fixture


class BlockTableTests(SynchronousTestCase):
    def test_blocked(self) -> None:
        for address in [
            "127.0.0.1", "127.9.9.9", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
            "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "240.0.0.1", "192.0.2.1",
            "::1", "::", "fe80::1", "fc00::1", "ff02::1",
            "::ffff:127.0.0.1", "::ffff:10.0.0.1",  # IPv4-mapped
            "::7f00:1", "::a00:1",  # IPv4-compatible
            "2002:7f00:1::", "2002:a00:1::",  # 6to4
            "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64
        ]:  # fmt: skip
            self.assertTrue(addresses.is_blocked(ipaddress.ip_address(address)), address)

    def test_translation_prefixes_are_refused_whole(self) -> None:
        """Local-use NAT64, SIIT and Teredo addresses: refused whatever they embed, a public
        IPv4 address (8.8.8.8 here) included, since a translator decides where they lead."""
        for address in [
            "64:ff9b:1::7f00:1", "64:ff9b:1:7f00:1::", "64:ff9b:1::a9fe:a9fe",  # local-use NAT64
            "64:ff9b:1::808:808", "64:ff9b:1:808:8:800::", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
            "::ffff:0:7f00:1", "::ffff:0:a00:1", "::ffff:0:808:808",  # SIIT
            "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
            "2001:0:808:808:8000:63bf:f7f7:f7f7",  # Teredo, server and client 8.8.8.8
        ]:  # fmt: skip
            self.assertTrue(addresses.is_blocked(ipaddress.ip_address(address)), address)

    def test_public(self) -> None:
        for address in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8",
                        "2002:808:808::", "64:ff9b::808:808"]:  # fmt: skip
            self.assertFalse(addresses.is_blocked(ipaddress.ip_address(address)), address)

    def test_answers_are_booleans(self) -> None:
        """``is_blocked`` says True or False, never a falsy stand-in, on every path through it."""
        for address, blocked in [
            ("8.8.8.8", False), ("10.0.0.1", True), ("2606:4700::1111", False), ("::1", True),
            ("64:ff9b:1::808:808", True), ("::ffff:10.0.0.1", True), ("::ffff:8.8.8.8", False),
        ]:  # fmt: skip
            self.assertIs(addresses.is_blocked(ipaddress.ip_address(address)), blocked, address)

    def test_embedded_ipv4(self) -> None:
        """The IPv4 address each embedding form carries, and None where there is none."""
        for address, inner in [
            ("::ffff:1.2.3.4", "1.2.3.4"),  # mapped
            ("2002:102:304::", "1.2.3.4"),  # 6to4
            ("2002:102:304:5::6", "1.2.3.4"),
            ("64:ff9b::102:304", "1.2.3.4"),  # NAT64
            ("64:ff9b::ffff:ffff", "255.255.255.255"),
            ("::102:304", "1.2.3.4"),  # IPv4-compatible
            ("::2", "0.0.0.2"),  # the smallest compatible form: ::1 and :: are not one
            ("::1", None),
            ("::", None),
            ("2606:4700::1111", None),
            ("fe80::1", None),
        ]:
            embedded = addresses.embedded_ipv4(ipaddress.IPv6Address(address))
            self.assertEqual(embedded, inner and ipaddress.IPv4Address(inner), address)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class MapResolver:
    """Names to chosen addresses, so tests try every range without leaving the machine."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def resolveHostName(
        self, receiver: Any, hostName: str, portNumber: int = 0, *args: Any, **kw: Any
    ) -> Any:
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        address = self.table.get(hostName, hostName)  # an IP literal stands for itself
        try:
            version = ipaddress.ip_address(address).version
        except ValueError:
            pass
        else:
            kind = IPv4Address if version == 4 else IPv6Address
            receiver.addressResolved(kind("TCP", address, portNumber))
        receiver.resolutionComplete()
        return resolution


class GuardTests(ServerTestCase):
    async def start_guarded(self, names: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        await self.start_server(allow_private_sources=False)
        guarded = self.server.engine.source_reactor
        assert guarded is not None
        if names is not None:
            guarded.nameResolver._resolver = MapResolver(names)

    async def assert_refused(self, url: str, shown: str) -> None:  # type: ignore[override]
        response = await self.upload(b"{}", query=f"?source={url}")
        self.assert_error(response, 404, f"Unable to download image: {url}, refused: {shown} is")
        self.assertEqual(self.store_files(), [])
        self.assert_no_partial_files()

    async def test_loopback_literal_is_refused_before_connecting(self) -> None:
        await self.start_guarded()
        source = SourceServer(self)
        url = source.serve("/wine.jpg", fixture("wine.jpg"))
        await self.assert_refused(url, "127.0.0.1")
        self.assertEqual(source.requests, [])

    async def test_names_that_resolve_inside(self) -> None:
        await self.start_guarded(
            {"metadata.test": "169.254.169.254", "lan.test": "10.1.2.3", "cgnat.test": "100.64.1.1"}
        )
        for name in ("metadata.test", "lan.test", "cgnat.test"):
            await self.assert_refused(f"http://{name}/latest/meta-data", name)

    async def test_every_redirect_hop_is_checked(self) -> None:
        """A public name whose server redirects inside: the second hop is refused."""
        inside = SourceServer(self)
        secret = inside.serve("/secret.jpg", fixture("wine.jpg"))
        hop = resource.Resource()
        hop.putChild(b"go", util.Redirect(secret.encode()))
        port = reactor.listenTCP(0, server.Site(hop), interface="127.0.0.2")
        self.addCleanup(port.stopListening)
        # Only 127.0.0.2 counts as "public" here: the first hop passes, the redirect target not.
        self.patch(addresses, "is_blocked", lambda ip: str(ip) != "127.0.0.2")
        await self.start_guarded({"public.test": "127.0.0.2"})
        url = f"http://public.test:{port.getHost().port}/go"
        response = await self.upload(b"{}", query=f"?source={url}")
        self.assert_error(
            response, 404, f"Unable to download image: {url}, refused: 127.0.0.1 is 127.0.0.1"
        )
        self.assertEqual(inside.requests, [])

    async def test_translation_prefixes_are_refused_before_connecting(self) -> None:
        """Local-use NAT64 and SIIT addresses, as names resolve to them and as literals, are
        refused without a connection, even those embedding a public address.  The reactor here
        carries every IPv6 connection to a source on 127.0.0.1, as a translator on the path
        could: a connection let through would be served."""
        source = SourceServer(self)
        source.serve("/wine.jpg", fixture("wine.jpg"))
        port = source.base.rpartition(":")[2]
        inside = {
            "nat64.test": "64:ff9b:1::7f00:1",
            "nat64-48.test": "64:ff9b:1:7f00:1::",
            "nat64-public.test": "64:ff9b:1::808:808",
            "siit.test": "::ffff:0:7f00:1",
            "siit-public.test": "::ffff:0:808:808",
        }
        await self.start_guarded(inside)
        translator = Translator(self.server.engine.source_reactor._reactor, int(port))
        self.patch(self.server.engine.source_reactor, "_reactor", translator)
        for name, address in inside.items():
            await self.assert_refused(f"http://{name}:{port}/wine.jpg", name)
            await self.assert_refused(f"http://[{address}]:{port}/wine.jpg", address)
        self.assertEqual((translator.attempts, source.requests), ([], []))

    async def test_internationalised_name_is_checked_in_its_idna_form(self) -> None:
        """The guard checks the name in the IDNA form it is resolved in, and its refusal names
        that form."""
        await self.start_guarded({"xn--bcher-kva.test": "10.1.2.3"})
        await self.assert_refused("http://bücher.test/wine.jpg", "xn--bcher-kva.test")

    async def test_internationalised_name_is_fetched(self) -> None:
        """With the guard lifted, a name outside ASCII is resolved and sent in its IDNA form,
        and a path outside ASCII percent-encoded."""
        previous = reactor.installNameResolver(MapResolver({"xn--bcher-kva.test": "127.0.0.1"}))
        self.addCleanup(reactor.installNameResolver, previous)
        await self.start_server(allow_private_sources=True)
        source = SourceServer(self)
        port = source.base.rpartition(":")[2]
        source.serve("/wei%C3%9F.jpg", fixture("wine.jpg"))
        response = await self.upload(b"{}", query=f"?source=http://bücher.test:{port}/weiß.jpg")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["hash"], WINE_HASH)
        [sent] = source.requests
        self.assertEqual(sent.getHeader(b"Host"), f"xn--bcher-kva.test:{port}".encode())

    async def test_allow_private_sources_lifts_the_guard(self) -> None:
        await self.start_server(allow_private_sources=True)
        url = SourceServer(self).serve("/wine.jpg", fixture("wine.jpg"))
        response = await self.upload(b"{}", query=f"?source={url}")
        self.assertEqual(response.code, 200)


class Translator:
    """The reactor behind a NAT64 or SIIT translator that leads to ``port`` on 127.0.0.1: every
    IPv6 connection arrives there, and is recorded."""

    def __init__(self, reactor: Any, port: int) -> None:
        self._reactor = reactor
        self._port = port
        self.attempts: list[str] = []

    def connectTCP(self, host: str, port: int, factory: Any, *args: Any, **kwargs: Any) -> Any:
        if ":" in host:
            self.attempts.append(host)
            host, port = "127.0.0.1", self._port
        return self._reactor.connectTCP(host, port, factory, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class MemoryTests(SynchronousTestCase):
    def test_refusals_remembered_are_bounded(self) -> None:
        guard = addresses.GuardedResolver(MapResolver({}))
        for index in range(addresses.GuardedResolver.REMEMBERED + 50):
            guard.refuse(f"name{index}.test", "10.0.0.1")
        self.assertEqual(len(guard.refused), addresses.GuardedResolver.REMEMBERED)
        self.assertNotIn("name0.test", guard.refused)

    def test_a_name_refused_again_is_the_newest(self) -> None:
        """A name refused again moves to the young end, so a name refused on every request is
        never forgotten while names refused once go by; its latest address is kept."""
        guard = addresses.GuardedResolver(MapResolver({}))
        remembered = addresses.GuardedResolver.REMEMBERED
        for index in range(remembered):
            guard.refuse(f"name{index}.test", "10.0.0.1")
        guard.refuse("name0.test", "10.0.0.2")
        guard.refuse("new.test", "10.0.0.3")
        self.assertEqual(len(guard.refused), remembered)
        self.assertEqual(guard.refused["name0.test"], "10.0.0.2")
        self.assertNotIn("name1.test", guard.refused)
        self.assertEqual(list(guard.refused)[-2:], ["name0.test", "new.test"])


@implementer(IHostnameResolver)
class ListResolver:
    """Answers every name with the given addresses (IPv6 ones may carry a zone), recording the
    arguments it was asked with."""

    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts
        self.calls: list[tuple[Any, ...]] = []
        self.resolution = _Resolution("")

    def resolveHostName(
        self,
        receiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.calls.append((hostName, portNumber, addressTypes, transportSemantics))
        receiver.resolutionBegan(self.resolution)
        for host in self.hosts:
            kind = IPv6Address if ":" in host else IPv4Address
            receiver.addressResolved(kind("TCP", host, portNumber))
        receiver.resolutionComplete()
        return self.resolution


@implementer(IResolutionReceiver)
class _Everything:
    """Every call a resolution made, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        self.calls.append(("began", resolution))

    def addressResolved(self, address: IAddress) -> None:
        self.calls.append(("address", address))

    def resolutionComplete(self) -> None:
        self.calls.append(("complete", None))


class ResolverTests(SynchronousTestCase):
    """`GuardedResolver` as a resolver: what passes through it unchanged, and what it drops."""

    def resolve(
        self, *hosts: str, **arguments: Any
    ) -> tuple[addresses.GuardedResolver, ListResolver, _Everything, IHostResolution]:
        inner = ListResolver(*hosts)
        guard = addresses.GuardedResolver(inner)
        receiver = _Everything()
        resolution = guard.resolveHostName(receiver, "host.test", **arguments)
        return guard, inner, receiver, resolution

    def test_public_addresses_pass_unchanged_and_in_order(self) -> None:
        guard, inner, receiver, resolution = self.resolve(
            "93.184.216.34", "10.0.0.1", "2606:4700::1111", "::1", portNumber=443
        )
        self.assertIs(resolution, inner.resolution)
        [began, first, second, complete] = receiver.calls
        self.assertEqual(began, ("began", inner.resolution))
        self.assertEqual(first, ("address", IPv4Address("TCP", "93.184.216.34", 443)))
        self.assertEqual(second, ("address", IPv6Address("TCP", "2606:4700::1111", 443)))
        self.assertEqual(complete, ("complete", None))
        # The last refused address is the one a refusal names.
        self.assertEqual(guard.refused, {"host.test": "::1"})

    def test_arguments_reach_the_resolver(self) -> None:
        """The guard adds nothing and drops nothing on the way in: IHostnameResolver's defaults
        when none are given, the caller's otherwise."""
        _guard, inner, _receiver, _resolution = self.resolve()
        self.assertEqual(inner.calls, [("host.test", 0, None, "TCP")])
        _guard, inner, _receiver, _resolution = self.resolve(
            portNumber=80, addressTypes=[IPv4Address], transportSemantics="UDP"
        )
        self.assertEqual(inner.calls, [("host.test", 80, [IPv4Address], "UDP")])

    def test_ipv6_zones(self) -> None:
        """A link-local address with a zone (``fe80::1%eth0``, as getaddrinfo gives it) is
        refused, and the refusal names the address without the zone; a public address with a
        zone passes as it came."""
        guard, _inner, receiver, _resolution = self.resolve("fe80::1%eth0", "fe80::2%2")
        self.assertEqual([kind for kind, _ in receiver.calls], ["began", "complete"])
        self.assertEqual(guard.refused, {"host.test": "fe80::2"})
        guard, _inner, receiver, _resolution = self.resolve("2606:4700::1111%eth0", portNumber=80)
        self.assertEqual(
            receiver.calls[1], ("address", IPv6Address("TCP", "2606:4700::1111%eth0", 80))
        )
        self.assertEqual(guard.refused, {})

    def test_guarded_reactor(self) -> None:
        """The reactor an `Agent` gets: names resolve through the guard, everything else is the
        reactor's own."""

        class Reactor:
            nameResolver = ListResolver("10.0.0.1")

            def seconds(self) -> float:
                return 42.0

        real = Reactor()
        guarded = addresses.GuardedReactor(real)
        self.assertIsInstance(guarded.nameResolver, addresses.GuardedResolver)
        self.assertEqual(guarded.seconds(), 42.0)
        receiver = _Everything()
        guarded.nameResolver.resolveHostName(receiver, "lan.test")
        self.assertEqual(Reactor.nameResolver.calls, [("lan.test", 0, None, "TCP")])
        self.assertEqual(guarded.nameResolver.refused, {"lan.test": "10.0.0.1"})


@implementer(IResolutionReceiver)
class _Addresses:
    """What a resolution delivered."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.complete = False

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        assert isinstance(address, IPv4Address)
        self.hosts.append(address.host)

    def resolutionComplete(self) -> None:
        self.complete = True


class RebindingTests(SynchronousTestCase):
    def test_every_resolution_is_checked_again(self) -> None:
        """A name that answers public, then inside (DNS rebinding): the guard keeps no verdict,
        so the second answer -- the one a second connection would use -- is dropped."""
        names = MapResolver({"rebind.test": "93.184.216.34"})
        guard = addresses.GuardedResolver(names)
        first, second = _Addresses(), _Addresses()
        guard.resolveHostName(first, "rebind.test", 80)
        names.table["rebind.test"] = "127.0.0.1"
        guard.resolveHostName(second, "rebind.test", 80)
        self.assertEqual((first.hosts, first.complete), (["93.184.216.34"], True))
        self.assertEqual((second.hosts, second.complete), ([], True))
        self.assertEqual(guard.refused, {"rebind.test": "127.0.0.1"})
