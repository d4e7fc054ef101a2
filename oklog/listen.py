"""Listening sockets: a wildcard address means every address family.

A node bound to ``0.0.0.0`` advertises whatever address its Serf agent
picked, and on a machine whose main address is IPv6 that is an IPv6
address: an IPv4-only listener would then be unreachable at its own
advertised address.  So a wildcard host (``0.0.0.0``, ``::`` or empty)
listens on IPv4 and, where the kernel has it, IPv6 too, on the same port.

A socket that cannot be bound raises ``ListenError`` naming the flag and
the address (``-api 127.0.0.1:7650: address already in use``): the one
place ``bind`` errors become messages an operator can act on.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

import trio

from .addr import is_wildcard, join_host_port
from .errors import ListenError


def _error(what: str, host: str, port: int, exc: OSError) -> ListenError:
    where = join_host_port(host or "0.0.0.0", port)
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = "no such address on this machine"
    elif exc.errno == errno.EACCES:
        reason = "permission denied (a port below 1024 needs root)"
    else:
        reason = exc.strerror or str(exc)
    return ListenError(f"{what} {where}: {reason}".strip())


def _bound(family: int, addr: tuple, v6only: bool = False, kind: int = socket.SOCK_STREAM) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:  # (for UDP it would let two sockets share a port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def _sockets(host: str, port: int, kind: int) -> list[socket.socket]:
    if not is_wildcard(host):
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=kind)[0]
        return [_bound(family, addr, kind=kind)]
    first = _bound(socket.AF_INET, ("0.0.0.0", port), kind=kind)
    port = first.getsockname()[1]
    socks = [first]
    if socket.has_ipv6:
        try:
            socks.append(_bound(socket.AF_INET6, ("::", port), v6only=True, kind=kind))
        except OSError:
            pass  # no IPv6 on this machine: IPv4 alone
    return socks


def tcp_sockets(host: str, port: int, what: str = "") -> list[socket.socket]:
    """Bound (not yet listening) TCP sockets for ``host:port``.

    ``what`` names the listener in errors (e.g. the flag, ``-api``).
    """
    try:
        return _sockets(host, port, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ListenError(f"{what} {join_host_port(host, port)}: {exc.strerror}".strip()) from None
    except OSError as exc:
        raise _error(what, host, port, exc) from None


async def open_tcp_listeners(host: str, port: int, what: str = "") -> list[trio.SocketListener]:
    """Listening trio sockets for ``host:port`` (see :func:`tcp_sockets`)."""
    listeners = []
    for sock in tcp_sockets(host, port, what):
        sock.listen(socket.SOMAXCONN)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
    return listeners


def check_free(host: str, port: int, what: str = "") -> None:
    """Raise ``ListenError`` unless both TCP and UDP ``host:port`` can be
    bound now (what a Serf agent needs: it reports a busy port only in its
    own log)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        try:
            for sock in _sockets(host, port, kind):
                sock.close()
        except socket.gaierror as exc:
            raise ListenError(f"{what} {join_host_port(host, port)}: {exc.strerror}".strip()) from None
        except OSError as exc:
            raise _error(what, host, port, exc) from None


def reset_on_close(stream: Any) -> None:
    """Make an accepted connection's coming close a TCP reset, not a FIN
    (``SO_LINGER`` 0): the peer cannot take it for "read everything".  A
    stream that is not a plain ``trio.SocketStream`` is left alone."""
    if isinstance(stream, trio.SocketStream):
        try:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
