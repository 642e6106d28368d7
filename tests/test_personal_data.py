"""Personal data at rest (gateway/personal_data.py): the key ring on real Redis, erasure pushed to every
process, audit records sealed or masked (never in clear, never dropped), the enrolled SMS phone under the
customer's own key, and a real gateway with ``[crypto]`` on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit.chain import CHAIN_FIELDS
from audit.sink import FileAuditSink
from gateway.config import CryptoConfig, parse
from gateway.crypto import SecretBox
from gateway.crypto.fields import is_sealed
from gateway.crypto.key_errors import KeyErased
from gateway.errors import ConfigError, GatewayError
from gateway.mfa.service import FactorRecords
from gateway.personal_data import PersonalData, SealingSink, StateKeyStore, build_key_ring
from gateway.state.redis import RedisStore
from tests.harness import audit_records

ID_NUMBER = "110101199003071234"
PHONE = "+8613800138000"


def _cfg(tmp: Path, **kw: Any) -> CryptoConfig:
    return CryptoConfig(enabled=True, master_key_file=tmp / "master.key", **kw)


async def _personal(tmp: Path, store: RedisStore, **kw: Any) -> PersonalData:
    cfg = _cfg(tmp, **kw)
    return PersonalData(cfg, build_key_ring(cfg, store), store)


@pytest.fixture
async def two_processes(redis_url: str, redis_prefix: str, tmp_path: Path) -> AsyncIterator[list[PersonalData]]:
    """Two gateway processes' worth of PersonalData: their own Redis connections, one key store, one master key."""
    async with AsyncExitStack() as es:
        out = []
        for _ in range(2):
            store = RedisStore(redis_url, redis_prefix, timeout=2.0)
            es.push_async_callback(store.close)
            p = await _personal(tmp_path, store)
            await p.start()
            es.push_async_callback(p.stop)
            out.append(p)
        yield out


async def _until_erased(process: PersonalData, doc: dict[str, Any], sub: str) -> None:
    """Wait until ``process`` refuses to open ``doc`` for ``sub`` (told of the erasure over pub/sub, which
    takes milliseconds; no timing is asserted, 2 s is the give-up point)."""
    for _ in range(200):
        try:
            await process.open_fields(json.loads(json.dumps(doc)), sub)
        except KeyErased:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"a process still opened {sub}'s data after their key was erased")


# -- the key store on Redis ---------------------------------------------------------------------


async def test_the_state_key_store_creates_once_and_lists_by_prefix(redis_store: RedisStore) -> None:
    ks = StateKeyStore(redis_store)
    assert await ks.add("customer/alice", b"first") is True
    assert await ks.add("customer/alice", b"second") is False  # SET NX: the first one stays
    await ks.put("purpose/blind-index", b"p")
    assert await ks.get("customer/alice") == b"first"
    assert await ks.names("customer/") == ["customer/alice"]
    assert await ks.names("") == ["customer/alice", "purpose/blind-index"]
    assert await ks.delete("customer/alice") is True and await ks.get("customer/alice") is None
    assert await ks.names("customer/") == []


async def test_two_processes_using_a_customer_at_once_agree_on_one_key(two_processes: list[PersonalData]) -> None:
    a, b = two_processes
    ka, kb = await asyncio.gather(a.ring.customer_key("alice"), b.ring.customer_key("alice"))
    assert ka.kid == kb.kid and ka.material == kb.material
    doc = {"id_number": ID_NUMBER, "name": "Alice"}
    assert await a.seal_fields(doc, "alice") == 1
    assert is_sealed(doc["id_number"]) and doc["name"] == "Alice"
    await b.open_fields(doc, "alice")  # the other process opens it
    assert doc["id_number"] == ID_NUMBER


