"""Listening sockets: a wildcard address means every address family.

A node bound to ``0.0.0.0`` advertises whatever address its Serf agent
picked, and on a machine whose main address is IPv6 that is an IPv6
address: an IPv4-only listener would then be unreachable at its own
advertised address.  So a wildcard host (``0.0.0.0``, ``::`` or empty)
listens on IPv4 and, where the kernel has it, IPv6 too, on the same port.
"""

from __future__ import annotations

import socket

WILDCARDS = ("", "0.0.0.0", "::")


def is_wildcard(host: str) -> bool:
    return host in WILDCARDS


def _bound(family: int, addr: tuple, v6only: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound (not yet listening) TCP sockets for ``host:port``."""
    if not is_wildcard(host):
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        return [_bound(family, addr)]
    first = _bound(socket.AF_INET, ("0.0.0.0", port))
    port = first.getsockname()[1]
    socks = [first]
    if socket.has_ipv6:
        try:
            socks.append(_bound(socket.AF_INET6, ("::", port), v6only=True))
        except OSError:
            pass  # no IPv6 on this machine: IPv4 alone
    return socks
