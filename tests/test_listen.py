"""Listening sockets: wildcard hosts cover both address families."""

import socket

import pytest
import trio

from oklog import listen
from oklog.errors import ListenError


def test_wildcard_listens_on_ipv4_and_ipv6_on_one_port():
    socks = listen.tcp_sockets("0.0.0.0", 0)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(ports) == 1
        families = {s.family for s in socks}
        assert socket.AF_INET in families
    finally:
        for s in socks:
            s.close()


def test_without_ipv6_a_wildcard_falls_back_to_ipv4(monkeypatch):
    real = listen._bound

    def no_v6(family, addr, v6only=False, kind=socket.SOCK_STREAM):  # type: ignore[no-untyped-def]
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return real(family, addr, v6only, kind)

    monkeypatch.setattr(listen, "_bound", no_v6)
    socks = listen.tcp_sockets("", 0)
    assert [s.family for s in socks] == [socket.AF_INET]
    socks[0].close()


def test_a_specific_host_gets_one_socket_and_a_taken_port_fails():
    first = listen.tcp_sockets("127.0.0.1", 0)[0]
    first.listen()
    port = first.getsockname()[1]
    try:
        with pytest.raises(ListenError) as info:
            listen.tcp_sockets("127.0.0.1", port, "-api")
        assert str(info.value) == f"-api 127.0.0.1:{port}: address already in use"
        with pytest.raises(ListenError, match=f"-ingest.fast 127.0.0.1:{port}: address already in use"):
            trio.run(listen.open_tcp_listeners, "127.0.0.1", port, "-ingest.fast")
        with pytest.raises(ListenError, match=f"-cluster 127.0.0.1:{port}: address already in use"):
            listen.check_free("127.0.0.1", port, "-cluster")
    finally:
        first.close()


def test_a_taken_udp_port_fails_the_gossip_check():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    try:
        with pytest.raises(ListenError, match="address already in use"):
            listen.check_free("127.0.0.1", port, "-cluster")
    finally:
        udp.close()
    listen.check_free("127.0.0.1", port, "-cluster")  # free again


def test_other_bind_errors_name_the_address():
    with pytest.raises(ListenError, match=r"-api 192\.0\.2\.1:7650: no such address"):
        listen.tcp_sockets("192.0.2.1", 7650, "-api")
    with pytest.raises(ListenError, match="-api no-such-host.invalid:7650"):
        listen.tcp_sockets("no-such-host.invalid", 7650, "-api")