async def test_an_erasure_reaches_the_other_process_before_its_cache_expires(
        two_processes: list[PersonalData]) -> None:
    a, b = two_processes
    doc = {"phone": PHONE}
    await a.seal_fields(doc, "alice")
    opened = json.loads(json.dumps(doc))
    await b.open_fields(opened, "alice")  # b now holds alice's key in its cache (TTL 60 s)
    assert opened["phone"] == PHONE
    assert await a.erase("alice") is True
    await _until_erased(b, doc, "alice")
    with pytest.raises(KeyErased):
        await b.seal_fields({"phone": PHONE}, "alice")  # nothing new is stored readable either


async def test_the_blind_index_finds_a_value_written_either_way(two_processes: list[PersonalData]) -> None:
    a, _ = two_processes
    doc = {"id_number": "110101 19900307 123X"}
    await a.seal_fields(doc, "alice")
    terms = await a.search_terms("110101-19900307-123x")
    assert terms[doc["id_number"]["bik"]] == doc["id_number"]["bi"]


# -- audit records ------------------------------------------------------------------------------


async def test_audit_records_with_personal_data_are_sealed_or_masked_never_in_clear(
        tmp_path: Path, redis_store: RedisStore) -> None:
    personal = await _personal(tmp_path, redis_store)
    sink = SealingSink(FileAuditSink(tmp_path / "audit"), personal)
    decision = {"type": "decision", "sub": "alice", "request_id": "r0", "route": "account"}
    await sink.write(decision)  # nothing personal: passes straight through
    await sink.write({"type": "profile_change", "sub": "alice", "request_id": "r1", "phone": PHONE,
                      "bank_accounts": [{"id": "b1", "number": "6222020000000000011"}]})
    sink.enqueue({"type": "import", "sub": None, "request_id": "r2", "id_number": ID_NUMBER})  # no customer
    await personal.erase("bob")
    await sink.write({"type": "profile_change", "sub": "bob", "request_id": "r3", "id_number": ID_NUMBER})
    await sink.close()
    text = "".join(p.read_text() for p in (tmp_path / "audit").rglob("*.jsonl"))
    assert PHONE not in text and ID_NUMBER not in text and "6222020000000000011" not in text
    records = {r["request_id"]: r for r in audit_records(tmp_path / "audit") if "request_id" in r}
    assert set(records) == {"r0", "r1", "r2", "r3"}  # none lost
    assert {k: v for k, v in records["r0"].items() if k not in CHAIN_FIELDS} == decision
    sealed = records["r1"]
    assert is_sealed(sealed["phone"]) and is_sealed(sealed["bank_accounts"][0]["number"])
    assert sealed["bank_accounts"][0]["id"] == "b1"
    await personal.open_fields(sealed, "alice")  # compliance reads it back with alice's key
    assert sealed["phone"] == PHONE and sealed["bank_accounts"][0]["number"] == "6222020000000000011"
    assert records["r2"]["id_number"] == "*" * 14 + ID_NUMBER[-4:]  # no customer key: masked
    assert records["r3"]["id_number"] == "*" * 14 + ID_NUMBER[-4:]  # bob was erased: masked


# -- the enrolled SMS phone ------------------------------------------------------------------------


async def test_the_enrolled_phone_is_sealed_under_the_customers_key_and_erased_with_it(
        tmp_path: Path, redis_store: RedisStore) -> None:
    personal = await _personal(tmp_path, redis_store)
    box = SecretBox.generate()
    records = FactorRecords(redis_store, box, personal)
    await records.set_phone("alice", PHONE, 1000.0)
    await records.set_pending_phone("alice", "+8613900139000", 1000.0)
    assert await records.phone("alice") == (PHONE, 1000.0)
    assert await records.pending_phone("alice") == "+8613900139000"
    raw = await redis_store.get("mfa:phone:alice")
    assert raw is not None and PHONE.encode() not in raw
    inner = orjson.loads(box.open(raw, b"phone:alice"))
    assert is_sealed(inner["phone"])  # under the step-up box AND alice's own key
    await personal.erase("alice")
    assert await records.phone("alice") is None and await records.pending_phone("alice") is None
    with pytest.raises(GatewayError) as err:
        await records.set_phone("alice", PHONE, 2000.0)
    assert err.value.code == "personal_data_erased"
    # Records written before [crypto] was on still read (the number inside only under the box).
    plain = FactorRecords(redis_store, box)
    await plain.set_phone("carol", PHONE, 3.0)
    assert await records.phone("carol") == (PHONE, 3.0)


