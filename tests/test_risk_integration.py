"""The risk engine inside a real gateway on loopback: what it records, what it shares, how it fails."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from conftest import PrivateRedis
from harness import Stack, run_stack

from gateway.client import DeviceKey

QUOTE = "/api/quotes/600519.SH"
ORDERS = "/api/accounts/A1/orders"
ORDER = {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0, "type": "limit",
         "client_order_id": "c-1"}


def _decisions(tmp: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in sorted((tmp / "audit").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            record = json.loads(line)
            if record["type"] == "decision":
                out[record["request_id"]] = record
    return out


async def _get(s: aiohttp.ClientSession, st: Stack, headers: dict[str, str]) -> tuple[int, str]:
    async with s.get(st.url + QUOTE, headers=headers) as r:
        await r.read()
        return r.status, r.headers["X-Request-Id"]


async def test_one_device_on_three_customers_is_scored_as_a_mule_farm(tmp_path: Path) -> None:
    phone = DeviceKey.generate()
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        rids = []
        for sub, account in (("u1", "A1"), ("u2", "B9"), ("u3", "C3")):
            token = st.token(sub=sub, accounts=(account,))
            headers = {"Authorization": f"Bearer {token}", "DPoP": phone.proof("GET", st.url + QUOTE, token),
                       "User-Agent": "BrokerApp/5.1"}
            status, rid = await _get(s, st, headers)
            assert status == 200
            rids.append(rid)
        await asyncio.sleep(0.05)
    records = _decisions(tmp_path)
    first, third = records[rids[0]], records[rids[2]]
    assert first["device_id"] == phone.thumbprint
    assert "unknown_device" in first["risk_factors"] and "device_many_accounts" not in first["risk_factors"]
    assert "device_many_accounts" in third["risk_factors"]
    assert third["risk_score"] > first["risk_score"]


async def test_the_gateway_recovers_by_itself_when_redis_returns(tmp_path: Path,
                                                                 private_redis: PrivateRedis) -> None:
    state = {"backend": "redis", "url": private_redis.url, "prefix": "ptest:risk:", "timeout": 0.3}
    async with run_stack(tmp_path, state=state) as st, aiohttp.ClientSession() as s:
        auth = st.auth()

        async def order(cid: str) -> tuple[int, Any]:
            async with s.post(st.url + ORDERS, json={**ORDER, "client_order_id": cid}, headers=auth) as r:
                return r.status, await r.json()

        async def quote() -> int:
            async with s.get(st.url + QUOTE, headers=auth) as r:
                await r.read()
                return r.status

        assert (await order("before"))[0] == 201 and await quote() == 200
        private_redis.stop()
        down_order, down_quote = await order("down"), await quote()
        private_redis.start()  # the same port, empty: nothing to restore, the clients reconnect
        after = await order("after")
        after_quote = await quote()
    assert (down_order[0], down_order[1]["error"]) == (503, "state_unavailable")  # money fails closed
    assert down_quote == 200  # the read route fails open, scored on local evidence
    assert after[0] == 201 and after_quote == 200
    decisions = list(_decisions(tmp_path).values())
    degraded = [r for r in decisions if r["route"] == "quotes" and "state_unavailable" in r["degraded"]]
    assert len(degraded) == 1 and "state_unavailable" in degraded[0]["risk_factors"]


async def test_the_broker_bundle_acts_on_the_risk_engine(tmp_path: Path) -> None:
    """The real bundle and the real demo facts: a transfer to the bank account alice linked two days
    ago asks for a face check; the same transfer to her old account asks for nothing more from a
    fresh strong authentication; the step-up challenge names the factors as codes."""
    from harness import routes_with_body_kinds

    from gateway.policy.rego import RegoPolicy

    bundle = RegoPolicy.from_directory(Path(__file__).resolve().parent.parent / "policies")
    transfer = {"direction": "out", "amount": 100.0, "currency": "CNY"}
    async with run_stack(tmp_path, internal_token="risk-facts", routes=routes_with_body_kinds(),
                         gateway_kwargs={"policy": bundle}) as st, aiohttp.ClientSession() as s:
        fresh_mfa = st.auth(acr="urn:portcullis:acr:mfa", amr=("pwd", "otp"))

        async def send(bank: str) -> tuple[int, Any]:
            async with s.post(st.url + "/api/accounts/A1/transfers", headers=fresh_mfa,
                              json={**transfer, "bank_account_id": bank}) as r:
                return r.status, await r.json()

        new_bank = await send("bank-a1-2")
        old_bank = await send("bank-a1-1")
    status, body = new_bank
    # The face level: a face check, or TOTP and SMS together. Alice has enrolled neither face nor
    # TOTP (only her phone on file): a clear refusal telling her to enrol, not a challenge she cannot meet.
    assert (status, body["error"]) == (403, "no_step_up_method"), body
    assert body["acr_values"] == "urn:portcullis:acr:face"
    assert "new_bank_account_transfer" in body["reasons"] and "new_bank_account_transfer" in body["risk_factors"]
    assert old_bank[0] == 201, old_bank  # medium (just logged in, no device proof): the fresh MFA suffices


async def test_the_broker_bundle_masks_personal_data_for_a_session_above_low_risk(tmp_path: Path) -> None:
    """A profile read by a session the engine scores above low (a scripted client with a bearer token and
    no device proof) comes back with the ID number, phone, address and bank account numbers masked; the same
    read after a fresh MFA step-up comes back whole (the bundle's mask_personal_data)."""
    from harness import routes_with_body_kinds

    from gateway.policy.rego import RegoPolicy

    bundle = RegoPolicy.from_directory(Path(__file__).resolve().parent.parent / "policies")
    async with run_stack(tmp_path, internal_token="risk-facts", routes=routes_with_body_kinds(),
                         gateway_kwargs={"policy": bundle}) as st, aiohttp.ClientSession() as s:
        async def profile(headers: dict[str, str]) -> tuple[dict[str, Any], str]:
            async with s.get(st.url + "/api/accounts/A1", headers=headers) as r:
                assert r.status == 200, await r.text()
                return await r.json(), r.headers["X-Request-Id"]

        scripted = {"User-Agent": "curl/8.5.0"}
        masked, masked_rid = await profile({**st.auth(), **scripted})
        whole, whole_rid = await profile({**st.auth(acr="urn:portcullis:acr:mfa", amr=("pwd", "otp")), **scripted})
        await asyncio.sleep(0.05)
    records = _decisions(tmp_path)
    assert records[masked_rid]["risk_level"] != "low" and records[whole_rid]["risk_level"] != "low"
    assert records[masked_rid]["obligations"] == ["mask_fields"] and records[whole_rid]["obligations"] == []
    assert whole["name"] == masked["name"]  # only the configured fields are masked
    for field in ("id_number", "phone"):
        assert masked[field] != whole[field] and masked[field].endswith(whole[field][-4:])
        assert set(masked[field][:-4]) == {"*"}
    assert masked["address"] == "****" and whole["address"] != "****"
    for hidden, shown in zip(masked["bank_accounts"], whole["bank_accounts"], strict=True):
        assert hidden["number"] == "*" * (len(shown["number"]) - 4) + shown["number"][-4:]
        assert hidden["id"] == shown["id"]
