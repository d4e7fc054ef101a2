"""Real nodes with a token, TLS, mTLS and an encrypted gossip: who gets in,
that records still flow between nodes, and that no secret leaks."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from oklog.clientconf import ClientConf
from tests.certs import have_openssl, make_pki
from tests.nodeutil import ROOT, Node, forward, oklog_cmd

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have_openssl(), reason="openssl is not installed")]

TOKEN = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ALL = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def token_file(tmp_path) -> Path:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o600)
    return f


def run_query(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(oklog_cmd("query", "-from", "1h", *args), cwd=ROOT, capture_output=True,
                          timeout=60)


def wait_query(args: list[str], count: int, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    out = b""
    while time.monotonic() < deadline:
        done = run_query(*args)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        if out.count(b"\n") >= count:
            return out
        time.sleep(0.3)
    have = out.count(b"\n")
    raise AssertionError(f"expected {count} records, have {have}")


def test_token_and_tls_on_one_node(tmp_path, pki, token_file):
    node = Node("ingeststore", tmp_path / "n", scheme="https", verify=str(pki.ca), extra=[
        "-cluster.serf", "off", "-store.segment-replication-factor", "1",
        "-api.token-file", str(token_file),
        "-api.tls-cert", str(pki.node_cert), "-api.tls-key", str(pki.node_key)])
    node.start()
    try:
        with httpx.Client(verify=str(pki.ca), timeout=10) as client:
            # strangers get a 401 on every endpoint but the health checks
            for method, path in (("GET", "/store/query"), ("GET", "/store/_query"),
                                 ("GET", "/ingest/next"), ("GET", "/ingest/read?id=x"),
                                 ("POST", "/ingest/commit?id=x"), ("GET", "/metrics"),
                                 ("GET", "/store/_clusterstate"), ("GET", "/ingest/_segmentstate")):
                r = client.request(method, node.api + path, params=ALL if "query" in path else None)
                assert r.status_code == 401, (path, r.status_code, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
            r = client.get(node.api + "/store/query", params=ALL, headers={"Authorization": "Bearer no"})
            assert r.status_code == 401 and "invalid token" in r.text
            for path in ("/health", "/healthz", "/readyz"):
                assert client.get(node.api + path).status_code == 200
            for path in ("/ui", "/ui/ui.js"):  # the UI's static page (its API calls need the token)
                assert client.get(node.api + path).status_code != 401
            # an injection through /store/replicate is refused and writes nothing
            before = sorted(os.listdir(node.data / "store"))
            body = b"01JE0000000000000000000000 default injected by a stranger\n"
            r = client.post(node.api + "/store/replicate", content=body)
            assert r.status_code == 401
            assert sorted(os.listdir(node.data / "store")) == before

            forward(b"".join(b"hello secure %d\n" % i for i in range(20)),
                    f"127.0.0.1:{node.fast_port}")
            args = ["-store", node.api, "-ca-file", str(pki.ca), "-token-file", str(token_file)]
            out = wait_query(args + ["-q", "secure"], 20)
            assert sorted(out.splitlines()) == sorted(b"hello secure %d" % i for i in range(20))
            assert client.get(node.api + "/metrics", headers=BEARER).status_code == 200

        # the CLI says what is wrong, in one line
        no_token = run_query("-store", node.api, "-ca-file", str(pki.ca))
        assert no_token.returncode == 1 and b"HTTP 401" in no_token.stderr
        assert no_token.stderr.count(b"\n") == 1 and b"-token-file" in no_token.stderr
        no_ca = run_query("-store", node.api, "-token-file", str(token_file))
        assert no_ca.returncode == 1 and b"certificate verify failed" in no_ca.stderr
        plain = run_query("-store", node.api.replace("https:", "http:"), "-token-file", str(token_file))
        assert plain.returncode == 1 and b"https://" in plain.stderr
        for done in (no_token, no_ca, plain):
            assert TOKEN.encode() not in done.stderr and b"Traceback" not in done.stderr
    finally:
        node.kill()
    log = node.log_path.read_text()
    assert "event=unauthorized" in log and TOKEN not in log


def _cmdlines() -> list[bytes]:
    lines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                lines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                pass
    return lines


def _members(node: Node, conf: ClientConf) -> list[dict]:
    with conf.client(timeout=5) as client:
        state = client.get(node.api + "/store/_clusterstate").json()
    return [m for m in state["members"] if m["status"] == "alive"]


def _wait_members(node: Node, conf: ClientConf, n: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    members: list[dict] = []
    while time.monotonic() < deadline:
        members = _members(node, conf)
        if len(members) == n:
            return members
        time.sleep(0.2)
    raise AssertionError(f"{node.api} sees {members}, not {n} members")


@pytest.mark.serf
@pytest.mark.skipif(shutil.which("serf") is None, reason="serf is not installed")
def test_mtls_cluster_with_token_and_encrypted_gossip(tmp_path, pki, token_file):
    key = base64.b64encode(os.urandom(32)).decode()
    key_file = tmp_path / "gossip.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    conf = ClientConf(token=TOKEN, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    verify = conf.ssl_context()
    secure = ["-cluster.fast-gossip", "-api.token-file", str(token_file),
              "-api.tls-cert", str(pki.node_cert), "-api.tls-key", str(pki.node_key),
              "-api.tls-ca", str(pki.ca)]
    keyed = secure + ["-cluster.key-file", str(key_file)]
    a = Node("ingeststore", tmp_path / "a", scheme="https", verify=verify, extra=keyed + [
        "-store.segment-replication-factor", "2", "-ingest.segment-flush-age", "300ms"])
    a.start()
    seed = f"127.0.0.1:{a.cluster_port}"
    b = Node("store", tmp_path / "b", scheme="https", verify=verify, extra=keyed + [
        "-peer", seed, "-store.segment-replication-factor", "2", "-store.segment-target-age", "1s"])
    stranger = Node("store", tmp_path / "c", scheme="https", verify=verify, extra=secure + [
        "-peer", seed, "-store.segment-replication-factor", "1"])
    nodes = [a, b, stranger]
    try:
        b.start()
        stranger.start()
        members = _wait_members(a, conf, 2)
        assert all(m["api"].startswith("https://") for m in members)  # peers call us over TLS
        _wait_members(b, conf, 2)

        # records flow: ingested at a, consumed by both stores over HTTPS with the
        # token and client certificates, replicated to both (RF 2)
        n = 200
        forward(b"".join(b"mtls record %d\n" % i for i in range(n)), f"127.0.0.1:{a.fast_port}")
        args = ["-ca-file", str(pki.ca), "-token-file", str(token_file),
                "-cert-file", str(pki.client_cert), "-key-file", str(pki.client_key)]
        out = wait_query(["-store", b.api, *args, "-q", "mtls"], n)
        assert sorted(out.splitlines()) == sorted(b"mtls record %d" % i for i in range(n))
        with conf.client(timeout=30) as client:
            for node in (a, b):  # each store holds every record: replication went through
                deadline = time.monotonic() + 30
                while True:
                    local = client.get(node.api + "/store/_query", params={**ALL, "q": "mtls"})
                    assert local.status_code == 200
                    if local.content.count(b"\n") == n or time.monotonic() > deadline:
                        break
                    time.sleep(0.3)
                assert local.content.count(b"\n") == n, node.api
            scattered = client.get(b.api + "/store/query", params={**ALL, "q": "mtls"})
            assert scattered.status_code == 200 and scattered.headers["X-Oklog-Nodes-Queried"] == "2"
            assert scattered.content.count(b"\n") == n

        # mTLS: no client certificate, or one from another CA, gets nowhere
        for who in (ClientConf(token=TOKEN, ca_file=pki.ca),
                    ClientConf(token=TOKEN, ca_file=pki.ca, cert_file=pki.stranger_cert,
                               key_file=pki.stranger_key)):
            with who.client(timeout=5) as client, pytest.raises(httpx.HTTPError):
                client.get(b.api + "/readyz")
        no_cert = run_query("-store", b.api, "-ca-file", str(pki.ca), "-token-file", str(token_file))
        assert no_cert.returncode == 1 and b"client certificate" in no_cert.stderr, no_cert.stderr

        # the node without the gossip key never joins, and nobody sees it
        time.sleep(3)
        assert len(_members(a, conf)) == 2 and len(_members(b, conf)) == 2
        assert len(_members(stranger, conf)) == 1
        stranger_serf = next((tmp_path / "c").rglob("serf.log")).read_text()
        assert "Failed to join" in stranger_serf and "encrypt" in stranger_serf  # it did try

        # no secret in any log, metrics page, cluster state or command line
        with conf.client(timeout=10) as client:
            pages = [client.get(node.api + path).text for node in nodes
                     for path in ("/metrics", "/store/_clusterstate")]
            pages.append(client.get(a.api + "/ingest/_clusterstate").text)
        logs = [node.log_path.read_text() for node in nodes]
        logs += [p.read_text(errors="replace") for p in tmp_path.rglob("serf.log")]
        assert len(logs) == 6
        cmdlines = _cmdlines()
        assert any(str(tmp_path / "a").encode() in c and b"serf" in c for c in cmdlines)
        for secret in (TOKEN, key):
            for text in pages + logs:
                assert secret not in text
            assert not any(secret.encode() in c for c in cmdlines)
        for config in tmp_path.rglob("serf-config.json"):
            assert config.stat().st_mode & 0o077 == 0
    finally:
        for node in nodes:
            node.kill()


def _forward(lines: bytes, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(oklog_cmd("forward", *args), input=lines, cwd=ROOT, capture_output=True,
                          timeout=timeout)


def test_forwarders_over_tls_with_client_certificates(tmp_path, pki):
    node = Node("ingeststore", tmp_path / "n", extra=[
        "-cluster.serf", "off", "-store.segment-replication-factor", "1",
        "-ingest.tls-cert", str(pki.node_cert), "-ingest.tls-key", str(pki.node_key),
        "-ingest.tls-ca", str(pki.ca)])
    node.start()
    try:
        good = b"".join(b"over tls %d\n" % i for i in range(3000))
        certs = ["-ca-file", str(pki.ca), "-cert-file", str(pki.client_cert),
                 "-key-file", str(pki.client_key)]
        for port in (node.fast_port, node.durable_port):
            done = _forward(good, *certs, f"tls://127.0.0.1:{port}")
            assert done.returncode == 0 and b"lines_unconfirmed=0" in done.stderr, done.stderr
        # bulk ingest has no TLS yet: refused by forward, and the node keeps its bulk port closed
        bulk = _forward(b"bulk 1\n", *certs, "-bulk", f"tls://127.0.0.1:{node.bulk_port}")
        assert bulk.returncode != 0 and b"-bulk does not work over tls://" in bulk.stderr, bulk.stderr
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", node.bulk_port), timeout=2).close()
        assert "event=bulk_disabled" in node.log()

        # a plain-TCP forwarder is reset, so it reports its lines unconfirmed, never delivered
        plain = _forward(b"plain 1\nplain 2\n", f"tcp://127.0.0.1:{node.fast_port}")
        assert b"lines_unconfirmed=2" in plain.stderr, plain.stderr
        # no client certificate, or one from another CA: the handshake fails, nothing is sent
        for who in (["-ca-file", str(pki.ca)],
                    ["-ca-file", str(pki.ca), "-cert-file", str(pki.stranger_cert),
                     "-key-file", str(pki.stranger_key)]):
            proc = subprocess.Popen(oklog_cmd("forward", *who, f"tls://127.0.0.1:{node.fast_port}"),
                                    cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL)
            try:
                _, err = proc.communicate(b"refused 1\n", timeout=4)
            except subprocess.TimeoutExpired:  # it keeps retrying: stop it
                proc.kill()
                _, err = proc.communicate()
            assert b"TLS handshake failed" in err and b"lines_sent=1" not in err, err
        # the server certificate is verified too
        untrusted = subprocess.Popen(oklog_cmd("forward", f"tls://127.0.0.1:{node.fast_port}"),
                                     cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL)
        try:
            _, err = untrusted.communicate(b"x\n", timeout=3)
        except subprocess.TimeoutExpired:
            untrusted.kill()
            _, err = untrusted.communicate()
        assert b"certificate verify failed" in err

        out = wait_query(["-store", node.api], 6000)
        assert out.count(b"\n") == 6000 and b"plain" not in out and b"refused" not in out
    finally:
        node.kill()
