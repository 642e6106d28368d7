"""The audit witness at a second party's HTTPS endpoint: audit/witness.py HttpWitness against the reference
server (audit/witness_server.py) on loopback, over real TLS with a CA and certificate made here. No mocks:
real sockets, real signatures, the real file sink and verifier."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_config import _minimal

from audit.chain import sign_statement
from audit.keys import AuditKeys, public_keys_json
from audit.sink import FileAuditSink, segment_files
from audit.verify import verify_directory
from audit.witness import HttpWitness, WitnessError
from audit.witness_server import MAX_BODY, witness_app
from gateway.config import parse
from gateway.errors import ConfigError
from gateway.server import build_witness

TOKEN = "witness-token-" + "s3cret" * 4
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA of the second party and its server certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("witness-pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Second Party Witness CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(d / "ca.pem", d / "server.pem", d / "server-key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(_pem_key(key))
    return pki


@pytest.fixture
def keys(tmp_path: Path) -> AuditKeys:
    return AuditKeys.from_file(tmp_path / "audit-key.json", create=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serving(store: Path, keys: AuditKeys, pki: Pki, *, token: str | None = TOKEN,
                  port: int = 0) -> AsyncIterator[str]:
    """The reference witness over TLS on loopback; yields its URL."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.cert, pki.key)
    runner = web.AppRunner(witness_app(store, keys.public_keys(), token))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def witness_at(url: str, pki: Pki | None, token: str | None = TOKEN, **kw: Any) -> AsyncIterator[HttpWitness]:
    witness = HttpWitness(url, ca_file=pki.ca if pki is not None else None, token=token, **kw)
    try:
        yield witness
    finally:
        await witness.close()


def _statement(keys: AuditKeys, seq: int, *, chain: str = "20261203T000000Z-0000abcd",
               head: str | None = None) -> dict[str, Any]:
    return sign_statement(keys.signing_key, keys.current, chain=chain, seq=seq, head=head or f"{seq:064x}",
                          now=1_800_000_000.0 + seq)


async def _raw(method: str, url: str, pki: Pki, *, token: str | None = TOKEN, body: bytes | None = None,
               ) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.request(
            method, url, data=body, headers=headers, ssl=ssl.create_default_context(cafile=pki.ca)) as r:
        return r.status, await r.json(content_type=None)


# -- the client and the reference server ------------------------------------------------------------


async def test_pushed_statements_come_back_in_order_and_survive_a_restart(tmp_path: Path, keys: AuditKeys,
                                                                          pki: Pki) -> None:
    store = tmp_path / "second-party" / "statements.jsonl"
    pushed = [_statement(keys, seq) for seq in (0, 4, 9)]
    async with serving(store, keys, pki) as url, witness_at(url, pki) as witness:
        for statement in pushed:
            await witness.push(statement)
        assert await witness.statements() == pushed
        status, page = await _raw("GET", url + "/statements?after=1&limit=1", pki)
        assert status == 200 and page == {"statements": [pushed[1]], "next": 2}
    assert store.stat().st_mode & 0o777 == 0o600
    assert [orjson.loads(line) for line in store.read_bytes().splitlines()] == pushed
    async with serving(store, keys, pki) as url, witness_at(url, pki) as witness:  # the second party restarts
        await witness.push(pushed[-1])  # still known: not kept again
        assert await witness.statements() == pushed


async def test_a_statement_pushed_twice_is_kept_once(tmp_path: Path, keys: AuditKeys, pki: Pki) -> None:
    statement = _statement(keys, 3)
    async with serving(tmp_path / "w.jsonl", keys, pki) as url, witness_at(url, pki) as witness:
        await witness.push(statement)
        await witness.push(statement)  # a retry after an answer that was lost
        assert await witness.statements() == [statement]
        status, body = await _raw("POST", url + "/statements", pki, body=orjson.dumps(statement))
    assert (status, body) == (200, {"stored": False})
    assert len((tmp_path / "w.jsonl").read_bytes().splitlines()) == 1


