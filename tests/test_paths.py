"""Path normalisation: canonical forms, and every ambiguous form refused."""

import pytest

from gateway.errors import GatewayError
from gateway.paths import normalise_target


@pytest.mark.parametrize(("target", "path", "query"), [
    ("/api/quotes/600519.SH", "/api/quotes/600519.SH", ""),
    ("/api/accounts/A1/orders?status=open", "/api/accounts/A1/orders", "status=open"),
    ("/api//accounts///A1", "/api/accounts/A1", ""),
    ("/api/./accounts/A1", "/api/accounts/A1", ""),
    ("/api/x/../accounts/A1", "/api/accounts/A1", ""),
    ("/api/%41ccounts/A1", "/api/Accounts/A1", ""),
    ("/api/quotes/%c3%a9", "/api/quotes/%C3%A9", ""),
    ("/api/accounts/A1/", "/api/accounts/A1/", ""),
    ("/", "/", ""),
])
def test_canonical_form(target: str, path: str, query: str) -> None:
    assert normalise_target(target) == (path, query)


@pytest.mark.parametrize("target", [
    "/api/accounts/A1/%2e%2e/B9",       # encoded dot segment
    "/api/accounts/A1/%2E./B9",
    "/api/accounts/A1%2fB9",            # encoded slash
    "/api/accounts/A1%2FB9",
    "/api/accounts/A1%5cB9",            # encoded backslash
    "/api/accounts\\A1",                # raw backslash
    "/api/accounts/A1%00",              # encoded NUL
    "/api/accounts/A1\x00",             # raw NUL
    "/api/accounts/A1%0d%0aX-Evil:1",   # encoded CRLF
    "/api/quotes/a b",                  # space
    "/api/quotes/\u00e9",               # raw non-ASCII
    "/../etc/passwd",                   # above the root
    "/api/../../x",
    "/api/quotes/%zz",                  # malformed escape
    "/api/quotes/%4",
    "/api/quotes/x#frag",
    "http://evil.example/api/quotes/x", # absolute-form
    "*",
    "/api/quotes/x?a=%zz",              # malformed escape in the query
    "/api/quotes/x?a=b c",
])
def test_ambiguous_target_refused(target: str) -> None:
    with pytest.raises(GatewayError) as err:
        normalise_target(target)
    assert err.value.code == "bad_path"
    assert err.value.status == 400


def test_overlong_target_refused() -> None:
    with pytest.raises(GatewayError) as err:
        normalise_target("/api/" + "a" * 3000, max_length=2048)
    assert err.value.code == "bad_path"


def test_query_kept_raw() -> None:
    assert normalise_target("/x?account=A1&account=B9") == ("/x", "account=A1&account=B9")
