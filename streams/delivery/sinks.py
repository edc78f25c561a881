"""Which sinks the bus may deliver to: no server-side request forgery through a subscription.

A subscriber names a URL and the bus POSTs personal data there, with the sink's bearer
token; without a policy, a subscription pointing at `http://127.0.0.1:<port>`, a cloud
metadata address or an internal service turns the bus into a proxy into its own network.
`SinkPolicy` decides, from `delivery.allow_http` and `delivery.allowed_private_sinks`:

- the scheme: `https` only, unless `allow_http` (default: false in production mode, true in
  the demo and test modes);
- the address: only *global* unicast addresses; loopback, private (RFC 1918, unique local),
  link-local (cloud metadata at 169.254.169.254), shared (100.64/10), multicast,
  unspecified, reserved and documentation addresses are refused, in IPv4, IPv6 and their
  mapped and embedded forms (`::ffff:127.0.0.1`, 6to4, Teredo), unless an address falls in
  an `allowed_private_sinks` network (CIDRs for agreed internal endpoints; default none in
  production, loopback in the demo and test modes).

The address rule holds where the connection is made (`SinkPolicy.resolver`, used by every
session that connects to a sink), on the address DNS gave for that very connection, so a
name that resolves to a public address when the subscription is made and to an internal
one later (DNS rebinding) is refused then. A literal address in the URL is checked as the
URL is (`check_url`). Redirects are never followed (each POST sets `allow_redirects=False`).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from streams.config import Settings

__all__ = ["LOOPBACK", "SinkPolicy", "SinkRefused"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK: Final[tuple[IPNetwork, ...]] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


class SinkRefused(OSError):
    """A sink the policy does not allow; `code` is stable, `reason` names the rule (never
    the address: the client is told which rule, the operator's log has the sink)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def _embedded(addr: IPAddress) -> list[IPAddress]:
    """`addr` and the IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo)."""
    found: list[IPAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            found.append(addr.ipv4_mapped)
        if addr.sixtofour is not None:
            found.append(addr.sixtofour)
        if addr.teredo is not None:
            found.extend(addr.teredo)
        # ::a.b.c.d (IPv4-compatible, deprecated) and 64:ff9b::/96 (NAT64) carry one too
        if int(addr) >> 32 == 0 or addr in ipaddress.ip_network("64:ff9b::/96"):
            found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


@dataclass(frozen=True, slots=True)
class SinkPolicy:
    """What sinks may be: the scheme and the addresses connected to."""

    allow_http: bool = False
    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> SinkPolicy:
        """The configured policy; what is not configured follows `mode` (production:
        https only, no private addresses)."""
        delivery = settings.delivery
        strict = settings.mode == "production"
        allow_http = delivery.allow_http if delivery.allow_http is not None else not strict
        if delivery.allowed_private_sinks is not None:
            allowed = tuple(delivery.allowed_private_sinks)
        else:
            allowed = () if strict else LOOPBACK
        return cls(allow_http=allow_http, allowed=allowed)

    def check_address(self, host: str) -> None:
        """Refuse (`SinkRefused`) an address that is not a global unicast one, unless it is
        in an allowed network."""
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])  # no IPv6 zone
        except ValueError as exc:
            raise SinkRefused("sink_not_allowed", "the sink's address is no IP address") from exc
        candidates = _embedded(addr)
        if any(a in net for a in candidates for net in self.allowed if a.version == net.version):
            return
        for a in candidates:
            if a.is_multicast or not a.is_global:
                raise SinkRefused(
                    "sink_not_allowed",
                    "the sink's address is not public (loopback, private, link-local,"
                    " multicast, unspecified or reserved), and not an allowed internal sink",
                )

    def check_url(self, url: str) -> None:
        """Refuse a URL whose scheme is not allowed or whose host is a literal address
        that is not (names are checked where they are connected to: `resolver`)."""
        parts = urlsplit(url)
        if parts.scheme != "https" and not (self.allow_http and parts.scheme == "http"):
            raise SinkRefused("sink_not_allowed", "the sink must be an https URL")
        host = parts.hostname or ""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return  # a name
        self.check_address(host)

    def resolver(self) -> AbstractResolver:
        """An aiohttp resolver that refuses names resolving to an address not allowed."""
        return _PolicyResolver(self)

    def connector(self, **options: Any) -> aiohttp.TCPConnector:
        """A connector for sessions that connect to sinks."""
        return aiohttp.TCPConnector(resolver=self.resolver(), **options)


class _PolicyResolver(AbstractResolver):
    def __init__(self, policy: SinkPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            self._policy.check_address(result["host"])  # every one: any may be connected to
        return results

    async def close(self) -> None:
        await self._inner.close()