# -- configuration and a real gateway ---------------------------------------------------------------


def test_crypto_config_is_checked(tmp_path: Path) -> None:
    from gateway.demo_keys import ensure_demo_keys
    from tests.harness import gateway_config

    base = gateway_config(ensure_demo_keys(tmp_path / "keys"), tmp_path, "http://127.0.0.1:9")
    ok = parse({**base, "crypto": {"enabled": True, "master_key_file": "m.key", "indexed": ["phone"]}}, tmp_path)
    assert ok.crypto.enabled and ok.crypto.master_key_file == tmp_path / "m.key" and ok.crypto.indexed == ("phone",)
    for bad, says in (({"key_store": "s3"}, "key_store"), ({"key_store": "file"}, "key_store_file"),
                      ({"indexed": ["email"]}, "not among the fields"), ({"fields": ["a..b"]}, "crypto.fields"),
                      ({"cache_ttl": -1}, "cache_ttl")):
        with pytest.raises(ConfigError, match=says):
            parse({**base, "crypto": bad}, tmp_path)


async def test_a_gateway_with_crypto_on_seals_personal_data_in_its_audit_trail(
        tmp_path: Path, redis_store: RedisStore) -> None:
    import aiohttp

    from tests.harness import run_stack

    crypto = {"enabled": True, "master_key_file": str(tmp_path / "master.key")}
    async with run_stack(tmp_path, gateway_kwargs={"state": redis_store}, crypto=crypto) as stack, \
            aiohttp.ClientSession() as http:
        gw = stack.gateway
        assert gw.personal is not None and isinstance(gw.audit, SealingSink)
        async with http.get(stack.url + "/api/accounts/A1", headers=stack.auth()) as r:
            assert r.status == 200  # requests go through as before
        # A security event naming a customer's phone (what the audit issue's records will carry).
        gw._auditor.queue({"type": "security_event", "sub": "alice", "request_id": "pd-1", "phone": PHONE})
        await asyncio.sleep(0.05)
        async with http.get(stack.admin_url + "/metrics") as r:
            metrics = await r.text()
    records = {r.get("request_id"): r for r in audit_records(tmp_path / "audit")}
    assert is_sealed(records["pd-1"]["phone"])
    assert PHONE not in json.dumps(list(records.values()))
    assert 'portcullis_personal_data_events_total{event="sealed"} 1.0' in metrics
    assert "customer/alice" in await StateKeyStore(redis_store).names("customer/")


# -- portcullis keys --config: the gateways' own ring ---------------------------------------------


async def test_keys_with_the_gateway_config_erase_everywhere_and_find_search_terms(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    import subprocess
    import sys

    from gateway.demo_keys import ensure_demo_keys
    from tests.harness import gateway_config
    from tests.test_cli import _write_toml

    crypto = {"enabled": True, "master_key_file": str(tmp_path / "master.key")}
    state = {"backend": "redis", "url": redis_url, "prefix": redis_prefix, "timeout": 2.0}
    data = gateway_config(ensure_demo_keys(tmp_path / "keys"), tmp_path, "http://127.0.0.1:9", crypto=crypto,
                          state=state)
    config = tmp_path / "gateway.toml"
    _write_toml(config, data)
    store = RedisStore(redis_url, redis_prefix, timeout=2.0)
    running = await _personal(tmp_path, store)  # a running gateway's ring, listening for erasures
    await running.start()
    try:
        doc = {"phone": PHONE, "id_number": ID_NUMBER}
        await running.seal_fields(doc, "alice")

        def keys(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "gateway", "keys", *args, "--config", str(config)],
                                  capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                                  timeout=60)

        found = await asyncio.to_thread(keys, "search-term", "+86 138-0013-8000")
        assert found.returncode == 0, found.stderr
        assert doc["phone"]["bi"] in found.stdout and doc["phone"]["bik"] in found.stdout
        erased = await asyncio.to_thread(keys, "erase-customer", "alice", "--yes")
        assert erased.returncode == 0 and "destroyed" in erased.stdout and "were told" in erased.stdout
        await _until_erased(running, doc, "alice")  # told: its cache entry would otherwise live 60 s
        assert PHONE not in found.stdout + erased.stdout + found.stderr + erased.stderr
    finally:
        await running.stop()
        await store.close()


