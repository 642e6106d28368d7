"""Pure parts of step-up: the acr ladder, the request binding, step-up tokens, challenge records."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from gateway.config import DEFAULT_STEP_UP_LEVELS
from gateway.mfa.challenges import Binding, Challenge, body_digest, challenge_header, valid_id
from gateway.mfa.levels import Ladder
from gateway.mfa.tokens import StepUpTokenError, StepUpTokens, load_key

MFA, FACE, PWD = "urn:portcullis:acr:mfa", "urn:portcullis:acr:face", "urn:portcullis:acr:pwd"
LADDER = Ladder.build(DEFAULT_STEP_UP_LEVELS)


@pytest.mark.parametrize(("usable", "asked", "offered"), [
    ({"totp", "sms", "face"}, MFA, ["totp", "sms", "face"]),
    ({"totp"}, MFA, ["totp"]),
    (set(), MFA, []),
    ({"totp"}, FACE, []),                      # one code is not the strongest level
    ({"totp", "sms"}, FACE, ["totp", "sms"]),  # two codes from two channels are
    ({"face"}, FACE, ["face"]),
    ({"face", "totp", "sms"}, FACE, ["totp", "sms", "face"]),
])
def test_offer(usable: set[str], asked: str, offered: list[str]) -> None:
    assert LADDER.offer(asked, usable) == offered


def test_the_policy_methods_restrict_the_ways() -> None:
    assert LADDER.offer(MFA, {"totp", "sms", "face"}, ["totp", "sms"]) == ["totp", "sms"]
    # A way with one method outside the policy's list is not offered at all.
    assert LADDER.offer(FACE, {"totp", "sms", "face"}, ["face", "totp"]) == ["face"]


def test_face_is_never_the_only_way_for_a_customer_with_other_factors() -> None:
    for acr in LADDER.levels[1:]:
        assert LADDER.offer(acr, {"totp", "sms"}) != [], acr


@pytest.mark.parametrize(("done", "reached"), [
    ([], None), (["totp"], MFA), (["sms"], MFA), (["face"], FACE), (["totp", "sms"], FACE)])
def test_reached(done: list[str], reached: str | None) -> None:
    assert LADDER.reached(done) == reached


def test_still_needed_after_one_of_two() -> None:
    assert LADDER.still_needed(FACE, ["totp"], {"totp", "sms"}) == ["sms"]
    assert LADDER.still_needed(FACE, ["totp"], {"totp", "sms", "face"}) == ["sms", "face"]
    assert LADDER.still_needed(FACE, ["totp"], {"totp"}) == []  # SMS exhausted: nothing completes it


def test_satisfies_orders_levels_and_refuses_unknown() -> None:
    assert LADDER.satisfies(FACE, MFA) and LADDER.satisfies(MFA, MFA)
    assert not LADDER.satisfies(MFA, FACE)
    assert not LADDER.satisfies("urn:other", MFA) and not LADDER.satisfies(None, MFA)


@pytest.mark.parametrize("levels", [
    [("a", [["totp"]]), ("a", [["sms"]])],
    [("a", [["fingerprint"]])],
    [("a", [[]])],
    [],
])
def test_bad_ladders_are_refused(levels: list[tuple[str, list[list[str]]]]) -> None:
    with pytest.raises(ValueError):
        Ladder.build(levels)


def test_binding_digest_ignores_json_key_order_and_spacing() -> None:
    a = body_digest(b'{"qty": 100, "symbol": "600519.SH"}', {"qty": 100, "symbol": "600519.SH"})
    b = body_digest(b'{"symbol":"600519.SH","qty":100}', {"symbol": "600519.SH", "qty": 100})
    assert a == b
    assert a != body_digest(b'{"symbol":"600519.SH","qty":1000}', {"symbol": "600519.SH", "qty": 1000})
    assert body_digest(None) is None and body_digest(b"") is None
    assert body_digest(b"raw bytes") != body_digest(b"raw bytez")


def test_binding_covers_method_path_account_and_body() -> None:
    base = Binding("POST", "/api/accounts/A1/orders", "A1", "d1")
    others = [Binding("PUT", base.path, "A1", "d1"), Binding("POST", "/api/accounts/A1/transfers", "A1", "d1"),
              Binding("POST", base.path, "A2", "d1"), Binding("POST", base.path, "A1", "d2"),
              Binding("POST", base.path, "A1", None)]
    assert len({base.digest(), *(o.digest() for o in others)}) == 6


def test_challenge_round_trips_through_json() -> None:
    ch = Challenge(id="x" * 32, sub="alice", ath="ath", jkt=None, binding=Binding("POST", "/p", None, None),
                   transaction=True, acr=MFA, max_age=300, allowed=("totp", "sms"), methods=("totp",),
                   reasons=("r",), risk_factors=("unknown_device",), created=1.0, expires_at=301.0,
                   request_id="rid", tier="trade")
    assert Challenge.from_json(ch.to_json()) == ch


@pytest.mark.parametrize(("value", "ok"), [("a" * 32, True), ("a" * 15, False), ("a" * 65, False),
                                           ("../../etc/passwd-aaaaaaaaaaaa", False), ("a b" * 8, False)])
def test_challenge_ids(value: str, ok: bool) -> None:
    assert valid_id(value) is ok


def test_challenge_header_quotes() -> None:
    h = challenge_header(MFA, 300, 'say "hi"')
    assert h == ('Bearer error="insufficient_user_authentication", error_description="say \\"hi\\"", '
                 f'acr_values="{MFA}", max_age=300')


# -- tokens -------------------------------------------------------------------------

KEY = b"k" * 32
NOW = int(time.time())


def issue(tokens: StepUpTokens, **kw: object) -> str:
    args: dict[str, object] = {"sub": "alice", "acr": MFA, "amr": ["otp"], "auth_time": NOW, "ttl": 120,
                               "cid": "c" * 32, "ath": "ath", "jkt": "jkt", "txn": "txn", "now": NOW}
    args.update(kw)
    return tokens.issue(**args)[0]  # type: ignore[arg-type]


def test_token_round_trip() -> None:
    t = StepUpTokens(KEY)
    c = t.verify(issue(t), NOW)
    assert (c.sub, c.acr, c.amr, c.ath, c.jkt, c.txn) == ("alice", MFA, ("otp",), "ath", "jkt", "txn")
    session = t.verify(issue(t, txn=None, jkt=None), NOW)
    assert session.txn is None and session.jkt is None


def test_token_expiry_uses_the_callers_clock() -> None:
    t = StepUpTokens(KEY, leeway=0)
    token = issue(t, ttl=60)
    assert t.verify(token, NOW + 59).sub == "alice"
    with pytest.raises(StepUpTokenError, match="expired"):
        t.verify(token, NOW + 61)


def test_forged_and_foreign_tokens_are_refused() -> None:
    t = StepUpTokens(KEY)
    token = issue(t)
    with pytest.raises(StepUpTokenError):
        StepUpTokens(b"z" * 32).verify(token, NOW)  # another key
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["acr"] = FACE
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(StepUpTokenError):
        t.verify(f"{head}.{forged}.{sig}", NOW)
    none = jwt.encode({"sub": "alice"}, None, algorithm="none", headers={"typ": "step-up+jwt"})
    with pytest.raises(StepUpTokenError):
        t.verify(none, NOW)
    access_token_like = jwt.encode({"sub": "alice", "exp": NOW + 60}, KEY, algorithm="HS256")
    with pytest.raises(StepUpTokenError, match="not a step-up token"):
        t.verify(access_token_like, NOW)
    for junk in ("", "a.b.c", "x" * 5000, "...."):
        with pytest.raises(StepUpTokenError):
            t.verify(junk, NOW)


def test_key_file_is_created_private_and_reused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys" / "step-up.key"
    key = load_key(path, create=True)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_key(path, create=False) == key
    with pytest.raises(FileNotFoundError):
        load_key(tmp_path / "absent", create=False)
    assert "k" * 8 not in repr(StepUpTokens(KEY))
