"""Bearer-token authentication at the HTTP edge.

A node started with ``-api.token-file FILE`` answers every request with
``401 Unauthorized`` (a one-line reason and ``WWW-Authenticate: Bearer``)
unless it carries ``Authorization: Bearer <token>``, where the token is the
first line of FILE.  The check is one ``Middleware`` (``oklog.http``) in
front of routing, so every endpoint -- those mounted later and unknown
paths alike -- is covered by default; only ``is_public`` paths pass
without it:

- ``/health``, ``/healthz``, ``/readyz``: load balancers and supervisors
  probe them without secrets (they tell nothing but up/ready);
- ``/metrics`` when the node runs with ``-api.metrics-public``;
- the web UI's static page: ``/ui``, ``/ui/`` and files directly under
  ``/ui/`` with a static-asset extension (``.html .js .css`` ...).  The page
  asks the user for the token and sends it on its API calls; anything else
  under ``/ui/`` (an API route, say) still needs the token.

Tokens are compared with ``hmac.compare_digest`` (constant time), and no
token -- expected or presented -- is ever logged or echoed.  Refusals are
counted in ``oklog_http_unauthorized_total{reason}`` and logged at most once
every ``LOG_EVERY`` seconds with the number left out.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
import time
from pathlib import Path

from . import metrics
from .errors import ConfigError
from .http import Handler, Middleware, Request, Response, text

__all__ = ["bearer_auth", "check_bearer", "is_public", "read_secret_line", "read_token"]

log = logging.getLogger("oklog.auth")

PUBLIC_PATHS = frozenset({"/health", "/healthz", "/readyz"})
UI_STATIC = (".html", ".js", ".mjs", ".css", ".map", ".svg", ".png", ".ico", ".woff", ".woff2", ".txt")
LOG_EVERY = 10.0

_REASONS = {
    "missing": "missing credentials: send Authorization: Bearer <token> (oklog clients: -token-file)",
    "malformed": "malformed Authorization header: want Authorization: Bearer <token>",
    "invalid": "invalid token",
}


# --- secret files ---------------------------------------------------------------------------


def read_secret_line(path: Path, flag: str) -> str:
    """The first line of ``path``, stripped; a ``ConfigError`` naming the
    flag and the file (never its content) when it is missing or empty."""
    try:
        with open(path, "rb") as f:
            first = f.readline(64 * 1024)
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{flag} {path}: is a directory") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None
    try:
        line = first.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} {path}: the first line is not ASCII text") from None
    if not line:
        raise ConfigError(f"{flag} {path}: the first line is empty (it must hold the secret)")
    _warn_if_readable_by_others(path, flag)
    return line


def read_token(path: Path, flag: str = "-api.token-file") -> str:
    """The bearer token in ``path``: printable ASCII without spaces (what an
    HTTP header can carry), e.g. ``openssl rand -hex 32``."""
    token = read_secret_line(path, flag)
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise ConfigError(f"{flag} {path}: the token may hold only printable ASCII without spaces "
                          "(make one with: openssl rand -hex 32)")
    return token


def _warn_if_readable_by_others(path: Path, flag: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("event=secret_file_permissions flag=%s path=%s mode=%04o "
                    "hint=\"chmod 600 it: others can read the secret\"",
                    flag, path, stat.S_IMODE(mode))


# --- the check ------------------------------------------------------------------------------


def is_public(path: str, *, metrics_public: bool = False) -> bool:
    """Whether ``path`` is served without the token (module docstring)."""
    if path in PUBLIC_PATHS or (metrics_public and path == "/metrics"):
        return True
    if path in ("/ui", "/ui/"):
        return True
    if path.startswith("/ui/"):
        name = path[len("/ui/"):]
        return "/" not in name and ".." not in name and name.endswith(UI_STATIC)
    return False


def check_bearer(authorization: str | None, token: bytes) -> str | None:
    """None when ``authorization`` (the header's value) carries ``token``;
    otherwise why not: ``missing``, ``malformed`` or ``invalid``."""
    if not authorization:
        return "missing"
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return "malformed"
    presented = credentials.encode("latin-1", "replace")
    return None if hmac.compare_digest(presented, token) else "invalid"


class _Refusals:
    """Log refusals at most once per ``LOG_EVERY`` seconds."""

    def __init__(self) -> None:
        self.next_log = 0.0
        self.left_out = 0

    def note(self, request: Request, reason: str) -> None:
        now = time.monotonic()
        if now < self.next_log:
            self.left_out += 1
            return
        log.warning("event=unauthorized method=%s path=%s reason=%s client=%s left_out=%d",
                    request.method, request.path[:200], reason, request.client or "?",
                    self.left_out)
        self.next_log = now + LOG_EVERY
        self.left_out = 0


def bearer_auth(token: str, *, metrics_public: bool = False) -> Middleware:
    """The middleware that requires ``token`` on every non-public path."""
    expected = token.encode("ascii")
    refusals = _Refusals()

    def wrap(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            if is_public(request.path, metrics_public=metrics_public):
                return await next_handler(request)
            reason = check_bearer(request.headers.get("authorization"), expected)
            if reason is None:
                return await next_handler(request)
            metrics.http_unauthorized.labels(reason).inc()
            refusals.note(request, reason)
            response = text(401, f"unauthorized: {_REASONS[reason]}")
            challenge = 'Bearer realm="oklog"'
            if reason == "invalid":
                challenge += ', error="invalid_token"'
            elif reason == "malformed":
                challenge += ', error="invalid_request"'
            response.headers["WWW-Authenticate"] = challenge
            return response

        return handle

    return wrap
