"""TLS contexts for the HTTP API (server and clients) and for forwarders.

Every ``ssl.SSLContext`` oklog uses is made here, from PEM files, and a bad
file becomes a ``ConfigError`` that names the flag and the file -- at
start-up, not at the first connection:

- ``server_context``: the API's HTTPS (``-api.tls-cert``/``-api.tls-key``),
  TLS 1.2 or later, HTTP/1.1 only (the streaming paths are measured on
  HTTP/1.1); with a client CA (``-api.tls-ca``) a client certificate is
  required and verified (mTLS).
- ``client_context``: what a client (a node calling its peers, ``oklog
  query``, the other client commands, ``oklog forward tls://``) trusts:
  the CA bundle given (``-ca-file``) or else the system's trust store, with
  host name checking; optionally its own certificate for mTLS.

``describe`` turns a TLS failure deep inside httpx/trio into a few words an
operator can act on ("certificate verify failed: ... (give the CA with
-ca-file)").
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import trio

from .errors import ConfigError

__all__ = ["client_context", "describe", "server_context", "tls_listeners"]


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path, cert_flag: str, key_flag: str) -> None:
    for path, flag in ((cert, cert_flag), (key, key_flag)):
        if not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(f"{key_flag} {key} is not the private key of {cert_flag} {cert}") from None
        raise ConfigError(f"{cert_flag} {cert} / {key_flag} {key}: not a PEM certificate and "
                          f"its unencrypted private key ({reason})") from None
    except OSError as exc:
        raise ConfigError(f"{cert_flag} {cert} / {key_flag} {key}: {exc.strerror or exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: Path, flag: str) -> None:
    if not ca.is_file():
        raise ConfigError(f"{flag} {ca}: no such file")
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(f"{flag} {ca}: not a PEM CA certificate bundle ({reason})") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {ca}: {exc.strerror or exc}") from None


def server_context(cert: Path, key: Path, client_ca: Path | None = None, *,
                   cert_flag: str = "-api.tls-cert", key_flag: str = "-api.tls-key",
                   ca_flag: str = "-api.tls-ca", alpn: list[str] | None = None) -> ssl.SSLContext:
    """A server context for ``cert``/``key``; requires client certificates
    signed by ``client_ca`` when given."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if alpn:
        ctx.set_alpn_protocols(alpn)
    _load_chain(ctx, cert, key, cert_flag, key_flag)
    if client_ca is not None:
        _load_ca(ctx, client_ca, ca_flag)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca_file: Path | None = None, cert: Path | None = None, key: Path | None = None,
                   *, ca_flag: str = "-ca-file", cert_flag: str = "-cert-file",
                   key_flag: str = "-key-file", alpn: list[str] | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca_file`` (only it) or else the system's
    trust store; presents ``cert``/``key`` when given (both or neither).
    ``alpn`` defaults to HTTP/1.1 (pass ``[]`` for the line protocol)."""
    if (cert is None) != (key is None):
        given, missing = (cert_flag, key_flag) if cert is not None else (key_flag, cert_flag)
        raise ConfigError(f"{given} needs {missing} too")
    if ca_file is None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks host names, requires a cert
        _load_ca(ctx, ca_file, ca_flag)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"] if alpn is None else alpn)
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key, cert_flag, key_flag)
    return ctx


def tls_listeners(listeners: list[trio.SocketListener], ctx: ssl.SSLContext | None) -> list[Any]:
    """``listeners`` as they are, or serving TLS with ``ctx`` (the ingest
    ports).  A peer's TCP EOF ends its stream like a TLS close_notify
    (``https_compatible``): the line protocol has a client-side half-close
    (``oklog forward`` signals "done" with it), which TLS lacks."""
    if ctx is None:
        return list(listeners)
    return [trio.SSLListener(listener, ctx, https_compatible=True) for listener in listeners]


_HINTS = (
    ("WRONG_VERSION_NUMBER", "the other end does not speak TLS (use http://, or tcp:// for ingest)"),
    ("CERTIFICATE_REQUIRED", "the server requires a client certificate (-cert-file and -key-file)"),
    ("BAD_CERTIFICATE", "the server refused our client certificate (or wants one: -cert-file, -key-file)"),
    ("UNKNOWN_CA", "the server does not trust our client certificate's CA"),
    ("HTTP_REQUEST", "the server speaks plain HTTP: use http://"),
)


def describe(exc: BaseException) -> str | None:
    """A short operator-facing reason if ``exc`` (or anything it wraps) is
    a TLS failure; None otherwise."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            why = (getattr(e, "verify_message", None) or getattr(e, "reason", None)
                   or "certificate verify failed")
            return f"TLS certificate verify failed: {why} (give the CA that signed it with -ca-file)"
        if isinstance(e, ssl.SSLError):
            reason = getattr(e, "reason", None)
            text = f"{reason or ''} {e}"
            for marker, hint in _HINTS:
                if marker in text:
                    return f"TLS handshake failed: {hint}"
            return f"TLS error: {reason or e}"
        if isinstance(e, BaseExceptionGroup):
            todo += e.exceptions
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return None