async def test_forged_malformed_or_backward_statements_are_refused(tmp_path: Path, keys: AuditKeys,
                                                                   pki: Pki) -> None:
    other = AuditKeys.generate()
    forged = {**_statement(keys, 7), "head": "f" * 64}  # signed for another head
    async with serving(tmp_path / "w.jsonl", keys, pki) as url, witness_at(url, pki) as witness:
        for bad in (forged, _statement(other, 7)):
            with pytest.raises(WitnessError, match="HTTP 400 bad_signature"):
                await witness.push(bad)
        assert await _raw("POST", url + "/statements", pki, body=b"{not json") == (
            400, {"error": "invalid_json", "message": "the body is not JSON"})
        status, body = await _raw("POST", url + "/statements", pki, body=b'{"chain": "x"}')
        assert (status, body["error"]) == (400, "invalid_statement")
        status, body = await _raw("POST", url + "/statements", pki, body=b" " * (MAX_BODY + 1))
        assert (status, body["error"]) == (413, "body_too_large")

        await witness.push(_statement(keys, 10))
        with pytest.raises(WitnessError, match="HTTP 409 conflict"):
            await witness.push(_statement(keys, 5))  # the chain goes back
        with pytest.raises(WitnessError, match="HTTP 409 conflict"):
            await witness.push(_statement(keys, 10, head="e" * 64))  # the chain rewritten from there
        await witness.push(_statement(keys, 2, chain="20261203T000001Z-0000beef"))  # another chain is its own
        assert [(s["chain"][-4:], s["seq"]) for s in await witness.statements()] == [("abcd", 10), ("beef", 2)]


async def test_a_wrong_or_missing_token_is_refused_and_never_quoted(tmp_path: Path, keys: AuditKeys,
                                                                    pki: Pki) -> None:
    async with serving(tmp_path / "w.jsonl", keys, pki) as url:
        for token in ("wrong-" + TOKEN, None):
            async with witness_at(url, pki, token=token) as witness:
                with pytest.raises(WitnessError, match="HTTP 401 unauthorized") as err:
                    await witness.push(_statement(keys, 1))
                assert TOKEN not in str(err.value) and TOKEN not in repr(witness)
                with pytest.raises(WitnessError, match="HTTP 401 unauthorized"):
                    await witness.statements()
        status, body = await _raw("GET", url + "/statements", pki, token=None)
        assert (status, body["error"]) == (401, "unauthorized")
    assert not (tmp_path / "w.jsonl").exists()


async def test_a_certificate_the_ca_file_does_not_vouch_for_is_refused(tmp_path: Path, keys: AuditKeys,
                                                                      pki: Pki) -> None:
    async with serving(tmp_path / "w.jsonl", keys, pki) as url:
        async with witness_at(url, None) as witness:  # the system's CAs: they never signed the second party's
            with pytest.raises(WitnessError, match="certificate is not trusted"):
                await witness.push(_statement(keys, 1))
            with pytest.raises(WitnessError, match="certificate is not trusted"):
                await witness.statements()
    assert not (tmp_path / "w.jsonl").exists()


def test_plain_http_only_to_loopback_and_no_credentials_in_the_url() -> None:
    HttpWitness("http://127.0.0.1:9/")  # a witness beside the gateway (tests)
    HttpWitness("http://localhost:9")
    for url, why in (("http://witness.example", "https:// unless its host is loopback"),
                     ("https://user:pw@witness.example", "credentials"),
                     ("https://witness.example/?token=x", "a query"),
                     ("ftp://witness.example", "must be https://")):
        with pytest.raises(ValueError, match=why):
            HttpWitness(url)


