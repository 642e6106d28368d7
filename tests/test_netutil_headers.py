"""Client IP from trusted proxies only; hop-by-hop and identity headers stripped."""

import ipaddress

import pytest

from gateway.errors import GatewayError
from gateway.headers import dropped_headers, response_headers, upstream_headers
from gateway.identity import terminal_info
from gateway.netutil import client_ip, is_trusted

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))


def test_untrusted_peer_ignores_forwarded_for() -> None:
    assert client_ip("203.0.113.9", ["1.2.3.4"], TRUSTED) == "203.0.113.9"


def test_trusted_peer_uses_rightmost_untrusted_hop() -> None:
    # The client wrote "6.6.6.6" itself; our proxy 10.0.0.2 appended the real client.
    assert client_ip("127.0.0.1", ["6.6.6.6, 198.51.100.7, 10.0.0.2"], TRUSTED) == "198.51.100.7"


def test_multiple_forwarded_for_headers_are_one_list() -> None:
    assert client_ip("127.0.0.1", ["6.6.6.6", "198.51.100.7"], TRUSTED) == "198.51.100.7"


def test_garbage_forwarded_for_from_trusted_proxy_refused() -> None:
    with pytest.raises(GatewayError) as err:
        client_ip("127.0.0.1", ["not-an-ip"], TRUSTED)
    assert err.value.code == "bad_header"


def test_no_trusted_proxies_means_peer() -> None:
    assert client_ip("127.0.0.1", ["1.2.3.4"], ()) == "127.0.0.1"
    assert not is_trusted("127.0.0.1", ())


def test_upstream_headers_drop_hop_by_hop_identity_and_credentials() -> None:
    inbound = [
        ("Host", "gw"), ("Connection", "keep-alive, X-Secret-Hop"), ("X-Secret-Hop", "1"),
        ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"), ("TE", "trailers"),
        ("Upgrade", "h2c"), ("Proxy-Authorization", "x"), ("Authorization", "Bearer t"),
        ("X-User-Id", "admin"), ("X-Portcullis-Identity", "forged"), ("X-Remote-User", "root"),
        ("X-Forwarded-For", "6.6.6.6"), ("Accept", "application/json"), ("Accept", "text/plain"),
        ("User-Agent", "app/1.0"),
    ]
    out = upstream_headers(inbound, ["keep-alive, X-Secret-Hop"],
                           ("x-user-", "x-portcullis-", "x-remote-user"), dropped_headers(True))
    assert out == {"accept": "application/json, text/plain", "user-agent": "app/1.0"}


@pytest.mark.parametrize("name", [
    "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Original-URL",
    "X-Rewrite-URL", "X_User_Id", "x_portcullis_identity", "Expect",
])
def test_method_override_underscore_and_expect_headers_dropped(name: str) -> None:
    out = upstream_headers([(name, "DELETE"), ("Accept", "*/*")], [], ("x-user-",), dropped_headers(True))
    assert out == {"accept": "*/*"}


def test_bare_mode_keeps_credentials() -> None:
    out = upstream_headers([("Authorization", "Bearer t")], [], (), dropped_headers(False))
    assert out == {"authorization": "Bearer t"}


def test_response_headers_drop_hop_by_hop_keep_encoding() -> None:
    out = response_headers([("Content-Encoding", "gzip"), ("Connection", "close"),
                            ("Transfer-Encoding", "chunked"), ("X-Order", "1")], ["close"])
    assert out == [("Content-Encoding", "gzip"), ("X-Order", "1")]


def test_terminal_info_is_sanitised() -> None:
    value = terminal_info(client_ip="198.51.100.7", client_port=51000, device_id="dev;X=1",
                          user_agent="evil\r\nX-Injected: 1")
    assert value == "TYPE=API;IIP=198.51.100.7;IPORT=51000;DEVID=dev_X_1;UA=evil__X-Injected: 1"
    assert "\r" not in value and "\n" not in value
