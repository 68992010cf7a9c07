"""Which addresses a tool may connect to: a host's addresses must all be public, unless private
ones are allowed. http_get and the MCP client share these rules."""

import ipaddress
import socket


def resolve(host, port, *, allow_private):
    """The host's addresses, to connect to those and no others: a second lookup at connect time
    could answer differently (DNS rebinding) and reach an internal service."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    refused = None if allow_private else first_private(addresses)
    if refused is not None:
        raise PermissionError(f"{host} resolves to {refused}, which is not a public address")
    return addresses


def first_private(addresses):
    """The first of `addresses` that is not public, or None."""
    return next((a for a in addresses if not public(ipaddress.ip_address(a))), None)


_IPV6_RESERVED = ipaddress.ip_network("::/8")  # IPv4-compatible and -translated, local NAT64
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits


def public(ip):
    """Whether `ip` reaches the public internet, judging an IPv4 address embedded in an IPv6
    one as that IPv4 address: `::ffff:127.0.0.1` or `64:ff9b::7f00:1` reach loopback."""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return public(ip.ipv4_mapped)
        if ip in _NAT64:
            return public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        # Python calls these global: the rest of ::/8 is reserved (the deprecated
        # IPv4-compatible ::a.b.c.d among it), fec0::/10 is the deprecated site-local range.
        if ip in _IPV6_RESERVED or ip.is_site_local:
            return False
        embedded = [ip.sixtofour] if ip.sixtofour is not None else list(ip.teredo or ())
        if not all(public(address) for address in embedded):
            return False
    # is_global is false for private, loopback, link-local, reserved and unspecified
    # addresses, but true for multicast ones.
    return ip.is_global and not ip.is_multicast
