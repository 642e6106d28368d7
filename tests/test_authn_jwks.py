"""JwksSource: what a key set may contain, and how often it is fetched."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.authn.jwks import MAX_JWKS_BYTES, JwksError, JwksSource, default_fetcher
from gateway.config import IssuerConfig

URL = "https://idp.example/jwks.json"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeIdP:
    """A fetcher serving whatever document it holds; records each fetch."""

    def __init__(self, *jwks: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(jwks)}).encode()
        self.fetches = 0
        self.error: Exception | None = None

    def publish(self, *jwks: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(jwks)}).encode()

    async def __call__(self, url: str) -> bytes:
        self.fetches += 1
        if self.error is not None:
            raise self.error
        return self.body


def ec_jwk(kid: str | None, **extra: Any) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def issuer(interval: float = 30.0, **kwargs: Any) -> IssuerConfig:
    if "jwks_file" not in kwargs:
        kwargs["jwks_url"] = URL
    return IssuerConfig(iss="https://idp.example", audience=("portcullis",),
                        algorithms=("ES256",), jwks_min_refetch_interval=interval, **kwargs)


def source(idp: FakeIdP, clock: FakeClock | None = None, **kwargs: Any) -> JwksSource:
    return JwksSource(issuer(), fetcher=idp, clock=clock or FakeClock(), **kwargs)


# -- what a JWKS may contain -----------------------------------------------------------


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "k"])
async def test_private_key_material_refused_at_load(member: str) -> None:
    src = source(FakeIdP(ec_jwk("a"), ec_jwk("b", **{member: "AAAA"})))
    with pytest.raises(JwksError, match="private"):
        await src.load()


async def test_encryption_key_ignored() -> None:
    src = source(FakeIdP(ec_jwk("sig"), ec_jwk("enc", use="enc")))
    await src.load()
    assert src.kids == frozenset({"sig"})


async def test_key_without_verify_op_ignored() -> None:
    src = source(FakeIdP(ec_jwk("sig", key_ops=["verify"]), ec_jwk("wrap", key_ops=["wrapKey"])))
    await src.load()
    assert src.kids == frozenset({"sig"})


async def test_short_rsa_key_ignored() -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(short.public_key(), as_dict=True)
    src = source(FakeIdP(ec_jwk("ec"), {**jwk, "kid": "rsa1024"}))
    await src.load()
    assert src.kids == frozenset({"ec"})


async def test_kidless_key_allowed_when_alone() -> None:
    src = source(FakeIdP(ec_jwk(None)))
    await src.load()
    assert await src.get(None) is not None
    assert await src.get("some-kid") is None


async def test_kidless_key_among_several_refused() -> None:
    src = source(FakeIdP(ec_jwk(None), ec_jwk("b")))
    with pytest.raises(JwksError, match="no kid"):
        await src.load()


async def test_duplicate_kid_refused() -> None:
    src = source(FakeIdP(ec_jwk("a"), ec_jwk("a")))
    with pytest.raises(JwksError, match="same kid"):
        await src.load()


async def test_token_without_kid_gets_no_key_when_several() -> None:
    src = source(FakeIdP(ec_jwk("a"), ec_jwk("b")))
    await src.load()
    assert await src.get(None) is None


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"keys": {}}', b'{"keys": [1]}'])
async def test_malformed_jwks_refused(body: bytes) -> None:
    idp = FakeIdP()
    idp.body = body
    with pytest.raises(JwksError):
        await source(idp).load()


async def test_oversized_jwks_refused() -> None:
    idp = FakeIdP()
    idp.body = b" " * (MAX_JWKS_BYTES + 1)
    with pytest.raises(JwksError, match="larger"):
        await source(idp).load()


async def test_jwks_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [ec_jwk("file-key")]}))
    src = JwksSource(issuer(jwks_file=path), clock=FakeClock())
    assert await src.get("file-key") is not None


# -- refetching ------------------------------------------------------------------------


async def test_first_get_loads_keys() -> None:
    idp = FakeIdP(ec_jwk("a"))
    src = source(idp)
    assert await src.get("a") is not None
    assert idp.fetches == 1


async def test_known_kid_does_not_refetch() -> None:
    idp = FakeIdP(ec_jwk("a"))
    src = source(idp)
    for _ in range(3):
        await src.get("a")
    assert idp.fetches == 1


async def test_unknown_kids_refetch_at_most_once_per_interval() -> None:
    idp = FakeIdP(ec_jwk("a"))
    clock = FakeClock()
    src = source(idp, clock)
    await src.load()
    clock.now += 30
    for kid in ("x1", "x2", "x3"):
        assert await src.get(kid) is None
    assert idp.fetches == 2
    clock.now += 29.9
    await src.get("x4")
    assert idp.fetches == 2
    clock.now += 0.1
    await src.get("x5")
    assert idp.fetches == 3


async def test_new_kid_found_after_interval() -> None:
    idp = FakeIdP(ec_jwk("a"))
    clock = FakeClock()
    src = source(idp, clock)
    await src.load()
    idp.publish(ec_jwk("a"), ec_jwk("b"))
    assert await src.get("b") is None
    clock.now += 30
    assert await src.get("b") is not None


async def test_failed_first_load_is_rate_limited_too() -> None:
    idp = FakeIdP(ec_jwk("a"))
    idp.error = OSError("connection refused")
    src = source(idp)
    assert await src.get("a") is None
    assert await src.get("a") is None
    assert idp.fetches == 1


async def test_bad_refetch_keeps_old_keys(caplog: pytest.LogCaptureFixture) -> None:
    idp = FakeIdP(ec_jwk("a"))
    clock = FakeClock()
    src = source(idp, clock)
    await src.load()
    generation = src.generation
    idp.body = b"{ this is not json"
    clock.now += 30
    with caplog.at_level(logging.WARNING, logger="gateway.authn.jwks"):
        assert await src.get("unknown") is None
    assert (src.kids, src.generation) == (frozenset({"a"}), generation)
    assert "unusable" in caplog.text


async def test_failed_refetch_keeps_old_keys() -> None:
    idp = FakeIdP(ec_jwk("a"))
    clock = FakeClock()
    src = source(idp, clock)
    await src.load()
    idp.error = TimeoutError()
    clock.now += 30
    assert await src.get("unknown") is None
    assert await src.get("a") is not None


async def test_refetch_with_private_key_keeps_old_keys() -> None:
    idp = FakeIdP(ec_jwk("a"))
    clock = FakeClock()
    src = source(idp, clock)
    await src.load()
    idp.publish(ec_jwk("a"), ec_jwk("b", d="AAAA"))
    clock.now += 30
    assert await src.get("b") is None
    assert src.kids == frozenset({"a"})


async def test_stale_keys_refetched_after_max_age() -> None:
    idp = FakeIdP(ec_jwk("a"))
    clock = FakeClock()
    src = source(idp, clock, max_age=300.0)
    await src.load()
    idp.publish(ec_jwk("b"))
    clock.now += 300
    assert await src.get("a") is None
    assert src.kids == frozenset({"b"})


# -- generation ------------------------------------------------------------------------


async def test_generation_bumps_when_keys_change() -> None:
    idp = FakeIdP(ec_jwk("a"))
    clock = FakeClock()
    src = source(idp, clock)
    await src.load()
    before = src.generation
    idp.publish(ec_jwk("a"), ec_jwk("b"))
    clock.now += 30
    await src.get("b")
    assert src.generation == before + 1


async def test_generation_bumps_when_key_replaced_under_same_kid() -> None:
    idp = FakeIdP(ec_jwk("a"))
    clock = FakeClock()
    src = source(idp, clock)
    await src.load()
    before, old_key = src.generation, src.lookup("a")
    idp.publish(ec_jwk("a"))
    clock.now += 30
    await src.get("unknown")
    assert src.generation == before + 1
    assert src.lookup("a") is not old_key


async def test_generation_stays_when_keys_unchanged() -> None:
    same = ec_jwk("a")
    idp = FakeIdP(same)
    clock = FakeClock()
    src = source(idp, clock)
    await src.load()
    before, key = src.generation, src.lookup("a")
    clock.now += 30
    await src.get("unknown")
    assert idp.fetches == 2
    assert (src.generation, src.lookup("a")) == (before, key)


# -- the default HTTP fetcher ----------------------------------------------------------


def serving(response: web.Response) -> web.Application:
    async def handler(_: web.Request) -> web.Response:
        return response

    app = web.Application()
    app.router.add_get("/jwks", handler)
    return app


async def test_default_fetcher_reads_body(aiohttp_server: Any) -> None:
    server = await aiohttp_server(serving(web.Response(body=b'{"keys": []}')))
    assert await default_fetcher(str(server.make_url("/jwks"))) == b'{"keys": []}'


async def test_default_fetcher_caps_body_size(aiohttp_server: Any) -> None:
    server = await aiohttp_server(serving(web.Response(body=b" " * (MAX_JWKS_BYTES + 1))))
    with pytest.raises(JwksError, match="larger"):
        await default_fetcher(str(server.make_url("/jwks")))


async def test_default_fetcher_refuses_non_200(aiohttp_server: Any) -> None:
    server = await aiohttp_server(serving(web.Response(status=302, headers={"Location": "/x"})))
    with pytest.raises(JwksError, match="302"):
        await default_fetcher(str(server.make_url("/jwks")))