async def test_a_witness_that_is_down_or_answers_nonsense_is_a_witness_error(tmp_path: Path, keys: AuditKeys,
                                                                             pki: Pki) -> None:
    async with witness_at(f"https://127.0.0.1:{_free_port()}", pki) as witness:
        with pytest.raises(WitnessError, match="cannot connect"):
            await witness.push(_statement(keys, 1))
        with pytest.raises(WitnessError, match="cannot connect"):
            await witness.statements()

    async def nonsense(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts, never answers

    app = web.Application()
    app.router.add_route("*", "/statements", nonsense)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        async with witness_at(f"http://127.0.0.1:{runner.addresses[0][1]}", None) as witness:
            with pytest.raises(WitnessError, match="not JSON"):
                await witness.push(_statement(keys, 1))
        async with witness_at(f"http://127.0.0.1:{hung.sockets[0].getsockname()[1]}", None, timeout=0.3) as witness:
            with pytest.raises(WitnessError, match="timed out"):
                await witness.push(_statement(keys, 1))
    finally:
        for writer in held:
            writer.close()
        hung.close()
        await runner.cleanup()


# -- with the sink and the verifier ------------------------------------------------------------------


async def _until(check: Any, seconds: float = 15.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not reached in time")


async def test_the_sink_retries_a_witness_that_is_down_and_delivers_once_it_is_back(
        tmp_path: Path, keys: AuditKeys, pki: Pki) -> None:
    port = _free_port()
    folder = tmp_path / "audit"
    async with witness_at(f"https://127.0.0.1:{port}", pki) as witness:
        sink = FileAuditSink(folder, fsync_interval=0.0, keys=keys, witness=witness, checkpoint_every=3)
        for i in range(7):
            await sink.write({"type": "decision", "n": i})  # durable whatever the witness does
        await _until(lambda: sink.witness_failures >= 2)
        assert sink.witness_backlog >= 3
        async with serving(tmp_path / "w.jsonl", keys, pki, port=port):
            await _until(lambda: sink.witness_backlog == 0)
            await sink.close()
            statements = await witness.statements()
    assert [s["seq"] for s in statements] == sorted(s["seq"] for s in statements) and len(statements) >= 4
    report = verify_directory(folder, keys.public_keys(), statements)
    assert report.ok and report.witnessed == len(statements), [str(f) for f in report.breaks]


async def test_a_truncated_segment_is_caught_through_the_https_witness(tmp_path: Path, keys: AuditKeys,
                                                                        pki: Pki) -> None:
    folder = tmp_path / "audit"
    async with serving(tmp_path / "w.jsonl", keys, pki) as url, witness_at(url, pki) as witness:
        sink = FileAuditSink(folder, fsync_interval=0.0, keys=keys, witness=witness, checkpoint_every=5)
        for i in range(23):
            await sink.write({"type": "decision", "request_id": f"r{i}", "n": i})
        await sink.close()
        statements = await witness.statements()
    assert verify_directory(folder, keys.public_keys(), statements).ok
    [(_, [segment])] = segment_files(folder).items()
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:-6]))  # the newest records and the closing checkpoint, gone
    assert verify_directory(folder, keys.public_keys(), None).ok  # the store alone cannot tell
    report = verify_directory(folder, keys.public_keys(), statements)
    assert report.breaks and all(f.where == "witness" and "deleted or the file truncated" in f.problem
                                 for f in report.breaks)


# -- configuration and the commands ------------------------------------------------------------------


def test_the_https_witness_is_configured_with_its_token_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    monkeypatch.setenv("WITNESS_TOKEN", TOKEN)
    audit = {"witness": "https", "witness_url": "https://witness.example:8443/audit/",
             "witness_ca_file": str(pki.ca), "witness_token": "${WITNESS_TOKEN}"}
    cfg = parse(_minimal(audit=audit), Path(".")).audit
    assert (cfg.witness_url, cfg.witness_token) == ("https://witness.example:8443/audit", TOKEN)
    assert TOKEN not in repr(cfg)
    witness = build_witness(cfg)
    assert isinstance(witness, HttpWitness) and witness.url == cfg.witness_url
    for change, message in (({"witness_url": None}, "audit.witness_url: required"),
                            ({"witness_url": "http://witness.example"}, "audit.witness_url: the witness URL must"),
                            ({"witness_ca_file": "/nonexistent.pem"}, "audit.witness_ca_file: file"),
                            ({"witness_token": "${NO_SUCH_WITNESS_TOKEN}"}, "audit.witness_token: environment")):
        bad = {k: v for k, v in {**audit, **change}.items() if v is not None}
        with pytest.raises(ConfigError, match=message):
            parse(_minimal(audit=bad), Path("."))


