"""TLS on the public listener, and TLS with a client certificate (mTLS) to the upstream."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import run_stack

from demo_backend.app import create_app
from gateway.demo_keys import ensure_demo_keys


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, cn: str,
           usage: x509.ObjectIdentifier) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Portcullis Test CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(d / "ca.pem", d / "server.pem", d / "server-key.pem", d / "client.pem",
              d / "client-key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server, server_key = _issue(ca_key, ca_name, "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH)
    client, client_key = _issue(ca_key, ca_name, "gateway", ExtendedKeyUsageOID.CLIENT_AUTH)
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.server_key, server_key)
    _write_key(pki.client_key, client_key)
    return pki


def _client_ctx(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


async def test_public_listener_serves_tls(tmp_path: Path, pki: Pki) -> None:
    listeners = {"public": {"host": "127.0.0.1", "port": 0, "tls_cert": str(pki.server_cert),
                            "tls_key": str(pki.server_key)},
                 "admin": {"host": "127.0.0.1", "port": 0}}
    async with run_stack(tmp_path, listeners=listeners) as st, aiohttp.ClientSession() as s:
        url = f"https://127.0.0.1:{st.gateway.public_port}"
        async with s.get(url + "/__debug/echo", headers=st.auth(), ssl=_client_ctx(pki)) as r:
            echo = await r.json()
        with pytest.raises(aiohttp.ClientError):
            await s.get(f"http://127.0.0.1:{st.gateway.public_port}/healthz")
    assert r.status == 200
    forwarded = {k.lower(): v for k, v in echo["headers"]}
    assert forwarded["x-forwarded-proto"] == "https"


@asynccontextmanager
async def _mtls_backend(tmp: Path, pki: Pki) -> AsyncIterator[str]:
    keys = ensure_demo_keys(tmp / "keys")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(create_app(keys.identity_jwks, debug_routes=True))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_upstream_mtls_with_client_certificate(tmp_path: Path, pki: Pki) -> None:
    tls = {"ca_file": str(pki.ca), "client_cert": str(pki.client_cert),
           "client_key": str(pki.client_key)}
    async with _mtls_backend(tmp_path, pki) as url:
        async with run_stack(tmp_path, backend_url=url, upstream_tls=tls) as st, \
                aiohttp.ClientSession() as s:
            async with s.get(st.url + "/api/quotes/600519.SH", headers=st.auth()) as r:
                body = await r.json()
    assert r.status == 200 and body["symbol"] == "600519.SH"


async def test_upstream_mtls_without_client_certificate_fails_502(tmp_path: Path, pki: Pki) -> None:
    async with _mtls_backend(tmp_path, pki) as url:
        async with run_stack(tmp_path, backend_url=url, upstream_tls={"ca_file": str(pki.ca)}) as st, \
                aiohttp.ClientSession() as s:
            async with s.get(st.url + "/api/quotes/600519.SH", headers=st.auth()) as r:
                body = await r.json()
    assert r.status == 502 and body["error"] in ("upstream_unreachable", "upstream_bad_response")


async def test_upstream_with_untrusted_certificate_fails_502(tmp_path: Path, pki: Pki) -> None:
    # No ca_file: the system trust store does not know our test CA.
    async with _mtls_backend(tmp_path, pki) as url:
        async with run_stack(tmp_path, backend_url=url) as st, aiohttp.ClientSession() as s:
            async with s.get(st.url + "/api/quotes/600519.SH", headers=st.auth()) as r:
                body = await r.json()
    assert (r.status, body["error"]) == (502, "upstream_unreachable")
