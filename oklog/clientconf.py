"""How a client reaches a node's HTTP API: token and TLS, in one place.

Every HTTP client of oklog -- ``oklog query`` and the other client
commands, and a node calling its peers (``oklog.peer``) -- builds its
``httpx`` client from a ``ClientConf``, so a token and TLS settings given
once apply to every request it makes:

- ``token`` (from ``-token-file``; a node uses its own
  ``-api.token-file``): sent as ``Authorization: Bearer <token>`` on every
  request;
- ``ca_file`` (``-ca-file``): the CA bundle that ``https://`` servers must
  chain to (else the system's trust store);
- ``cert_file``/``key_file`` (``-cert-file``/``-key-file``; a node uses its
  ``-api.tls-cert``/``-api.tls-key``): our client certificate, for servers
  that require one (``-api.tls-ca``).

Store addresses may be ``https://host:port`` (``oklog.addr.api_url``
keeps the scheme); ``host:port`` and ``tcp://`` mean ``http://``.

Usage in a client command::

    conf = ClientConf.load(token_file, ca_file, cert_file, key_file)  # ConfigError if bad
    async with conf.async_client(timeout=...) as client:
        await client.get(f"{api_url(store)}/store/query", ...)

The token never appears in ``repr`` (nor, therefore, in logs).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .auth import read_token
from .tls import client_context

__all__ = ["ClientConf"]


@dataclass(frozen=True)
class ClientConf:
    token: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def load(cls, token_file: str | Path | None = None, ca_file: str | Path | None = None,
             cert_file: str | Path | None = None, key_file: str | Path | None = None) -> "ClientConf":
        """Read the token file and check the TLS files now (``ConfigError``
        naming the flag otherwise); empty strings mean "not given"."""
        token = read_token(Path(token_file), "-token-file") if token_file else None
        conf = cls(token=token, ca_file=Path(ca_file) if ca_file else None,
                   cert_file=Path(cert_file) if cert_file else None,
                   key_file=Path(key_file) if key_file else None)
        conf.ssl_context()  # fail now, naming the file, rather than at the first request
        return conf

    def headers(self) -> dict[str, str]:
        """Headers every request carries."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def ssl_context(self) -> ssl.SSLContext:
        """What ``https://`` servers are verified against (and our certificate)."""
        return client_context(self.ca_file, self.cert_file, self.key_file)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` with the token and TLS settings; other
        keyword arguments (``timeout``, ``limits``, ``transport``, extra
        ``headers``) go to httpx."""
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return httpx.AsyncClient(headers=headers, verify=self.ssl_context(), **kwargs)

    def client(self, **kwargs: Any) -> httpx.Client:
        """The same as ``async_client``, blocking."""
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return httpx.Client(headers=headers, verify=self.ssl_context(), **kwargs)
