"""A node's security settings, read and checked once at start-up.

``NodeSecurity.load(cfg)`` turns the security flags of a ``NodeConfig``
into what the node wires in, or raises one ``ConfigError`` naming the flag
and the file (a missing or empty token file, a key that does not match its
certificate, a gossip key that is not base64 of 16/24/32 bytes) before
anything listens:

- ``middleware()``: the bearer-token check for the API edge (``oklog.auth``);
- ``server_tls``: the API's HTTPS context (``oklog.tls``); ``scheme`` is
  then ``https`` and the node advertises ``https://`` to its peers;
- ``peer``: the ``ClientConf`` of calls to other nodes -- the same token,
  the node's certificate as its client certificate, and ``-ca-file`` (or
  ``-api.tls-ca``) to verify theirs;
- ``ingest_tls``: the TLS context of the forwarder ports
  (``-ingest.tls-cert``/``-ingest.tls-key``, client certificates with
  ``-ingest.tls-ca``), or None for plain TCP;
- ``gossip_key``: Serf's ``encrypt_key`` (``oklog.cluster.agent`` writes it
  to a 0600 config file, never to a command line).

Secrets are held in fields left out of ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from .auth import bearer_auth, read_secret_line, read_token
from .clientconf import ClientConf
from .config import NodeConfig
from .errors import ConfigError
from .http import Middleware
from .tls import server_context

__all__ = ["NodeSecurity", "read_gossip_key"]

GOSSIP_KEY_SIZES = (16, 24, 32)


def read_gossip_key(path: Path, flag: str = "-cluster.key-file") -> str:
    """The base64 Serf key in ``path`` (first line), checked."""
    text = read_secret_line(path, flag)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{flag} {path}: not base64 (make a key with: serf keygen)") from None
    if len(raw) not in GOSSIP_KEY_SIZES:
        raise ConfigError(f"{flag} {path}: the key is {len(raw)} bytes; Serf wants 16, 24 or 32 "
                          "(make one with: serf keygen)")
    return text


@dataclass(frozen=True)
class NodeSecurity:
    token: str | None = field(default=None, repr=False)
    metrics_public: bool = False
    server_tls: ssl.SSLContext | None = None
    peer: ClientConf = field(default_factory=ClientConf)
    ingest_tls: ssl.SSLContext | None = None
    gossip_key: str | None = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        """``https`` when the API serves TLS."""
        return "https" if self.server_tls is not None else "http"

    def middleware(self) -> Middleware | None:
        """The token check for ``Router.use``, or None without a token."""
        if self.token is None:
            return None
        return bearer_auth(self.token, metrics_public=self.metrics_public)

    @classmethod
    def load(cls, cfg: NodeConfig) -> "NodeSecurity":
        token = read_token(cfg.api_token_file) if cfg.api_token_file else None
        if cfg.api_metrics_public and token is None:
            raise ConfigError("-api.metrics-public only makes sense with -api.token-file")
        cert, key, ca = cfg.api_tls_cert, cfg.api_tls_key, cfg.api_tls_ca
        if (cert is None) != (key is None):
            raise ConfigError("-api.tls-cert and -api.tls-key go together")
        if ca is not None and cert is None:
            raise ConfigError("-api.tls-ca (client certificates) needs -api.tls-cert and -api.tls-key")
        server_tls = server_context(cert, key, ca, alpn=["http/1.1"]) if cert and key else None
        peer = ClientConf(token=token, ca_file=cfg.ca_file or ca, cert_file=cert, key_file=key)
        peer.ssl_context()  # -ca-file checked now (the certificate was, just above)
        icert, ikey, ica = cfg.ingest_tls_cert, cfg.ingest_tls_key, cfg.ingest_tls_ca
        if (icert is None) != (ikey is None):
            raise ConfigError("-ingest.tls-cert and -ingest.tls-key go together")
        if ica is not None and icert is None:
            raise ConfigError("-ingest.tls-ca (forwarder certificates) needs -ingest.tls-cert "
                              "and -ingest.tls-key")
        ingest_tls = None
        if icert and ikey and "ingest" in cfg.roles:
            ingest_tls = server_context(icert, ikey, ica, cert_flag="-ingest.tls-cert",
                                        key_flag="-ingest.tls-key", ca_flag="-ingest.tls-ca")
            if ica is not None:
                # Under TLS 1.3 a refused client certificate is only known after the
                # forwarder has started sending (and the line protocol has no
                # acknowledgement); under TLS 1.2 its handshake fails, so it fails over.
                ingest_tls.maximum_version = ssl.TLSVersion.TLSv1_2
        gossip_key = read_gossip_key(cfg.cluster_key_file) if cfg.cluster_key_file else None
        return cls(token=token, metrics_public=cfg.api_metrics_public, server_tls=server_tls,
                   peer=peer, ingest_tls=ingest_tls, gossip_key=gossip_key)
