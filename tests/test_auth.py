"""Bearer tokens, TLS contexts, secret files and their wiring, without processes."""

from __future__ import annotations

import base64
import json
import ssl
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from oklog import metrics
from oklog.auth import bearer_auth, check_bearer, is_public, read_token
from oklog.cluster.agent import AgentConfig, agent_argv, agent_config_json, write_private
from oklog.cluster.membership import ClusterConfig, StaticMembership, member_url, plan_cluster
from oklog.clientconf import ClientConf
from oklog.config import NodeConfig
from oklog.errors import ConfigError
from oklog.http import Request, Response, Router, request_metrics, text
from oklog.node import _cluster_config, advertised_api
from oklog.security import NodeSecurity, read_gossip_key
from oklog.tls import client_context, describe, server_context
from tests.certs import have_openssl, make_pki

TOKEN = "s3cr3t-t0ken-0123456789abcdef"


# --- the check -----------------------------------------------------------------------------


@pytest.mark.parametrize("header, reason", [
    (None, "missing"),
    ("", "missing"),
    ("Basic dXNlcjpwYXNz", "malformed"),
    ("Bearer", "malformed"),
    ("Bearer ", "malformed"),
    (f"Bearer {TOKEN}x", "invalid"),
    (f"Bearer {TOKEN[:-1]}", "invalid"),
    ("Bearer wrong", "invalid"),
    ("Bearer \u00e9\u00e9", "invalid"),
    (f"Bearer {TOKEN}", None),
    (f"bearer {TOKEN}", None),  # the scheme is case-insensitive (RFC 7235)
    (f"BEARER   {TOKEN}  ", None),
])
def test_check_bearer(header, reason):
    assert check_bearer(header, TOKEN.encode()) == reason


@pytest.mark.parametrize("path, public", [
    ("/health", True), ("/healthz", True), ("/readyz", True),
    ("/metrics", False),
    ("/ui", True), ("/ui/", True), ("/ui/app.js", True), ("/ui/style.css", True),
    ("/ui/index.html", True),
    ("/ui/api/query", False),  # not a static asset: needs the token
    ("/ui/x/app.js", False), ("/ui/..js", False), ("/uix.js", False),
    ("/store/query", False), ("/store/_query", False), ("/store/replicate", False),
    ("/ingest/next", False), ("/store/_clusterstate", False), ("/nope", False), ("/", False),
])
def test_public_paths(path, public):
    assert is_public(path) is public


def test_metrics_public_only_when_asked():
    assert is_public("/metrics", metrics_public=True)
    assert not is_public("/store/query", metrics_public=True)


def _call(router: Router, path: str, method: str = "GET",
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return trio.run(_acall, router, path, method, headers)


async def _acall(router: Router, path: str, method: str,
                 headers: dict[str, str] | None) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": b"",
             "client": ("127.0.0.1", 5555),
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    await router(scope, receive, send)
    hdrs = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], hdrs, b"".join(m.get("body", b"") for m in sent[1:])


def _router(metrics_public: bool = False) -> Router:
    router = Router()
    router.use(request_metrics(router))
    router.use(bearer_auth(TOKEN, metrics_public=metrics_public))

    async def ok(request: Request) -> Response:
        return text(200, "secret data")

    for path in ("/store/query", "/store/replicate", "/health", "/readyz", "/metrics", "/ui",
                 "/ui/app.js", "/ingest/next"):
        router.add("GET|POST", path, ok)
    return router


def test_every_route_needs_the_token_but_the_public_ones():
    router = _router()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/store/query", "/store/replicate", "/ingest/next", "/metrics", "/no/such/path"):
        status, headers, body = _call(router, path)
        assert status == 401, path
        assert headers["www-authenticate"] == 'Bearer realm="oklog"'
        assert body.count(b"\n") == 1 and b"-token-file" in body
        assert b"secret data" not in body
    status, headers, body = _call(router, "/store/replicate", "POST",
                                        {"Authorization": "Bearer nope"})
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    assert b"nope" not in body
    status, headers, _ = _call(router, "/store/query", headers={"Authorization": "Basic x"})
    assert status == 401 and 'error="invalid_request"' in headers["www-authenticate"]
    for path in ("/store/query", "/store/replicate", "/ingest/next", "/metrics"):
        assert (_call(router, path, headers=bearer))[0] == 200
    assert (_call(router, "/no/such/path", headers=bearer))[0] == 404
    for path in ("/health", "/readyz", "/ui", "/ui/app.js"):
        assert (_call(router, path))[0] == 200, path
    # HEAD is covered like GET
    assert (_call(router, "/store/query", "HEAD"))[0] == 401


