"""Parsing of addresses given on the command line.

Everything here is pure (no IO) and raises :class:`~oklog.errors.ConfigError`
with a one-line message naming the bad value.  Addresses follow OK Log:
``host``, ``host:port``, ``:port``, ``tcp://host[:port]``, IPv6 as
``[::1]:port`` (or a bare ``::1``).
"""

from __future__ import annotations

import ipaddress
import re

from oklog.errors import ConfigError

__all__ = ["WILDCARDS", "api_url", "is_wildcard", "join_host_port", "parse_addr", "split_addr"]

#: Hosts that mean "every address of this machine" when listening.
WILDCARDS = ("", "0.0.0.0", "::")


def is_wildcard(host: str) -> bool:
    """Whether ``host`` (without brackets) listens on every address."""
    return host.strip("[]") in WILDCARDS

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$")


def _is_ipv6(s: str) -> bool:
    try:
        ipaddress.IPv6Address(s.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _port(value: str, original: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise ConfigError(f"{original!r}: invalid port {value!r}")
    port = int(value)
    if port > 65535:
        raise ConfigError(f"{original!r}: port {port} out of range 0-65535")
    return port


def split_addr(s: str) -> tuple[str | None, str | None, int | None]:
    """Split an address into ``(scheme, host, port)``; absent parts are None.

    The scheme is lower-cased; an IPv6 host is returned without brackets.
    ``":7650"`` gives ``(None, None, 7650)``.  Only the shape is checked here;
    callers decide which schemes they accept and what the defaults are.
    """
    original = s
    s = s.strip()
    if not s:
        raise ConfigError("empty address")
    scheme: str | None = None
    m = _SCHEME.match(s)
    if m:
        scheme, s = m.group(1).lower(), m.group(2)
        if s.endswith("/"):
            s = s[:-1]
        if not s:
            raise ConfigError(f"{original!r}: address has no host or port")
    if "/" in s or "@" in s or "?" in s or "#" in s or any(c.isspace() for c in s):
        raise ConfigError(f"{original!r}: unsupported address format")

    host: str | None
    port: int | None = None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ConfigError(f"{original!r}: missing ']' in IPv6 address")
        host, rest = s[1:end], s[end + 1 :]
        if not _is_ipv6(host):
            raise ConfigError(f"{original!r}: {host!r} is not an IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{original!r}: unsupported address format")
            port = _port(rest[1:], original)
    elif s.count(":") > 1:
        if not _is_ipv6(s):
            raise ConfigError(f"{original!r}: unsupported address format")
        host = s
    else:
        host, sep, port_s = s.partition(":")
        if sep:
            port = _port(port_s, original)
        if host and not _HOSTNAME.match(host):
            raise ConfigError(f"{original!r}: invalid host {host!r}")
    return scheme, (host or None), port


def parse_addr(s: str, default_port: int, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """Parse a listen/connect address into ``(host, port)``.

    Accepts ``host``, ``host:port``, ``:port``, ``tcp://host[:port]``,
    ``[::1]:port``.  A missing host is ``default_host``, a missing port
    ``default_port``.
    """
    scheme, host, port = split_addr(s)
    if scheme not in (None, "tcp"):
        raise ConfigError(f"{s!r}: unsupported scheme {scheme!r} (use tcp://host:port)")
    return (host or default_host, default_port if port is None else port)


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


_UNSPECIFIED = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def api_url(s: str, default_port: int = 7650) -> str:
    """Base URL (no trailing slash) of a node's HTTP API.

    ``localhost`` → ``http://localhost:7650``; ``tcp://h:p`` and ``h:p`` →
    ``http://h:p``; ``http://`` and ``https://`` URLs keep their scheme.  A
    listen-everywhere host (``0.0.0.0``, ``::``) becomes loopback.
    """
    scheme, host, port = split_addr(s)
    if scheme in (None, "tcp"):
        scheme = "http"
    elif scheme not in ("http", "https"):
        raise ConfigError(f"{s!r}: unsupported scheme {scheme!r} (use host:port or http://host:port)")
    host = host or "127.0.0.1"
    host = _UNSPECIFIED.get(host, host)
    if port is None:
        port = default_port
    return f"{scheme}://{join_host_port(host, port)}"
