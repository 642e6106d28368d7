"""Microseconds per SM2 operation, SM4-GCM throughput and SM3 cost, against an ES256 verify in the same run.

    .venv/bin/python loadtests/sm_cost.py [--n 200] [--rounds 7] [--compare-site /tmp/smv/lib/python3.11/site-packages]

What docs/CRYPTO.md reports and the choice of SM2 library rests on:

* ``sm2``: :mod:`gateway.crypto.sm2` (gmssl-pyx underneath): keygen, sign and verify of
  256 bytes (Z and SM3 computed in Python), encrypt and decrypt of a 32-byte key, loading
  a private key from bytes (public key computed in Python);
* ``gmssl_pyx``: the binding called directly, including ``sm2_sign`` (message API) against
  ``sm2_sign_sm3_digest``, which is what the module uses;
* ``tongsuopy`` and ``gmssl`` (pure Python, K from ``secrets``): only when importable, e.g.
  from the scratch venv given with ``--compare-site`` (appended to ``sys.path``, so the
  project's own packages win);
* ``sm4_gcm``: :mod:`gateway.crypto.sm4_gcm` on 1 MiB (MB/s, 10**6 bytes) and on a 1 KiB
  body (us), encrypt and decrypt; ``sm3_1k``: one SM3 of 1 KiB;
* ``es256_verify``: one P-256 ECDSA verify with ``cryptography``, the machine baseline.

Each number is the median over ``--rounds`` rounds of the mean over ``--n`` calls. Prints
one JSON object (with the CPU model and the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gmssl_pyx  # noqa: E402

from gateway.crypto import sm3, sm4_gcm  # noqa: E402
from gateway.crypto.sm2 import Sm2PrivateKey  # noqa: E402


def per_op(fn: Callable[[], object], n: int, rounds: int) -> float:
    """Median over rounds of the mean microseconds per call."""
    fn()
    means = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        means.append((time.perf_counter() - t0) / n * 1e6)
    return round(statistics.median(means), 1)


def sm2_module(n: int, rounds: int) -> dict[str, float]:
    key = Sm2PrivateKey.generate()
    pub = key.public_key()
    msg = secrets.token_bytes(256)
    sig = key.sign(msg)
    ct = pub.encrypt(secrets.token_bytes(32))
    raw = key.to_bytes()
    return {
        "keygen": per_op(Sm2PrivateKey.generate, n, rounds),
        "sign": per_op(lambda: key.sign(msg), n, rounds),
        "verify": per_op(lambda: pub.verify(sig, msg), n, rounds),
        "encrypt_32B": per_op(lambda: pub.encrypt(b"k" * 32), n, rounds),
        "decrypt_32B": per_op(lambda: key.decrypt(ct), n, rounds),
        "private_from_bytes": per_op(lambda: Sm2PrivateKey.from_bytes(raw), max(1, n // 10), rounds),
    }


def gmssl_pyx_direct(n: int, rounds: int) -> dict[str, float]:
    pub, priv = gmssl_pyx.sm2_key_generate()
    msg = secrets.token_bytes(256)
    sig = gmssl_pyx.sm2_sign(priv, pub, msg)
    e = sm3.digest(msg)
    dsig = gmssl_pyx.sm2_sign_sm3_digest(priv, e)
    ct = gmssl_pyx.sm2_encrypt(pub, b"k" * 32)
    return {
        "keygen": per_op(gmssl_pyx.sm2_key_generate, n, rounds),
        "sign_message_api": per_op(lambda: gmssl_pyx.sm2_sign(priv, pub, msg), max(1, n // 4), rounds),
        "sign_digest": per_op(lambda: gmssl_pyx.sm2_sign_sm3_digest(priv, e), n, rounds),
        "verify_message_api": per_op(lambda: gmssl_pyx.sm2_verify(pub, msg, sig), n, rounds),
        "verify_digest": per_op(lambda: gmssl_pyx.sm2_verify_sm3_digest(pub, e, dsig), n, rounds),
        "encrypt_32B": per_op(lambda: gmssl_pyx.sm2_encrypt(pub, b"k" * 32), n, rounds),
        "decrypt_32B": per_op(lambda: gmssl_pyx.sm2_decrypt(priv, ct), n, rounds),
    }


def tongsuopy_direct(n: int, rounds: int) -> dict[str, float] | str:
    try:
        from tongsuopy.crypto import hashes as th
        from tongsuopy.crypto.asymciphers import ec as tec
    except ImportError:
        return "not importable (try --compare-site)"
    key = tec.generate_private_key(tec.SM2())
    pub = key.public_key()
    msg = secrets.token_bytes(256)
    algo = tec.ECDSA(th.SM3())
    sig = key.sign(msg, algo)
    return {
        "keygen": per_op(lambda: tec.generate_private_key(tec.SM2()), n, rounds),
        "sign": per_op(lambda: key.sign(msg, algo), n, rounds),
        "verify": per_op(lambda: pub.verify(sig, msg, algo), n, rounds),
    }


def gmssl_pure(rounds: int) -> dict[str, float] | str:
    try:
        from gmssl import sm2 as gs
    except ImportError:
        return "not importable"
    key = Sm2PrivateKey.generate()
    c = gs.CryptSM2(private_key=key.to_bytes().hex(), public_key=key.public_key().to_bytes()[1:].hex())
    e = sm3.digest(b"data")
    sig = c.sign(e, secrets.token_hex(32))
    return {
        "sign_digest": per_op(lambda: c.sign(e, secrets.token_hex(32)), 5, rounds),
        "verify_digest": per_op(lambda: c.verify(sig, e), 5, rounds),
    }


def symmetric(n: int, rounds: int) -> dict[str, float]:
    key, iv, aad = secrets.token_bytes(16), secrets.token_bytes(12), b"order"
    mib = secrets.token_bytes(1 << 20)
    kib = secrets.token_bytes(1024)
    sealed_mib = sm4_gcm.encrypt(key, iv, mib, aad)
    sealed_kib = sm4_gcm.encrypt(key, iv, kib, aad)
    enc_mib = per_op(lambda: sm4_gcm.encrypt(key, iv, mib, aad), 5, rounds)
    dec_mib = per_op(lambda: sm4_gcm.decrypt(key, iv, sealed_mib, aad), 5, rounds)
    return {
        "sm4_gcm_encrypt_1MiB_MBps": round(len(mib) / enc_mib, 1),
        "sm4_gcm_decrypt_1MiB_MBps": round(len(mib) / dec_mib, 1),
        "sm4_gcm_encrypt_1KiB_us": per_op(lambda: sm4_gcm.encrypt(key, iv, kib, aad), n * 10, rounds),
        "sm4_gcm_decrypt_1KiB_us": per_op(lambda: sm4_gcm.decrypt(key, iv, sealed_kib, aad), n * 10, rounds),
        "sm3_1KiB_us": per_op(lambda: sm3.digest(kib), n * 10, rounds),
    }


def es256_verify(n: int, rounds: int) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    sig = key.sign(b"payload", ec.ECDSA(hashes.SHA256()))
    return per_op(lambda: pub.verify(sig, b"payload", ec.ECDSA(hashes.SHA256())), n, rounds)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compare-site", help="a site-packages folder holding tongsuopy (appended to sys.path)")
    args = parser.parse_args()
    if args.compare_site:
        sys.path.append(args.compare_site)
    out: dict[str, Any] = {"cpu": _cpu(), "cores": os.cpu_count(), "loadavg_before": os.getloadavg()}
    out["es256_verify_us"] = es256_verify(args.n, args.rounds)
    out["sm2"] = sm2_module(args.n, args.rounds)
    out["gmssl_pyx"] = gmssl_pyx_direct(args.n, args.rounds)
    out["tongsuopy"] = tongsuopy_direct(args.n, args.rounds)
    out["gmssl_pure_python"] = gmssl_pure(args.rounds)
    out.update(symmetric(args.n, args.rounds))
    out["sm2_sign_over_es256_verify"] = round(out["sm2"]["sign"] / out["es256_verify_us"], 2)
    out["sm2_decrypt_over_es256_verify"] = round(out["sm2"]["decrypt_32B"] / out["es256_verify_us"], 2)
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
