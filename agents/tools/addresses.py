"""Which addresses a tool may connect to: a host's addresses must all be public, unless private
ones are allowed. http_get, the MCP client and webhook deliveries share these rules, and
http_get and webhooks share the connection that dials only the addresses checked."""

import contextlib
import http.client
import ipaddress
import socket
import ssl
import time


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


def pinned_connection(scheme, host, port, addresses, *, deadline):
    """An HTTP(S) connection to `host` that dials only `addresses` (what resolve() checked),
    checks TLS against `host`, gives up connecting at `deadline` (time.monotonic()), and that
    another thread can end at once with abort(), whatever it is blocked on."""
    kind = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    return kind(host, port, addresses, deadline=deadline)


def _connect(addresses, port, deadline):
    # Only ever the addresses resolve() checked: a second lookup could answer otherwise.
    error = OSError("no addresses to connect to")
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            return socket.create_connection((address, port), remaining)
        except OSError as exc:
            error = exc
    raise error


class _Abortable:
    """A connection that another thread can end at once, whatever it is blocked on."""

    aborted = False

    def abort(self):
        self.aborted = True
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                # socket.socket's own shutdown, on a TLS socket too: SSLSocket.shutdown drops
                # its SSL object under the thread that is reading
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _dial(self):
        self.sock = _connect(self.addresses, self.port, self.deadline)
        if self.aborted:  # abort() ran while the socket was being made
            raise TimeoutError("aborted")
        return self.sock


class _PinnedHTTPConnection(_Abortable, http.client.HTTPConnection):
    def __init__(self, host, port, addresses, *, deadline):
        super().__init__(host, port)
        self.addresses, self.deadline = addresses, deadline

    def connect(self):
        self._dial()


class _PinnedHTTPSConnection(_Abortable, http.client.HTTPSConnection):
    def __init__(self, host, port, addresses, *, deadline):
        self.tls = ssl.create_default_context()
        super().__init__(host, port, context=self.tls)
        self.addresses, self.deadline = addresses, deadline

    def connect(self):
        sock = self._dial()  # as self.sock, so that abort() can end the handshake too
        try:
            # The certificate must match the host name in the URL, not the address dialled.
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
