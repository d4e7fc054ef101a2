"""Parsing of command-line values: addresses, durations and sizes.

Everything here is pure (no IO) and raises :class:`~oklog.errors.ConfigError`
with a one-line message naming the bad value.

Addresses follow OK Log: ``host``, ``host:port``, ``:port``,
``tcp://host[:port]``, IPv6 as ``[::1]:port`` (or a bare ``::1``).
Durations follow Go's ``time.ParseDuration`` plus ``d`` (24h).  Sizes accept
plain byte counts and unit suffixes (``16MiB``, ``128MB``, ``1K``).
"""

from __future__ import annotations

import ipaddress
import re

from oklog.errors import ConfigError

__all__ = [
    "split_addr",
    "parse_addr",
    "join_host_port",
    "api_url",
    "parse_duration",
    "parse_size",
]

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


# --- durations ---------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign
    "μs": 1e-6,  # U+03BC greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")


def parse_duration(s: str) -> float:
    """Seconds in a Go-style duration: ``3s``, ``1m``, ``1h30m``, ``500ms``,
    ``1.5h``, ``7d`` (``d`` = 24h, our extension), ``0``.

    A leading ``+`` or ``-`` is accepted as in Go.  A number without a unit
    (other than ``0``) is an error, as in Go.
    """
    original = s
    s = s.strip()
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ConfigError(f"invalid duration {original!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            if re.match(r"(\d+\.?\d*|\.\d+)$", s[pos:]):
                raise ConfigError(f"invalid duration {original!r}: missing unit (e.g. 5m, 1h, 30s)")
            raise ConfigError(f"invalid duration {original!r} (use e.g. 500ms, 30s, 5m, 1h30m, 7d)")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


# --- sizes -------------------------------------------------------------------

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^(\d+\.?\d*|\.\d+)\s*([A-Za-z]*)$")


def parse_size(s: str | int) -> int:
    """Bytes in a size: ``1048576``, ``16MiB``, ``128MB``, ``1KiB``, ``1.5G``.

    ``KiB/MiB/GiB/TiB`` and the one-letter ``K/M/G/T`` are powers of 1024;
    ``KB/MB/GB/TB`` are powers of 1000 (like ``dd``).  Case-insensitive.
    """
    if isinstance(s, int) and not isinstance(s, bool):
        if s < 0:
            raise ConfigError(f"invalid size {s!r}: negative")
        return s
    if not isinstance(s, str):
        raise ConfigError(f"invalid size {s!r}")
    m = _SIZE.match(s.strip())
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ConfigError(f"invalid size {s!r} (use e.g. 1048576, 64KiB, 16MiB, 1GB)")
    number = m.group(1)
    if number.isdigit():
        return int(number) * _SIZE_UNITS[unit]
    value = float(number) * _SIZE_UNITS[unit]
    if value != int(value) and unit in ("", "b"):
        raise ConfigError(f"invalid size {s!r}: fractional bytes")
    return int(round(value))
