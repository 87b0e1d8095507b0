"""The guard on URLs videoq itself calls (outbound webhooks): it refuses anything but http(s),
and hosts that are, or resolve to, loopback, private, link-local (cloud metadata), shared,
unspecified, multicast or otherwise non-global addresses, IPv6 addresses that embed such an
IPv4 address in any of the standard forms, and the cloud platform endpoints of
:data:`PLATFORM_ENDPOINTS`, unless an allow-listed network
(``settings.webhook_allowed_networks``) contains them. The caller connects to the address that
was checked (:func:`resolve_checked`), so DNS rebinding cannot swap in another.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from videoq.errors import UnsafeUrl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


#: Cloud platform endpoints (metadata, DNS, agents) on addresses that are otherwise public, or
#: that some Python versions call global: never a webhook's. Each with its source.
PLATFORM_ENDPOINTS: dict[str, str] = {
    # Azure's WireServer and DNS: "a virtual public IP address" (learn.microsoft.com, "What is
    # IP address 168.63.129.16?").
    "168.63.129.16/32": "Azure WireServer",
    # IBM Cloud's service network, public addresses reachable only from inside the platform
    # (cloud.ibm.com/docs/vpc, "service endpoints": 161.26.0.0/16).
    "161.26.0.0/16": "IBM Cloud service network",
    # Oracle Cloud's metadata service (docs.oracle.com, "Getting Instance Metadata"), in the
    # IETF protocol assignments block 192.0.0.0/24 (RFC 6890), which is not global anyway.
    "192.0.0.0/24": "IETF protocol assignments (Oracle Cloud metadata 192.0.0.192)",
    # AWS's IMDS on IPv6 (docs.aws.amazon.com, "instance metadata service endpoints"); a ULA,
    # listed for the record.
    "fd00:ec2::/32": "AWS instance metadata (IPv6)",
}
_PLATFORM = [ipaddress.ip_network(net) for net in PLATFORM_ENDPOINTS]

#: IPv6 forms that carry an IPv4 address in their last 32 bits, judged by that address: NAT64's
#: well-known prefix (RFC 6052), IPv4-translated (RFC 2765, ``::ffff:0:a.b.c.d``) and
#: IPv4-compatible (RFC 4291, deprecated, ``::a.b.c.d``).
_EMBEDS_IPV4_LOW = [
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("::ffff:0:0:0/96"),
    ipaddress.ip_network("::/96"),
]
#: IPv6 ranges that are not globally routable, though some Python versions call them global:
#: NAT64's local-use prefix (RFC 8215), whose IPv4 address can sit anywhere by its operator's
#: choice, and the deprecated site-local ``fec0::/10`` (RFC 3879).
_NOT_GLOBAL_V6 = [ipaddress.ip_network("64:ff9b:1::/48"), ipaddress.ip_network("fec0::/10")]


def parse_networks(values: Iterable[str]) -> list[IPNetwork]:
    """``settings.webhook_allowed_networks`` as networks (``10.0.0.0/8``, ``127.0.0.1``)."""
    return [ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip()]


def _judged(ip: IPAddress) -> list[IPAddress]:
    """The addresses that decide about ``ip``: an IPv6 address wrapping IPv4 ones (mapped,
    translated, compatible, 6to4, Teredo, NAT64) is whatever it wraps, and each must pass."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner: list[IPAddress] = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
        inner += list(ip.teredo or ())
        if any(ip in net for net in _EMBEDS_IPV4_LOW):
            inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if inner:
            return list(dict.fromkeys(inner))
    return [ip]


def address_refusal(ip: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why videoq must not connect to ``ip`` (e.g. "a loopback address"), or None when it may."""
    if any(ip in net for net in allowed if net.version == ip.version):
        return None
    if any(ip in net for net in _NOT_GLOBAL_V6 if net.version == ip.version):
        return "a private or reserved address"
    for inner in _judged(ip):
        if any(inner in net for net in allowed if net.version == inner.version):
            continue
        platform = next((n for n in _PLATFORM if n.version == inner.version and inner in n), None)
        if platform is not None:
            return f"a cloud platform endpoint ({PLATFORM_ENDPOINTS[str(platform)]})"
        if inner.is_loopback:
            return "a loopback address"
        if inner.is_unspecified:
            return "the unspecified address"
        if inner.is_link_local:
            return "a link-local address (where cloud metadata services live)"
        if inner.is_multicast:
            return "a multicast address"
        if inner.is_private or not inner.is_global:
            return "a private or reserved address"
    return None


@dataclass(frozen=True)
class Target:
    """A checked URL's parts: connect to ``address`` and present ``host`` (Host header, SNI)."""

    scheme: str
    host: str
    port: int
    address: str


def check_url(url: str, allowed: Sequence[IPNetwork] = ()) -> tuple[str, str, int]:
    """Static checks (no DNS): http(s), a host, no credentials, and an IP-literal host that is
    allowed. Returns ``(scheme, host, port)``; raises :class:`UnsafeUrl`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrl("only http and https URLs are allowed")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("credentials in the URL are not allowed; sign requests instead")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if host == "localhost" or host.endswith(".localhost"):
        literals: list[IPAddress] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    else:
        literals = [literal] if literal is not None else []
    for ip in literals:
        reason = address_refusal(ip, allowed)
        if reason:
            raise UnsafeUrl(f"refused: {ip} is {reason}")
    return scheme, host, port or (443 if scheme == "https" else 80)


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses, from the system resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_checked(
    url: str, allowed: Sequence[IPNetwork] = (), resolver: Resolver = system_resolver
) -> Target:
    """Check ``url`` and resolve its host; every address must pass (a name with one private
    address among public ones is refused). The caller connects to the returned address, so a
    second resolution (DNS rebinding) cannot swap in another."""
    scheme, host, port = check_url(url, allowed)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            found = await resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise LookupError(f"cannot resolve {host}: {exc}") from None
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
    if not addresses:
        raise LookupError(f"{host} has no address")
    for ip in addresses:
        reason = address_refusal(ip, allowed)
        if reason:
            raise UnsafeUrl(f"refused: {host} resolves to {ip}, {reason}")
    return Target(scheme, host, port, str(addresses[0]))


def refusal(url: str, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """For validators: why ``url`` is refused by the static checks, or None."""
    try:
        check_url(url, allowed)
    except UnsafeUrl as exc:
        return str(exc)
    return None
