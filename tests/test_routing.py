"""Routing: specificity, parameters, 404 and 405."""

from pathlib import Path

import pytest

from gateway.config import parse
from gateway.errors import GatewayError
from gateway.routing import MethodNotAllowed, Router


def _router() -> Router:
    cfg = parse({
        "gateway": {"security": False},
        "upstreams": {"t": {"url": "http://127.0.0.1:1"}},
        "routes": [
            {"name": "quote", "path": "/api/quotes/{symbol}", "upstream": "t", "tier": "read"},
            {"name": "stream", "path": "/api/quotes/stream", "upstream": "t", "tier": "read"},
            {"name": "orders", "methods": ["GET"], "path": "/api/accounts/{account}/orders",
             "upstream": "t", "tier": "read", "account_param": "account"},
            {"name": "place", "methods": ["POST"], "path": "/api/accounts/{account}/orders",
             "upstream": "t", "tier": "trade", "account_param": "account"},
        ],
    }, Path("."))
    return Router(cfg.routes)


def test_literal_beats_parameter_whatever_the_order() -> None:
    route, params = _router().match("GET", "/api/quotes/stream")
    assert route.name == "stream" and params == {}


def test_parameters_extracted_and_decoded() -> None:
    route, params = _router().match("GET", "/api/quotes/%C3%A9")
    assert route.name == "quote" and params == {"symbol": "\u00e9"}


def test_method_selects_route() -> None:
    assert _router().match("POST", "/api/accounts/A1/orders")[0].name == "place"
    assert _router().match("GET", "/api/accounts/A1/orders")[0].name == "orders"


def test_unknown_path_is_404() -> None:
    with pytest.raises(GatewayError) as err:
        _router().match("GET", "/api/nothing")
    assert (err.value.code, err.value.status) == ("route_not_found", 404)


def test_wrong_method_is_405_with_allowed_methods() -> None:
    with pytest.raises(MethodNotAllowed) as err:
        _router().match("PUT", "/api/accounts/A1/orders")
    assert err.value.status == 405
    assert err.value.allowed == ("GET", "POST")


def test_trailing_slash_is_a_different_path() -> None:
    with pytest.raises(GatewayError):
        _router().match("GET", "/api/quotes/X/")
