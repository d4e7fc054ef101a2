"""Listening sockets: wildcard hosts cover both address families."""

import socket

import pytest

from oklog import listen


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

    def no_v6(family, addr, v6only=False):  # type: ignore[no-untyped-def]
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return real(family, addr, v6only)

    monkeypatch.setattr(listen, "_bound", no_v6)
    socks = listen.tcp_sockets("", 0)
    assert [s.family for s in socks] == [socket.AF_INET]
    socks[0].close()


def test_a_specific_host_gets_one_socket_and_a_taken_port_fails():
    first = listen.tcp_sockets("127.0.0.1", 0)[0]
    first.listen()
    try:
        with pytest.raises(OSError):
            listen.tcp_sockets("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()
