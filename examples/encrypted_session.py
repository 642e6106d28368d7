"""The demo's encrypted session, end to end with the client SDK (run it against ``make demo``).

    .venv/bin/python examples/encrypted_session.py [--url http://127.0.0.1:8080] [--sub alice --account A1]

What it does, one printed line per step (never a key):

1. draws a device key and gets an access token bound to it from the demo identity provider
   (the keys ``portcullis demo`` keeps under var/demo, or ``$PORTCULLIS_DEMO_DIR``);
2. agrees a session key with the gateway (SM2 encryption of client key material, SM3 KDF;
   ``GET`` and ``POST /auth/session-key``), on the SDK's first request;
3. reads the customer's profile encrypted: the request is sealed in its ``Portcullis-Envelope``
   header (it has no body) and the gateway answers sealed (``application/sm4-gcm+json``);
4. places a small limit order encrypted, under a ``client_order_id`` so a lost answer is retried
   without placing it twice; a step-up the policy asks for is answered with the customer's TOTP
   (var/demo/totp.json, written by ``portcullis demo``). Outside the A-share sessions the policy
   refuses orders (``market_closed``): the refusal is printed, it came through the same pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.client import DeviceKey, PortcullisClient, TotpAuthenticator  # noqa: E402
from gateway.demo_keys import TOTP_FILE, ensure_demo_keys, mint_token, read_demo_totp  # noqa: E402

ORDER = {"symbol": "601318.SH", "side": "buy", "qty": 100, "price": 57.2, "type": "limit"}


def demo_dir() -> Path:
    return Path(os.environ.get("PORTCULLIS_DEMO_DIR", ROOT / "var" / "demo"))


async def run(url: str, keys_dir: Path, *, sub: str = "alice", account: str = "A1",
              out: Any = print) -> dict[str, Any]:
    """The walk-through; returns what each step answered (the tests read it)."""
    device = DeviceKey.generate()
    token = mint_token(ensure_demo_keys(keys_dir), sub=sub, accounts=[account],
                       extra={"cnf": {"jkt": device.thumbprint}})
    out(f"1. device key {device.thumbprint[:12]}..., token for {sub} bound to it")
    totp_file = keys_dir / TOTP_FILE
    secrets_by_sub = read_demo_totp(totp_file) if totp_file.exists() else {}
    totp = TotpAuthenticator(secrets_by_sub[sub]) if sub in secrets_by_sub else None
    async with PortcullisClient(url, token, device=device, encrypt=True, totp=totp) as gw:
        profile = await gw.get(f"/api/accounts/{account}")
        session = gw.sdk.envelope
        out(f"2. session key {session.key_id[:8]}... agreed" if session is not None else "2. no session key")
        sealed = profile.headers.get("Content-Type", "").startswith("application/sm4-gcm+json")
        out(f"3. profile: {profile.status}, answered {'sealed' if sealed else 'in plaintext'}; "
            f"fields: {sorted(profile.data)[:6] if isinstance(profile.data, dict) else profile.data}")
        order = await gw.place_order(account, ORDER)
        outcome = order.data.get("order_id") if order.ok and isinstance(order.data, dict) else order.error
        out(f"4. order: {order.status} {outcome} (attempts {order.attempts}"
            f"{', step-up answered' if order.challenge is not None else ''})")
    return {"profile": profile, "profile_sealed": sealed, "order": order,
            "session_key": session.key_id if session is not None else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--sub", default="alice")
    p.add_argument("--account", default="A1")
    args = p.parse_args(argv)
    result = asyncio.run(run(args.url, demo_dir(), sub=args.sub, account=args.account))
    return 0 if result["profile"].ok and result["profile_sealed"] else 1


if __name__ == "__main__":
    sys.exit(main())