def test_metrics_public_flag_opens_metrics_only():
    router = _router(metrics_public=True)
    assert (_call(router, "/metrics"))[0] == 200
    assert (_call(router, "/store/query"))[0] == 401


def test_refusals_are_counted_and_logged_without_secrets(caplog):
    before = metrics.http_unauthorized.labels("invalid")._value.get()
    router = _router()
    caplog.set_level("WARNING", logger="oklog.auth")
    for _ in range(3):
        _call(router, "/store/query", headers={"Authorization": "Bearer wrong-guess"})
    assert metrics.http_unauthorized.labels("invalid")._value.get() == before + 3
    logged = [r.getMessage() for r in caplog.records if r.name == "oklog.auth"]
    assert len(logged) == 1  # rate-limited
    assert "event=unauthorized" in logged[0] and "reason=invalid" in logged[0]
    assert "client=127.0.0.1:5555" in logged[0]
    assert "wrong-guess" not in logged[0] and TOKEN not in logged[0]


def test_the_compare_is_constant_time(monkeypatch):
    import hmac

    import oklog.auth

    calls = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(oklog.auth.hmac, "compare_digest", spy)
    assert check_bearer(f"Bearer {TOKEN}", TOKEN.encode()) is None
    assert calls == [(TOKEN.encode(), TOKEN.encode())]


# --- secret files ----------------------------------------------------------------------------


def test_read_token(tmp_path):
    f = tmp_path / "token"
    f.write_text(f"  {TOKEN}  \nsecond line ignored\n")
    f.chmod(0o600)
    assert read_token(f) == TOKEN


@pytest.mark.parametrize("content, message", [
    (b"", "the first line is empty"),
    (b"\n" + TOKEN.encode(), "the first line is empty"),
    (b"two words\n", "printable ASCII without spaces"),
    ("t\u00f6ken\n".encode(), "not ASCII"),
])
def test_bad_token_files_are_named_not_echoed(tmp_path, content, message):
    f = tmp_path / "token"
    f.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_token(f)
    assert message in str(info.value) and str(f) in str(info.value)
    assert "words" not in str(info.value) and TOKEN not in str(info.value)


def test_missing_token_file(tmp_path):
    with pytest.raises(ConfigError, match="-api.token-file .*: no such file"):
        read_token(tmp_path / "nope")
    with pytest.raises(ConfigError, match="is a directory"):
        read_token(tmp_path)


def test_a_token_file_others_can_read_is_warned_about(tmp_path, caplog):
    f = tmp_path / "token"
    f.write_text(TOKEN)
    f.chmod(0o644)
    caplog.set_level("WARNING", logger="oklog.auth")
    read_token(f)
    assert any("event=secret_file_permissions" in r.getMessage() and "0644" in r.getMessage()
               for r in caplog.records)
    assert not any(TOKEN in r.getMessage() for r in caplog.records)


def test_gossip_key(tmp_path):
    f = tmp_path / "key"
    key = base64.b64encode(bytes(range(32))).decode()
    f.write_text(key + "\n")
    assert read_gossip_key(f) == key
    f.write_text(base64.b64encode(b"x" * 20).decode())
    with pytest.raises(ConfigError, match="20 bytes; Serf wants 16, 24 or 32"):
        read_gossip_key(f)
    f.write_text("not base64 at all!")
    with pytest.raises(ConfigError, match="not base64") as info:
        read_gossip_key(f)
    assert "at all" not in str(info.value)


# --- node settings ---------------------------------------------------------------------------