async def test_portcullis_audit_verify_reads_the_https_witness(tmp_path: Path, keys: AuditKeys, pki: Pki,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from gateway.cli import main

    folder = tmp_path / "audit"
    monkeypatch.setenv("WITNESS_TOKEN", TOKEN)
    async with serving(tmp_path / "w.jsonl", keys, pki) as url:
        async with witness_at(url, pki) as witness:
            sink = FileAuditSink(folder, fsync_interval=0.0, keys=keys, witness=witness, checkpoint_every=4)
            for i in range(9):
                await sink.write({"type": "decision", "n": i})
            await sink.close()
        config = tmp_path / "portcullis.toml"
        config.write_text(f"""
[identity]
signing_key = "id.pem"
[[issuers]]
iss = "https://idp"
audience = ["gw"]
jwks_file = "jwks.json"
algorithms = ["ES256"]
[upstreams.t]
url = "http://127.0.0.1:9000"
[[routes]]
path = "/api/x"
upstream = "t"
tier = "read"
[audit]
path = "{folder}"
signing_key_file = "{tmp_path / 'audit-key.json'}"
witness = "https"
witness_url = "{url}"
witness_ca_file = "{pki.ca}"
witness_token = "${{WITNESS_TOKEN}}"
""")
        assert await asyncio.to_thread(main, ["audit", "verify", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        [(_, [segment])] = segment_files(folder).items()
        segment.write_bytes(b"".join(segment.read_bytes().splitlines(keepends=True)[:-3]))
        assert await asyncio.to_thread(main, ["audit", "verify", "--config", str(config)]) == 1
        broken = capsys.readouterr().out
        # A query is recorded in a chain of its own, checkpointed to the same witness, whose session
        # the sink closes with itself.
        assert await asyncio.to_thread(main, ["audit", "query", "--config", str(config)]) == 0
        async with witness_at(url, pki) as witness:
            chains = {s["chain"] for s in await witness.statements()}
    gc.collect()
    assert "OK: 1 chains" in out and "witnessed checkpoints checked" in out and "no witness" not in out
    assert "BREAK" in broken and "witness" in broken
    assert len(chains) == 2 and "Unclosed" not in caplog.text


async def test_portcullis_audit_witness_serve_runs_the_reference_server(tmp_path: Path, keys: AuditKeys,
                                                                        pki: Pki) -> None:
    public = tmp_path / "audit-public.json"
    public.write_text(public_keys_json(keys.public_keys()))
    port = _free_port()
    store = tmp_path / "w.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "audit", "witness-serve", "--store", str(store), "--keys", str(public),
         "--port", str(port), "--cert", str(pki.cert), "--key", str(pki.key)],
        env={**os.environ, "PORTCULLIS_WITNESS_TOKEN": TOKEN}, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with witness_at(f"https://127.0.0.1:{port}", pki) as witness:
            statement = _statement(keys, 0)
            for _ in range(200):
                try:
                    await witness.push(statement)
                    break
                except WitnessError as exc:
                    if "cannot connect" not in str(exc):
                        raise
                    await asyncio.sleep(0.05)
            assert await witness.statements() == [statement]
        async with witness_at(f"https://127.0.0.1:{port}", pki, token=None) as anonymous:
            with pytest.raises(WitnessError, match="401 unauthorized"):
                await anonymous.statements()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert [orjson.loads(line) for line in store.read_bytes().splitlines()] == [statement]
    refused = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "witness-serve", "--store", str(store), "--keys", str(public),
         "--host", "0.0.0.0"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "loopback only" in refused.stderr
