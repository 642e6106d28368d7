"""Configuration: the example loads; every invalid file names the key and the problem."""

from pathlib import Path
from typing import Any

import pytest

from gateway.config import GUARDED_TIERS, load, parse
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _minimal(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "issuers": [{"iss": "https://idp", "audience": ["gw"], "jwks_file": "jwks.json",
                     "algorithms": ["ES256"]}],
        "identity": {"signing_key": "id.pem"},
        "upstreams": {"t": {"url": "http://127.0.0.1:9000"}},
        "routes": [{"path": "/api/accounts/{account}", "upstream": "t", "tier": "read",
                    "account_param": "account"}],
    }
    data.update(over)
    return data


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTCULLIS_BACKEND_INTERNAL_TOKEN", "t" * 32)
    cfg = load(ROOT / "examples" / "portcullis.toml")
    assert cfg.policy.engine == "rego" and cfg.policy.bundle is not None
    assert cfg.policy.bundle.resolve() == ROOT / "policies"
    assert cfg.public.port == 8080 and cfg.admin.port == 8081
    assert cfg.admin.host == "127.0.0.1"
    assert {r.tier for r in cfg.routes} >= {"read", "trade", "transfer"}
    assert all(r.fail_mode == "closed" for r in cfg.routes if r.tier in GUARDED_TIERS)


def test_config_objects_are_frozen() -> None:
    cfg = parse(_minimal(), Path("/etc/portcullis"))
    with pytest.raises(AttributeError):
        cfg.public.port = 1  # type: ignore[misc]


def test_relative_paths_resolve_against_config_folder() -> None:
    cfg = parse(_minimal(), Path("/etc/portcullis"))
    assert cfg.issuers[0].jwks_file == Path("/etc/portcullis/jwks.json")


def test_sizes_accept_units() -> None:
    data = _minimal()
    data["routes"][0]["body_limit"] = "16KiB"
    assert parse(data, Path(".")).routes[0].body_limit == 16384


@pytest.mark.parametrize(("change", "message"), [
    ({"gateway": {"secuirty": True}}, "gateway.secuirty: unknown key"),
    ({"listeners": {"public": {"port": 70000}}}, "listeners.public.port: must be between 0 and 65535"),
    ({"listeners": {"public": {"port": "8080"}}}, "listeners.public.port: expected integer, got str"),
    ({"listeners": {"public": {"tls_cert": "/nonexistent.pem"}}}, "listeners.public.tls_cert: file"),
    ({"network": {"trusted_proxies": ["10.0.0.0/33"]}}, "network.trusted_proxies[0]: '10.0.0.0/33' is not a CIDR"),
    ({"upstreams": {"t": {"url": "ftp://x"}}}, "upstreams.t.url: must start with http://"),
    ({"state": {"backend": "etcd"}}, "state.backend: must be one of memory, redis"),
    ({"notifier": {"sink": "file"}}, "notifier.path: required"),
])
def test_invalid_values_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(_minimal(**change), Path("."))
    assert message in str(err.value)


@pytest.mark.parametrize(("route_change", "message"), [
    ({"tier": "vip"}, "routes[0].tier: must be one of public, read, trade, transfer, admin"),
    ({"upstream": "nowhere"}, "routes[0].upstream: unknown upstream 'nowhere'"),
    ({"path": "api/x"}, "routes[0].path: must start with '/'"),
    ({"path": "/api/{1x}"}, "routes[0].path: '{1x}' is not a valid parameter name"),
    ({"account_param": "acct"}, "routes[0].account_param: 'acct' is not a parameter"),
    ({"tier": "trade", "fail_mode": "open"}, "routes[0].fail_mode: trade routes always fail closed"),
    ({"body_limit": "lots"}, "routes[0].body_limit: expected a size"),
    ({"read_timeout": -1}, "routes[0].read_timeout: must be >= 0"),
    ({"websocket": "yes"}, "routes[0].websocket: expected boolean"),
])
def test_invalid_routes_name_the_key(route_change: dict[str, Any], message: str) -> None:
    data = _minimal()
    data["routes"][0].update(route_change)
    with pytest.raises(ConfigError) as err:
        parse(data, Path("."))
    assert message in str(err.value)


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_symmetric_and_none_algorithms_refused(alg: str) -> None:
    data = _minimal()
    data["issuers"][0]["algorithms"] = [alg]
    with pytest.raises(ConfigError, match="issuers\\[0\\].algorithms"):
        parse(data, Path("."))


def test_issuer_needs_exactly_one_jwks_source() -> None:
    data = _minimal()
    data["issuers"][0]["jwks_url"] = "https://idp/jwks"
    with pytest.raises(ConfigError, match="exactly one of jwks_file or jwks_url"):
        parse(data, Path("."))


def test_security_requires_issuers_and_identity_key() -> None:
    with pytest.raises(ConfigError, match="issuers: at least one issuer"):
        parse(_minimal(issuers=[]), Path("."))
    data = _minimal()
    del data["identity"]
    with pytest.raises(ConfigError, match="identity: required table is missing"):
        parse(data, Path("."))


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\nname = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)