def _cfg(**kw: Any) -> NodeConfig:
    cfg = NodeConfig(mode="ingeststore")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_node_security_off_by_default():
    sec = NodeSecurity.load(NodeConfig())
    assert sec.token is None and sec.middleware() is None and sec.scheme == "http"
    assert sec.peer.headers() == {} and sec.gossip_key is None


def test_node_security_flags_that_go_together(tmp_path):
    with pytest.raises(ConfigError, match="-api.metrics-public only makes sense"):
        NodeSecurity.load(_cfg(api_metrics_public=True))
    with pytest.raises(ConfigError, match="go together"):
        NodeSecurity.load(_cfg(api_tls_cert=tmp_path / "c.pem"))
    with pytest.raises(ConfigError, match="go together"):
        NodeSecurity.load(_cfg(api_tls_key=tmp_path / "k.pem"))
    with pytest.raises(ConfigError, match="-api.tls-ca .*needs -api.tls-cert"):
        NodeSecurity.load(_cfg(api_tls_ca=tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match="-api.tls-cert .*: no such file"):
        NodeSecurity.load(_cfg(api_tls_cert=tmp_path / "c.pem", api_tls_key=tmp_path / "k.pem"))


def test_secrets_stay_out_of_reprs(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    key_file = tmp_path / "key"
    key = base64.b64encode(b"k" * 32).decode()
    key_file.write_text(key)
    sec = NodeSecurity.load(_cfg(api_token_file=token_file, cluster_key_file=key_file))
    assert sec.token == TOKEN and sec.gossip_key == key
    assert sec.peer.headers() == {"Authorization": f"Bearer {TOKEN}"}
    cc = _cluster_config(_cfg(), 7650, sec)
    agent = AgentConfig(node_name="n", bind="127.0.0.1:1", encrypt_key=key, rpc_auth="rpc-secret")
    for thing in (sec, sec.peer, cc, agent):
        assert TOKEN not in repr(thing) and key not in repr(thing) and "rpc-secret" not in repr(thing)


needs_openssl = pytest.mark.skipif(not have_openssl(), reason="openssl is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not have_openssl():
        pytest.skip("openssl is not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_node_advertises_https(pki):
    sec = NodeSecurity.load(_cfg(api_tls_cert=pki.node_cert, api_tls_key=pki.node_key))
    assert sec.scheme == "https" and sec.server_tls is not None
    assert sec.server_tls.verify_mode == ssl.CERT_NONE  # no -api.tls-ca: no client certs
    assert sec.peer.cert_file == pki.node_cert  # our certificate toward peers
    cfg = _cfg(api="127.0.0.1:7650")
    assert advertised_api(cfg, 7650, sec.scheme) == "https://127.0.0.1:7650"
    assert _cluster_config(cfg, 7650, sec).api_url == "https://127.0.0.1:7650"
    mtls = NodeSecurity.load(_cfg(api_tls_cert=pki.node_cert, api_tls_key=pki.node_key,
                                  api_tls_ca=pki.ca))
    assert mtls.server_tls is not None and mtls.server_tls.verify_mode == ssl.CERT_REQUIRED
    assert mtls.peer.ca_file == pki.ca  # peers verified against -api.tls-ca by default
    other = NodeSecurity.load(_cfg(api_tls_cert=pki.node_cert, api_tls_key=pki.node_key,
                                   api_tls_ca=pki.ca, ca_file=pki.other_ca))
    assert other.peer.ca_file == pki.other_ca


def test_bad_tls_files_are_config_errors(pki, tmp_path):
    with pytest.raises(ConfigError, match="is not the private key of"):
        server_context(pki.node_cert, pki.client_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="-api.tls-cert .* not a PEM certificate"):
        server_context(garbage, pki.node_key)
    with pytest.raises(ConfigError, match="-api.tls-ca .* not a PEM CA"):
        server_context(pki.node_cert, pki.node_key, garbage)
    with pytest.raises(ConfigError, match="-ca-file .* not a PEM CA"):
        client_context(garbage)
    with pytest.raises(ConfigError, match="-key-file needs -cert-file"):
        client_context(None, None, pki.client_key)
    with pytest.raises(ConfigError, match="-ca-file .*: no such file"):
        ClientConf.load(ca_file=tmp_path / "nope.pem")


def test_client_conf(pki, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    conf = ClientConf.load(str(token_file), str(pki.ca), str(pki.client_cert), str(pki.client_key))
    assert conf.headers() == {"Authorization": f"Bearer {TOKEN}"}
    assert TOKEN not in repr(conf)
    assert ClientConf.load("", "", "", "") == ClientConf()

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with conf.client(transport=httpx.MockTransport(handler), headers={"X-Other": "1"}) as client:
        client.get("http://node/store/query")
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert seen[0].headers["x-other"] == "1"


def test_describe_tls_failures():
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_message = "self-signed certificate"
    wrapped = httpx.ConnectError("boom")
    wrapped.__cause__ = err
    assert describe(wrapped) == ("TLS certificate verify failed: self-signed certificate "
                                 "(give the CA that signed it with -ca-file)")
    plain = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    assert "does not speak TLS" in (describe(plain) or "")
    assert describe(httpx.ConnectError("refused")) is None


# --- membership and the Serf agent ----------------------------------------------------------


def test_member_urls_keep_the_scheme():
    assert member_url("127.0.0.1:7650") == "http://127.0.0.1:7650"
    assert member_url("https://10.0.0.1:7650") == "https://10.0.0.1:7650"
    assert member_url("http://[::1]:7650") == "http://[::1]:7650"
    assert member_url("ftp://x:1") is None
    assert member_url("") is None  # a member that has not advertised its API yet
    assert StaticMembership("https://127.0.0.1:7650", "ingeststore").stores() == ["https://127.0.0.1:7650"]
    assert StaticMembership("http://127.0.0.1:7650", "store").self_url() == "http://127.0.0.1:7650"


def _cluster(tmp_path: Path, **kw: Any) -> ClusterConfig:
    base: dict[str, Any] = dict(bind="127.0.0.1:7946", advertise=None, peers=[], serf_rpc=None,
                                api_url="https://127.0.0.1:7650", role="store", data_dir=tmp_path)
    base.update(kw)
    return ClusterConfig(**base)


def test_plan_cluster_with_a_gossip_key(tmp_path):
    key = base64.b64encode(b"k" * 16).decode()
    cluster = plan_cluster(_cluster(tmp_path, use_serf=True, encrypt_key=key))
    agent = cluster.agent
    assert agent is not None and agent.encrypt_key == key and agent.rpc_auth
    assert agent.tags["oklog.api"] == "https://127.0.0.1:7650"
    settings = agent_config_json(agent)
    assert settings["encrypt_key"] == key and settings["rpc_auth"] == agent.rpc_auth
    argv = " ".join(agent_argv("serf", agent, tmp_path / "serf-config.json"))
    assert key not in argv and agent.rpc_auth not in argv  # never on a command line (ps)
    assert cluster.membership.self_url() == "https://127.0.0.1:7650"
    assert getattr(cluster.membership, "_auth_key") == agent.rpc_auth
    with pytest.raises(ConfigError, match="cannot apply to a Serf agent oklog does not start"):
        plan_cluster(_cluster(tmp_path, serf_rpc="127.0.0.1:7373", encrypt_key=key))
    with pytest.raises(ConfigError, match="runs without Serf"):
        plan_cluster(_cluster(tmp_path, use_serf=False, encrypt_key=key))
    plain = plan_cluster(_cluster(tmp_path, use_serf=True, api_url="http://127.0.0.1:7650"))
    assert plain.agent is not None and plain.agent.rpc_auth is None
    assert plain.agent.tags["oklog.api"] == "127.0.0.1:7650"  # as before: host:port means http
    assert "encrypt_key" not in agent_config_json(plain.agent)


def test_agent_config_file_is_private(tmp_path):
    f = tmp_path / "serf-config.json"
    f.write_text("{}")
    f.chmod(0o644)
    write_private(f, json.dumps({"encrypt_key": "x"}).encode())
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert json.loads(f.read_text()) == {"encrypt_key": "x"}
