import pytest

from oklog.addr import api_url, join_host_port, parse_addr, split_addr
from oklog.errors import ConfigError


@pytest.mark.parametrize(
    "s, want",
    [
        ("localhost", ("localhost", 7651)),
        ("localhost:1234", ("localhost", 1234)),
        (":1234", ("0.0.0.0", 1234)),
        ("tcp://host.example.com:99", ("host.example.com", 99)),
        ("tcp://host", ("host", 7651)),
        ("TCP://host:5", ("host", 5)),
        ("tcp://:7652", ("0.0.0.0", 7652)),
        ("tcp://0.0.0.0:7650", ("0.0.0.0", 7650)),
        ("10.1.2.3", ("10.1.2.3", 7651)),
        ("10.1.2.3:0", ("10.1.2.3", 0)),
        ("[::1]:7650", ("::1", 7650)),
        ("[::1]", ("::1", 7651)),
        ("tcp://[fe80::1%eth0]:9", ("fe80::1%eth0", 9)),
        ("::1", ("::1", 7651)),
        ("  spaced:1 ", ("spaced", 1)),
        ("my_host-1.local:65535", ("my_host-1.local", 65535)),
    ],
)
def test_parse_addr_ok(s, want):
    assert parse_addr(s, 7651) == want


def test_parse_addr_default_host():
    assert parse_addr(":9", 1, default_host="127.0.0.1") == ("127.0.0.1", 9)
    assert parse_addr("tcp://:9", 1, default_host="::") == ("::", 9)


@pytest.mark.parametrize(
    "s",
    [
        "",
        "   ",
        "host:",
        "host:abc",
        "host:-1",
        "host:65536",
        "host:99999999999999999999",
        "udp://host:1",
        "http://host:1",
        "tcp://",
        "tcp://host:1/path",
        "host:1:2",
        "[::1",
        "[::1]x",
        "[nothex]:1",
        "user@host:1",
        "ho st:1",
        "-host",
        "host:１２",  # non-ASCII digits
    ],
)
def test_parse_addr_bad(s):
    with pytest.raises(ConfigError) as e:
        parse_addr(s, 7651)
    assert "\n" not in str(e.value)
    assert str(e.value)


def test_split_addr():
    assert split_addr("tcp+dns://Name:1") == ("tcp+dns", "Name", 1)
    assert split_addr("tcp+dnssrv://_oklog._tcp.example.com") == ("tcp+dnssrv", "_oklog._tcp.example.com", None)
    assert split_addr(":5") == (None, None, 5)


def test_join_host_port():
    assert join_host_port("::1", 5) == "[::1]:5"
    assert join_host_port("h", 5) == "h:5"


@pytest.mark.parametrize(
    "s, want",
    [
        ("localhost", "http://localhost:7650"),
        ("localhost:7650", "http://localhost:7650"),
        ("localhost:8000", "http://localhost:8000"),
        ("http://h:1", "http://h:1"),
        ("http://h:1/", "http://h:1"),
        ("http://h", "http://h:7650"),
        ("https://h:443", "https://h:443"),
        ("tcp://h:2", "http://h:2"),
        ("tcp://0.0.0.0:7650", "http://127.0.0.1:7650"),
        (":7650", "http://127.0.0.1:7650"),
        ("[::]:7650", "http://[::1]:7650"),
        ("[::1]:7650", "http://[::1]:7650"),
    ],
)
def test_api_url(s, want):
    assert api_url(s) == want


@pytest.mark.parametrize("s", ["udp://h:1", "h:x", "http://h:1/store", ""])
def test_api_url_bad(s):
    with pytest.raises(ConfigError):
        api_url(s)
