"""The client SDK's step-up flow (gateway.client.StepUpClient) against a real gateway and demo backend.

The demo customers' TOTP comes from a ``[step_up] demo_totp_file`` as `portcullis demo` writes it;
the policy is test_step_up_flow's (the mfa level on orders above 100 shares), so the outcome does
not depend on the exchange's hours.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from gateway.client import (
    DeviceKey,
    HttpResponse,
    StepUpClient,
    StepUpError,
    StepUpRequired,
    TotpAuthenticator,
    aiohttp_send,
)
from gateway.demo_keys import ensure_demo_totp
from gateway.notify import MemoryNotifier
from gateway.policy.rego import RegoPolicy
from tests.harness import routes_with_body_kinds, run_stack
from tests.test_step_up_flow import BIG, POLICY, SMALL, TOKEN, RecordingSms

ORDERS = "/api/accounts/A1/orders"


def stack(tmp: Path, totp_file: Path):  # type: ignore[no-untyped-def]
    kwargs = {"policy": RegoPolicy.from_modules([("policy.rego", POLICY)], {}), "notifier": MemoryNotifier(),
              "sms_sender": RecordingSms()}
    return run_stack(tmp, internal_token=TOKEN, routes=routes_with_body_kinds(), gateway_kwargs=kwargs,
                     step_up={"cooling_off": 3600.0, "demo_totp_file": str(totp_file)})


@pytest.mark.parametrize("dpop", [False, True])
async def test_a_stepped_up_order_goes_through_with_the_demo_secret(tmp_path: Path, dpop: bool) -> None:
    secrets = ensure_demo_totp(tmp_path / "totp.json")
    async with stack(tmp_path, tmp_path / "totp.json") as s, aiohttp.ClientSession() as http:
        device = DeviceKey.generate() if dpop else None
        extra = {"extra": {"cnf": {"jkt": device.thumbprint}}} if device is not None else {}
        client = StepUpClient(s.url, s.token(**extra), TotpAuthenticator(secrets["alice"]), device=device)
        send = aiohttp_send(http)
        # The demo secret is enrolled at start, long ago: offered at once.
        small = await client.request(send, "POST", ORDERS, {**SMALL, "client_order_id": "s1"})
        assert small.response.status == 201 and small.challenge is None
        for n in range(2):  # two in the same 30 s step: the second uses the next step's code
            done = await client.request(send, "POST", ORDERS, {**BIG, "client_order_id": f"b{n}"})
            assert done.response.status == 201, done.response.body
            assert done.challenge is not None and "totp" in done.challenge.methods and done.step_up_token
        with pytest.raises(StepUpError) as spent:  # a third would be refused: the client says so first
            await client.request(send, "POST", ORDERS, {**BIG, "client_order_id": "b3"})
        assert spent.value.code == "totp_exhausted" and spent.value.body["retry_after"] >= 1


async def test_a_code_used_elsewhere_is_followed_by_the_next_steps(tmp_path: Path) -> None:
    secrets = ensure_demo_totp(tmp_path / "totp.json")
    async with stack(tmp_path, tmp_path / "totp.json") as s, aiohttp.ClientSession() as http:
        # Another device of alice's answers a challenge with this step's code first.
        other = StepUpClient(s.url, s.token(), TotpAuthenticator(secrets["alice"]))
        assert (await other.request(aiohttp_send(http), "POST", ORDERS, {**BIG, "client_order_id": "o"})
                ).response.status == 201
        client = StepUpClient(s.url, s.token(), TotpAuthenticator(secrets["alice"]))
        done = await client.request(aiohttp_send(http), "POST", ORDERS, {**BIG, "client_order_id": "c"})
        assert done.response.status == 201 and done.replayed == 1


def test_parsing_a_challenge() -> None:
    body = (b'{"error":"insufficient_user_authentication","challenge_id":"abc","methods":["totp","sms"],'
            b'"acr_values":"urn:portcullis:acr:mfa","expires_at":1700000000,"max_age":300,"reasons":["x"]}')
    ch = StepUpRequired.parse(401, body)
    assert ch == StepUpRequired("abc", ("totp", "sms"), "urn:portcullis:acr:mfa", 1700000000.0, 300, ("x",))
    assert StepUpRequired.parse(403, body) is None
    assert StepUpRequired.parse(401, b'{"error":"insufficient_user_authentication","max_age":300}') is None
    assert StepUpRequired.parse(401, b"not json") is None
    assert HttpResponse(200, b'{"a":1}').json() == {"a": 1}
