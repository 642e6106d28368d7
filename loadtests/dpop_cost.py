"""Microseconds per DPoP proof check (RFC 9449), against ES256 verification alone in the same run.

    .venv/bin/python loadtests/dpop_cost.py [--n 5000] [--rounds 5]

A proof is new on every request, so its ECDSA verification cannot be cached:
that is the floor. Each round times, interleaved, N calls of:

* ``es256_verify``: ``cryptography``'s P-256 verify of one 64-byte JOSE
  signature on a loaded key (DER conversion included): the floor;
* ``pyjwt_decode``: what a straightforward implementation does: read the
  unverified header, build the key from the ``jwk`` with ``PyJWK`` and
  ``jwt.decode`` the proof (no claim checks beyond pyjwt's own);
* ``verifier_cold``: :class:`ProofVerifier` without its header cache (parse
  the header, load the key, thumbprint, claims, signature);
* ``verifier_warm``: the same with the header cache (one device's proofs
  share a header segment): what the gateway pays per request;
* ``authenticate_with_proof``: the Authenticate step on a cached token with a
  proof, including queueing the ``jti`` on the state round (memory store,
  the round itself not run), minus ``authenticate_without_proof``;
* ``eddsa_warm``: the warm verifier on an Ed25519 proof (``algorithms``
  including EdDSA).

Proofs are made beforehand (unique ``jti`` each). Prints one JSON object:
medians over the rounds in microseconds per call, and each one's ratio to
``es256_verify`` of the same round.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from multidict import CIMultiDict, CIMultiDictProxy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import route_config  # noqa: E402

from gateway.authn.dpop import ProofVerifier  # noqa: E402
from gateway.authn.tokens import TokenVerifier  # noqa: E402
from gateway.client import DeviceKey, access_token_hash  # noqa: E402
from gateway.config import DpopConfig, IssuerConfig  # noqa: E402
from gateway.context import RequestContext  # noqa: E402
from gateway.demo_keys import DEMO_AUDIENCE, DEMO_ISSUER, ensure_demo_keys, mint_token  # noqa: E402
from gateway.state.memory import MemoryStore  # noqa: E402
from gateway.steps.authenticate import Authenticate, DeviceProofs  # noqa: E402

ORIGIN = "http://127.0.0.1:8080"
PATH = "/api/quotes/600519.SH"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _eddsa_proof(key: ed25519.Ed25519PrivateKey, token: str, jti: str) -> str:
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64(key.public_key().public_bytes_raw())}
    header = _b64(json.dumps({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk}).encode())
    claims = {"jti": jti, "htm": "GET", "htu": ORIGIN + PATH, "iat": int(time.time()),
              "ath": access_token_hash(token)}
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode()))}"


def _time(fn: Callable[[int], object], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def _round(r: int, n: int, tokens: TokenVerifier, token: str, device: DeviceKey,
           ed_key: ed25519.Ed25519PrivateKey) -> dict[str, float]:
    route = route_config(name="quotes", path="/api/quotes/{symbol}", tier="read", fail_mode="open")
    ath = access_token_hash(token)
    origins = frozenset({ORIGIN})
    out: dict[str, float] = {}
    proofs = [device.proof("GET", ORIGIN + PATH, token, jti=f"{r}-{i}") for i in range(n)]
    ed_proofs = [_eddsa_proof(ed_key, token, f"e{r}-{i}") for i in range(n)]
    head, payload, sig = proofs[0].split(".")
    signing_input = f"{head}.{payload}".encode()
    raw = _b64d(sig)
    numbers = json.loads(_b64d(head))["jwk"]
    pub = ec.EllipticCurvePublicNumbers(int.from_bytes(_b64d(numbers["x"]), "big"),
                                        int.from_bytes(_b64d(numbers["y"]), "big"), ec.SECP256R1()).public_key()
    algo = ec.ECDSA(hashes.SHA256())

    def es256(i: int) -> None:
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        pub.verify(der, signing_input, algo)

    def pyjwt(i: int) -> None:
        p = proofs[i]
        header = jwt.get_unverified_header(p)
        key = jwt.PyJWK(header["jwk"], algorithm="ES256")
        jwt.decode(p, key.key, algorithms=["ES256"], options={"verify_aud": False})

    cold = ProofVerifier(key_cache_size=0)
    warm = ProofVerifier()
    ed_warm = ProofVerifier(algorithms=("ES256", "EdDSA"))
    now = time.time()

    def run(v: ProofVerifier, items: list[str]) -> Callable[[int], object]:
        return lambda i: v.verify(items[i], method="GET", path=PATH, origins=origins, ath=ath, now=now)

    proofs_step = DeviceProofs(DpopConfig(origins=(ORIGIN,)), MemoryStore())
    with_proof = Authenticate(tokens, proofs_step)

    def ctx(dpop: str | None) -> RequestContext:
        headers: CIMultiDict[str] = CIMultiDict(Authorization=f"Bearer {token}", Host="127.0.0.1:8080")
        if dpop is not None:
            headers["DPoP"] = dpop
        return RequestContext(request_id="r", method="GET", path=PATH, query="", route=route,
                              params={"symbol": "600519.SH"}, headers=CIMultiDictProxy(headers),
                              client_ip="127.0.0.1", client_port=1, scheme="http", started=0.0, now=now)

    ctxs = [ctx(p) for p in proofs]
    plain = [ctx(None) for _ in range(n)]

    out["es256_verify"] = _time(es256, n)
    out["pyjwt_decode"] = _time(pyjwt, n)
    out["verifier_cold"] = _time(run(cold, proofs), n)
    out["verifier_warm"] = _time(run(warm, proofs), n)
    out["eddsa_warm"] = _time(run(ed_warm, ed_proofs), n)
    out["authenticate_without_proof"] = _time(lambda i: with_proof(plain[i]), n)
    out["authenticate_with_proof"] = _time(lambda i: with_proof(ctxs[i]), n)
    return out


async def _main(n: int, rounds: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="dpop-cost-"))
    keys = ensure_demo_keys(tmp / "keys")
    token = mint_token(keys, sub="alice", accounts=["A1"])
    issuer = IssuerConfig(iss=DEMO_ISSUER, audience=(DEMO_AUDIENCE,), algorithms=("ES256",),
                          jwks_file=keys.issuer_jwks, jwks_url=None, leeway=30, jwks_min_refetch_interval=30)
    tokens = TokenVerifier([issuer])
    await tokens.start()
    await tokens.verify(token)  # warm claims cache, as on every request after the first
    device = DeviceKey.generate()
    ed_key = ed25519.Ed25519PrivateKey.generate()
    results: dict[str, list[float]] = {}
    for r in range(rounds):
        for name, us in _round(r, n, tokens, token, device, ed_key).items():
            results.setdefault(name, []).append(us)

    medians = {name: round(statistics.median(v), 1) for name, v in results.items()}
    ratios = {f"{name}/es256_verify": round(statistics.median(
        a / b for a, b in zip(v, results["es256_verify"], strict=True)), 2)
        for name, v in results.items() if name != "es256_verify"}
    return {"n": n, "rounds": rounds, "us_per_call": medians, "ratio_to_es256_verify": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import asyncio

    print(json.dumps(asyncio.run(_main(args.n, args.rounds))))


if __name__ == "__main__":
    main()