def test_keys_with_a_gateway_config_on_memory_state_is_refused(tmp_path: Path) -> None:
    from gateway.cli import main
    from gateway.demo_keys import ensure_demo_keys
    from tests.harness import gateway_config
    from tests.test_cli import _write_toml

    crypto = {"enabled": True, "master_key_file": str(tmp_path / "master.key")}
    config = tmp_path / "gateway.toml"
    _write_toml(config, gateway_config(ensure_demo_keys(tmp_path / "keys"), tmp_path, "http://127.0.0.1:9",
                                       crypto=crypto))
    assert main(["keys", "erase-customer", "alice", "--yes", "--config", str(config)]) == 2


async def test_decisions_carry_the_policy_input_digest_and_the_input_sealed_under_the_customers_key(
        tmp_path: Path, redis_store: RedisStore) -> None:
    import aiohttp

    from audit.chain import canonical
    from gateway.crypto import sm3
    from gateway.policy.rego import RegoPolicy
    from tests.harness import routes_with_body_kinds, run_stack
    from tests.test_envelope import ORDER, ORDERS, POLICY

    crypto = {"enabled": True, "master_key_file": str(tmp_path / "master.key")}
    kwargs = {"state": redis_store, "policy": RegoPolicy.from_modules([("policy.rego", POLICY)], {})}
    async with run_stack(tmp_path, gateway_kwargs=kwargs, routes=routes_with_body_kinds(), crypto=crypto) as st, \
            aiohttp.ClientSession() as http:
        rids = []
        for qty in (100, 200, 100):  # allowed, denied by the policy (qty > 100), allowed (key cached by now)
            async with http.post(st.url + ORDERS, json={**ORDER, "qty": qty}, headers=st.auth()) as r:
                rids.append((r.status, r.headers["X-Request-Id"]))
        personal = st.gateway.personal
        assert personal is not None
        await asyncio.sleep(0.1)
        by_rid = {r.get("request_id"): r for r in audit_records(tmp_path / "audit") if r.get("type") in
                  ("decision", "denial")}
        assert [s for s, _ in rids] == [201, 403, 201]
        for status, rid in rids:
            record = by_rid[rid]
            assert record["type"] == ("decision" if status == 201 else "denial")
            doc = await personal.open("alice", "policy_input", record["input"])  # what the policy judged
            assert sm3.digest(canonical(doc)).hex() == record["input_sm3"]
            assert doc["order"]["qty"] == (100 if status == 201 else 200)
        await personal.erase("alice")
        with pytest.raises(KeyErased):  # erased: unreadable, while the record and its digest stay
            await personal.open("alice", "policy_input", by_rid[rids[0][1]]["input"])


async def test_without_crypto_the_decision_keeps_only_the_input_digest(tmp_path: Path) -> None:
    import aiohttp

    from tests.harness import run_stack

    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as http:
        async with http.get(st.url + "/api/accounts/A1", headers=st.auth()) as r:
            rid = r.headers["X-Request-Id"]
        await asyncio.sleep(0.1)
    [record] = [r for r in audit_records(tmp_path / "audit") if r.get("request_id") == rid
                and r.get("type") == "decision"]
    assert len(record["input_sm3"]) == 64 and "input" not in record
