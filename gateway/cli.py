"""The `portcullis` command: serve, demo, token, device-key, dpop-proof, mfa, bench, policy, risk, biometrics, keys."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import Config
from gateway.config import load as load_config
from gateway.demo_keys import DEMO_ISSUER, TOTP_FILE, DemoKeys
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.crypto.keyring import KeyRing
    from gateway.personal_data import PersonalData

REPO_ROOT = Path(__file__).resolve().parents[1]
INTERNAL_TOKEN_ENV = "PORTCULLIS_BACKEND_INTERNAL_TOKEN"
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "portcullis.toml"
POLICY_DIR = REPO_ROOT / "policies"


def demo_dir() -> Path:
    """Where demo keys live: $PORTCULLIS_DEMO_DIR, else var/demo in the checkout."""
    return Path(os.environ.get("PORTCULLIS_DEMO_DIR", REPO_ROOT / "var" / "demo"))


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _tune_gc() -> None:
    """Fewer collections for a long-running server.

    Under load the default gen-0 threshold (700) ran ~80 collections a second
    here, ~6% of the CPU; requests free almost everything by reference
    counting. Objects alive after start-up are frozen out of collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


async def _exited(child: subprocess.Popen[bytes]) -> None:
    # Polled, not waited on in a thread: a blocked thread would hold up shutdown.
    while child.poll() is None:
        await asyncio.sleep(0.25)


async def _serve_until_signal(cfg: Config, on_ready: str | None = None,
                              children: Sequence[subprocess.Popen[bytes]] = ()) -> int:
    from gateway.server import Gateway

    gw = Gateway(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await gw.start()
    _tune_gc()
    if on_ready:
        print(on_ready.format(public=gw.public_port, admin=gw.admin_port), flush=True)
    waiter = asyncio.create_task(stop.wait())
    watchers = [asyncio.create_task(_exited(c)) for c in children]
    done, _ = await asyncio.wait([waiter, *watchers], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if waiter not in done:
        print("a child process exited; stopping", file=sys.stderr)
        code = 1
    await gw.stop()
    for t in [waiter, *watchers]:
        t.cancel()
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import logs

    logs.setup(args.log_level)
    _install_uvloop()
    ready = None if args.quiet else "portcullis listening: public :{public}, admin :{admin}"
    return asyncio.run(_serve_until_signal(load_config(args.config), ready))


def with_demo_keys(cfg: Config, keys: DemoKeys) -> Config:
    """The demo always uses the keys in demo_dir(), whatever paths the file names."""
    issuers = tuple(replace(i, jwks_file=keys.issuer_jwks, jwks_url=None) if i.iss == DEMO_ISSUER else i
                    for i in cfg.issuers)
    upstreams = {name: replace(u, identity_hmac_key=keys.identity_hmac) if u.identity_hmac_key else u
                 for name, u in cfg.upstreams.items()}
    step_up = cfg.step_up
    if step_up.demo_totp_file is not None:  # the demo customers' TOTP secrets live with the demo keys
        step_up = replace(step_up, demo_totp_file=keys.issuer_key.parent / TOTP_FILE)
    return replace(cfg, issuers=issuers, upstreams=upstreams,
                   identity=replace(cfg.identity, signing_key=keys.identity_key), step_up=step_up)


def start_backend(keys: DemoKeys, port: int, *, debug_routes: bool = False) -> subprocess.Popen[bytes]:
    """The demo backend accepts both assertion schemes: ES256 (JWKS) and its own HS256 key."""
    cmd = [sys.executable, "-m", "demo_backend", "--host", "127.0.0.1", "--port", str(port),
           "--identity-jwks", str(keys.identity_jwks), "--identity-hmac-key", str(keys.identity_hmac)]
    if debug_routes:
        cmd.append("--debug-routes")
    return subprocess.Popen(cmd, cwd=REPO_ROOT)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.demo_keys import ensure_demo_keys, ensure_demo_totp

    logs.setup(args.log_level)
    _install_uvloop()
    keys = ensure_demo_keys(demo_dir())
    # The backend's /internal fact routes answer only the gateway: one token for both,
    # generated per run unless the operator set one (the backend inherits the environment).
    os.environ.setdefault(INTERNAL_TOKEN_ENV, secrets.token_urlsafe(32))
    cfg = with_demo_keys(load_config(args.config), keys)
    step_up_help = ""
    if cfg.step_up.enabled and cfg.step_up.demo_totp_file is not None:
        totp = cfg.step_up.demo_totp_file
        ensure_demo_totp(totp)
        sms = cfg.step_up.sms_file
        step_up_help = (
            "Step-up (401 insufficient_user_authentication with a challenge_id): answer with TOTP.\n"
            f"  The demo customers' TOTP secrets (base32, enrolled at start): {totp}\n"
            "  CODE=$(.venv/bin/portcullis mfa totp-code --sub alice | tail -n1)\n"
            "  curl -s -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' "
            "-d \"{{\\\"code\\\":\\\"$CODE\\\"}}\" \\\n"
            "       http://127.0.0.1:{public}/auth/mfa/challenges/$CHALLENGE_ID/totp\n"
            "  then the same request again with -H \"X-Portcullis-Step-Up: <step_up_token>\"\n"
            + (f"  SMS codes (POST .../challenges/$CHALLENGE_ID/sms/send) are written to {sms.resolve()}\n"
               if sms is not None and cfg.step_up.sms_sender == "file" else "")
        )
    console_help = ""
    if cfg.console.enabled:
        console_help = (
            "Compliance console: http://127.0.0.1:{admin}/console/\n"
            "  sign in with: .venv/bin/portcullis token --sub officer-li --role compliance | tail -n1\n"
            "  (officer-wang too: a change one officer proposes, the other approves)\n"
            + ("  before a change it asks for a code: .venv/bin/portcullis mfa totp-code --sub officer-li | tail -n1\n"
               if step_up_help else "")
        )
    backend = start_backend(keys, 9000)
    try:
        _wait_port(9000, backend)
        banner = (
            "\nPortcullis demo is running.\n"
            "  gateway   http://127.0.0.1:{public}   (admin and /metrics on http://127.0.0.1:{admin})\n"
            "  backend   http://127.0.0.1:9000       (trusts only the gateway's identity assertion)\n\n"
            "Try it:\n"
            "  TOKEN=$(.venv/bin/portcullis token --sub alice --accounts A1 | tail -n1)\n"
            "  curl -s -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:{public}/api/quotes/600519.SH\n"
            "  curl -s -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:{public}/api/accounts/A1/positions\n"
            "  # 403 account_forbidden: B9 is not alice's\n"
            "  curl -s -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:{public}/api/accounts/B9\n"
            + step_up_help + console_help +
            "Press Ctrl-C to stop.\n"
        )
        return asyncio.run(_serve_until_signal(cfg, banner, [backend]))
    finally:
        backend.terminate()
        try:
            backend.wait(10)
        except subprocess.TimeoutExpired:
            backend.kill()


def cmd_mfa_enrol_officer(args: argparse.Namespace) -> int:
    """A security engineer enrols an officer's TOTP where every gateway's console checks it.

    The officer's app gets a fresh 160-bit secret (``secrets``), shown once on stdout as an otpauth://
    URI, never logged; the enrolment is written to the audit trail first (who ran it, for whom, never the
    secret). Only officers named in ``[policy_admin] officers`` are enrolled, so a typo cannot create a
    new one."""
    import base64
    import getpass

    import pyotp

    from gateway.cli_audit import record_in_trail
    from gateway.crypto.secretbox import SecretBox
    from gateway.mfa.totp import Totp
    from gateway.state import build_store

    cfg = load_config(args.config)

    def refuse(why: str) -> int:
        print(f"portcullis mfa enrol-officer: {why}", file=sys.stderr)
        return 2
    if cfg.step_up.secrets_file is None:
        return refuse(f"{args.config} has no [step_up] secrets_file: each gateway would seal TOTP secrets with"
                      " a key of its own, which no other process (nor this command) shares")
    if cfg.state.backend == "memory":
        return refuse(f"{args.config} keeps its state in memory, inside the gateway process: use a redis [state]")
    if args.sub not in cfg.policy_admin.officers:
        return refuse(f"{args.sub!r} is not in [policy_admin] officers of {args.config}: add the officer there"
                      " first")
    secret = base64.b32encode(secrets.token_bytes(20)).decode("ascii")

    async def with_totp(enrol: bool) -> float | None:
        """When the officer was enrolled (None: never); with ``enrol``, the new secret stored first."""
        state = build_store(cfg.state)
        try:
            assert cfg.step_up.secrets_file is not None
            totp = Totp(state, SecretBox.from_file(cfg.step_up.secrets_file, create=True),
                        issuer=cfg.step_up.totp_issuer)
            if enrol:
                await totp.enrol_known(args.sub, secret, time.time())
            return await totp.enrolled_at(args.sub)
        finally:
            await state.close()
    if asyncio.run(with_totp(False)) is not None and not args.replace:
        return refuse(f"{args.sub!r} already has an authenticator (--replace to give a new one)")
    # Write-ahead: the trail holds the enrolment before it exists.
    record_in_trail(cfg.audit, {"type": "admin", "time": time.time(), "sub": f"os:{getpass.getuser()}",
                                "action": "officer_totp_enrol", "officer": args.sub, "replace": bool(args.replace)})
    status = 0 if asyncio.run(with_totp(True)) is not None else 1
    if status == 0:
        uri = pyotp.TOTP(secret).provisioning_uri(name=args.sub, issuer_name=cfg.step_up.totp_issuer)
        print(f"# {args.sub}'s authenticator is enrolled. Give the officer this URI (or its QR code) once, in"
              " person; it is not stored in clear anywhere and is not shown again.", file=sys.stderr)
        print(uri)
    return status


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on port {port} after {timeout:.0f}s")


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.demo_keys import ensure_demo_keys, mint_token

    keys = ensure_demo_keys(Path(args.keys_dir) if args.keys_dir else demo_dir())
    accounts = [a for part in args.accounts for a in part.split(",") if a]
    now = int(time.time())
    # auth_time: when the holder authenticated (default: now, a fresh step-up for the policy admin API).
    auth_time = args.auth_time if args.auth_time is not None else now - (args.auth_age or 0)
    extra: dict[str, object] = {"auth_time": auth_time}
    if args.dpop_jkt:
        if not _JKT.fullmatch(args.dpop_jkt):
            print("portcullis: --dpop-jkt must be a JWK thumbprint (43 base64url characters,"
                  " as `portcullis device-key` prints)", file=sys.stderr)
            return 2
        extra["cnf"] = {"jkt": args.dpop_jkt}  # RFC 9449 section 6.1: bound to that device key
    token = mint_token(keys, sub=args.sub, accounts=accounts, roles=args.role or ["client"],
                       ttl=args.ttl, acr=args.acr, extra=extra, now=now)
    bound = f"; bound to device {args.dpop_jkt}" if args.dpop_jkt else ""
    print(f"# demo token for {args.sub} (accounts: {', '.join(accounts) or 'none'}; "
          f"roles: {', '.join(args.role or ['client'])}; acr {args.acr}; authenticated {now - auth_time}s ago; "
          f"expires in {args.ttl}s{bound})", file=sys.stderr)
    print(token)
    return 0


_JKT = re.compile(r"[A-Za-z0-9_-]{43}")


def cmd_device_key(args: argparse.Namespace) -> int:
    from gateway.client import DeviceKey

    path = Path(args.out)
    if path.exists():
        key = DeviceKey.load(path)
        print(f"# existing device key {path}", file=sys.stderr)
    else:
        key = DeviceKey.generate()
        key.save(path)
        print(f"# new device key written to {path} (mode 0600)", file=sys.stderr)
    print(key.thumbprint)  # the device id: pass it to `portcullis token --dpop-jkt`
    return 0


def cmd_dpop_proof(args: argparse.Namespace) -> int:
    from gateway.client import DeviceKey

    key = DeviceKey.load(args.key)
    print(key.proof(args.method, args.url, args.token or None))
    return 0


def cmd_mfa_totp_code(args: argparse.Namespace) -> int:
    from gateway.client import totp_code
    from gateway.demo_keys import read_demo_totp

    path = Path(args.secret_file) if args.secret_file else demo_dir() / TOTP_FILE
    try:
        secret = read_demo_totp(path).get(args.sub)
    except (OSError, ValueError) as exc:
        print(f"portcullis: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if secret is None:
        print(f"portcullis: no TOTP secret for {args.sub!r} in {path}", file=sys.stderr)
        return 2
    now = time.time()
    print(f"# TOTP code of {args.sub} ({'next' if args.next else 'current'} 30 s step; "
          f"{30 - int(now) % 30}s left in this one; each code is accepted once)", file=sys.stderr)
    print(totp_code(secret, now + 30 if args.next else now))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from gateway.bench import main as bench_main

    return int(bench_main(args))


def cmd_policy_test(args: argparse.Namespace) -> int:
    from gateway.policy.check import policy_test

    return policy_test(Path(args.dir), verbose=args.verbose, run=args.run)


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.policy.check import policy_check

    bound = None if args.bound_ms is None else args.bound_ms / 1000
    return policy_check(Path(args.dir), verbose=args.verbose, bound=bound)


def cmd_risk_eval(args: argparse.Namespace) -> int:
    # The generator and the evaluation live in loadtests/ (a checkout's, not the installed package's);
    # imported by name so that nothing here pulls in locust or the load-test tools.
    import importlib
    import json

    sys.path.insert(0, str(REPO_ROOT / "loadtests"))
    try:
        risk_eval = importlib.import_module("risk_eval")
    except ImportError as exc:
        print(f"portcullis: risk eval needs the checkout's loadtests/ ({exc})", file=sys.stderr)
        return 2
    seeds = args.seeds or list(risk_eval.HELD_OUT_SEEDS)
    tune_seeds = args.tune_seeds or list(risk_eval.TUNE_SEEDS)
    scale = {k: v for k, v in (("customers", args.customers), ("warmup_days", args.warmup_days),
                               ("eval_days", args.eval_days)) if v is not None}
    try:
        result = risk_eval.evaluate(seeds, tune_seeds=tune_seeds, config=risk_eval.TrafficConfig(**scale))
    except ValueError as exc:
        print(f"portcullis: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, separators=(",", ":")))
    return 0


def cmd_biometrics_eval(args: argparse.Namespace) -> int:
    # Imported here: the face stack is heavy and the gateway never needs it in-process.
    import json

    from biometrics.evaluate import evaluate

    face_dir = Path(args.vectors)
    if not (face_dir / "deepface" / "master.csv").is_file():
        print(f"portcullis: no {face_dir}/deepface/master.csv (set --vectors)", file=sys.stderr)
        return 2
    try:
        result = evaluate(face_dir)
    except (ValueError, RuntimeError) as exc:
        print(f"portcullis: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, separators=(",", ":")))
    return 0


# -- portcullis keys: the key ring (gateway/crypto/keyring.py) ----------------------------------

KEYS_DIR = REPO_ROOT / "var" / "keys"


async def _keys_run(args: argparse.Namespace) -> int:
    from gateway.crypto.keyring import KeyRing, LocalKms
    from gateway.crypto.keystore import FileKeyStore

    action = args.keys_command
    if action == "init":
        if args.master_env:
            print("portcullis keys: init writes a master key file; --master-env names a key that exists",
                  file=sys.stderr)
            return 2
        path = Path(args.master_file)
        if path.exists():
            print(f"portcullis keys: {path} exists; refusing to overwrite a master key "
                  f"(every data key wrapped under it would be lost)", file=sys.stderr)
            return 2
        kms = LocalKms.from_file(path, create=True)
        print(f"master key {kms.key_id} written to {path} (mode 0600); back it up apart from the key store")
        return 0
    if args.gateway_config:
        return await _keys_with_gateway_config(args)
    kms = LocalKms.from_env(args.master_env) if args.master_env else LocalKms.from_file(args.master_file)
    ring = KeyRing(kms, FileKeyStore(args.store))
    return await _keys_act(args, ring, None)


async def _keys_with_gateway_config(args: argparse.Namespace) -> int:
    """The ring the gateways use ([crypto]: master key and key store, Redis for a fleet); an erasure is
    published so every running process drops its cached copy of the key at once."""
    from gateway.personal_data import PersonalData, build_key_ring
    from gateway.state import build_store

    cfg = load_config(args.gateway_config)
    if not cfg.crypto.enabled:
        print(f"portcullis keys: {args.gateway_config} has no [crypto] enabled = true", file=sys.stderr)
        return 2
    if cfg.crypto.key_store == "state" and cfg.state.backend == "memory":
        print(f"portcullis keys: {args.gateway_config} keeps its keys in a memory state store, inside the "
              f"gateway process: use a redis [state] (or [crypto] key_store = \"file\")", file=sys.stderr)
        return 2
    state = build_store(cfg.state)
    try:
        personal = PersonalData(cfg.crypto, build_key_ring(cfg.crypto, state), state)
        return await _keys_act(args, personal.ring, personal)
    finally:
        await state.close()


async def _keys_act(args: argparse.Namespace, ring: KeyRing, personal: PersonalData | None) -> int:
    from gateway.agreement_keys import utc_text
    from gateway.crypto.fields import FieldCipher

    action = args.keys_command
    if action == "create":
        info = await ring.create(args.purpose, size=args.size)
        print(f"purpose {info.purpose}: key {info.kid} created ({info.size} bytes), current")
    elif action == "rotate":
        info = await ring.rotate(args.purpose)
        print(f"purpose {info.purpose}: key {info.kid} is now current; older keys are kept for decryption")
    elif action == "list":
        rows = await ring.list()
        print(f"{'purpose':<20} {'kid':<12} {'size':>4}  {'created (UTC)':<20} current")
        for r in rows:
            created = utc_text(r.created)
            print(f"{r.purpose:<20} {r.kid:<12} {r.size:>4}  {created:<20} {'yes' if r.current else ''}")
        if not rows:
            print(f"(no purpose keys in {args.store})")
    elif action == "erase-customer":
        if not args.yes:
            print(f"portcullis keys: erase-customer destroys the data key of {args.sub!r}: all of their "
                  f"encrypted personal data becomes unreadable for good; add --yes to do it", file=sys.stderr)
            return 2
        had = await (personal.erase(args.sub) if personal is not None else ring.erase_customer(args.sub))
        told = ("running gateways were told to drop their cached copy" if personal is not None
                else "replicas drop their cached copy within their cache TTL")
        print(f"customer {args.sub!r}: data key {'destroyed' if had else 'absent; marked erased'}; "
              f"{told}; purge key store backups too")
    elif action == "search-term":
        cipher = personal.cipher if personal is not None else FieldCipher(ring, ["value"], indexed=["value"])
        terms = await cipher.search_terms(args.value)
        if not terms:
            print("(no blind-index key yet: nothing was indexed)", file=sys.stderr)
            return 1
        print("index key  blind index (match a sealed field's bik and bi)")
        for kid, term in terms.items():
            print(f"{kid:<10} {term}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.crypto.key_errors import KeyRingError

    try:
        return asyncio.run(_keys_run(args))
    except KeyRingError as exc:
        print(f"portcullis keys: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"portcullis keys: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 2


def cmd_keys_agreement(args: argparse.Namespace) -> int:
    """``keys agreement rotate|list|retire``: the gateway's SM2 agreement keys ([envelope] agreement_key_file)."""
    from gateway.agreement_keys import (
        AgreementKeyRefused,
        agreement_key_infos,
        retire_agreement_key,
        rotate_agreement_key,
        utc_text,
    )
    from gateway.crypto.session import b64e

    cfg = load_config(args.config).envelope
    path = cfg.agreement_key_file
    if path is None:
        print(f"portcullis keys agreement: {args.config} sets no [envelope] agreement_key_file: each gateway "
              f"process draws its own agreement key at start, there is no file to rotate", file=sys.stderr)
        return 2
    keep = cfg.max_age + cfg.window  # how long a key stays after it stops being current (docs/KEYS.md)
    now = time.time()

    def utc(t: float | None) -> str:
        return "-" if t is None else utc_text(t)

    action = args.agreement_command
    if action == "rotate":
        kid, public = rotate_agreement_key(path, now=now)
        print(f"agreement key {kid} is now current in {path}; gateways offer it within a few seconds, "
              f"older keys are kept: retire them after {keep:g} s (max_age + window)")
        print(f"public key (base64url, 65 bytes; for clients that pin it): {b64e(public)}")
    elif action == "list":
        print(f"{'kid':<16} {'created (UTC)':<20} {'current':<7} {'superseded (UTC)':<20} may retire from (UTC)")
        for r in agreement_key_infos(path, keep=keep):
            print(f"{r.kid:<16} {utc(r.created):<20} {'yes' if r.current else '':<7} {utc(r.superseded):<20} "
                  f"{'-' if r.current else utc(r.retire_from)}")
    elif action == "retire":
        try:
            retire_agreement_key(path, args.kid, keep=keep, now=now, force=args.force)
        except AgreementKeyRefused as exc:
            print(f"portcullis keys agreement: {exc}", file=sys.stderr)
            return 2
        print(f"agreement key {args.kid} removed from {path}; gateways drop it within a few seconds")
    return 0


def _keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--master-file", default=os.environ.get("PORTCULLIS_MASTER_FILE",
                                                                str(KEYS_DIR / "master.json")),
                        help="master key file, mode 0600 (default $PORTCULLIS_MASTER_FILE or var/keys/master.json)")
    common.add_argument("--master-env", metavar="VAR",
                        help="read the master key from environment variable VAR (base64 of 16 or 32 bytes) instead")
    common.add_argument("--store", default=os.environ.get("PORTCULLIS_KEY_STORE", str(KEYS_DIR / "keyring.json")),
                        help="key store file of wrapped data keys (default $PORTCULLIS_KEY_STORE or "
                             "var/keys/keyring.json)")
    common.add_argument("--config", dest="gateway_config", metavar="FILE",
                        help="use the key ring of this gateway configuration ([crypto]: its master key and key "
                             "store, e.g. Redis) instead of --master-file/--store; erasures reach running gateways")
    k = sub.add_parser("keys", help="the key ring: master key, data keys by purpose, customer erasure")
    k_sub = k.add_subparsers(dest="keys_command", required=True)
    k_sub.add_parser("init", parents=[common], help="create the master key file (mode 0600); never overwrites")
    kc = k_sub.add_parser("create", parents=[common], help="create the first key of a purpose")
    kc.add_argument("--purpose", required=True, help="e.g. blind-index, audit")
    kc.add_argument("--size", type=int, choices=(16, 32), default=16, help="bytes: 16 (SM4) or 32 (HMAC key)")
    kr = k_sub.add_parser("rotate", parents=[common], help="a new current key for a purpose (old ones kept)")
    kr.add_argument("--purpose", required=True)
    k_sub.add_parser("list", parents=[common], help="key ids, purpose, size, created, current (never key material)")
    ke = k_sub.add_parser("erase-customer", parents=[common],
                          help="destroy a customer's data key (PIPL erasure): their encrypted data becomes unreadable")
    ke.add_argument("sub", help="the customer id (token sub)")
    ke.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")
    ks = k_sub.add_parser("search-term", parents=[common],
                          help="the blind index of a value under each index key (search sealed fields by it)")
    ks.add_argument("value", help="e.g. an ID number or phone number (normalised: case, spaces, dashes)")
    k.set_defaults(func=cmd_keys)

    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default=os.environ.get("PORTCULLIS_CONFIG", str(EXAMPLE_CONFIG)),
                        help="the gateway's TOML configuration (default $PORTCULLIS_CONFIG or "
                             "examples/portcullis.toml); its [envelope] agreement_key_file, max_age, window")
    ka = k_sub.add_parser("agreement", help="the gateway's SM2 agreement keys (/auth/session-key)")
    ka_sub = ka.add_subparsers(dest="agreement_command", required=True)
    ka_sub.add_parser("rotate", parents=[config], help="a fresh current key (older ones kept); prints its id and "
                                                       "public key, never private material")
    ka_sub.add_parser("list", parents=[config], help="key ids, created, which is current, when each may be retired")
    kt = ka_sub.add_parser("retire", parents=[config],
                           help="remove a key that stopped being current at least max_age + window ago")
    kt.add_argument("kid", help="the agreement key id (ak-...)")
    kt.add_argument("--force", action="store_true",
                    help="remove it even if it was current recently (a compromised key; in-flight agreements fail)")
    ka.set_defaults(func=cmd_keys_agreement)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="portcullis", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", required=True, help="TOML configuration file")
    s.add_argument("--log-level", default="INFO")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo", help="run the demo backend and the gateway")
    d.add_argument("--config", default=str(EXAMPLE_CONFIG))
    d.add_argument("--log-level", default="WARNING")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("token", help="mint a demo access token (printed alone on the last line)")
    t.add_argument("--sub", required=True)
    t.add_argument("--accounts", action="append", default=[],
                   help="account id(s); repeat or comma-separate")
    t.add_argument("--role", action="append", help="role (client, advisor, compliance, admin)")
    t.add_argument("--ttl", type=int, default=900)
    t.add_argument("--acr", default="urn:portcullis:acr:pwd",
                   help="authentication context class (the policy admin API needs urn:portcullis:acr:mfa or above)")
    age = t.add_mutually_exclusive_group()
    age.add_argument("--auth-time", type=int, help="auth_time claim, epoch seconds (default: now)")
    age.add_argument("--auth-age", type=int, help="auth_time this many seconds ago (e.g. 600: a stale step-up)")
    t.add_argument("--keys-dir", help="demo key folder (default: var/demo in the checkout)")
    t.add_argument("--dpop-jkt", metavar="THUMBPRINT",
                   help="bind the token to this device key (cnf.jkt): it is then refused without a DPoP proof")
    t.set_defaults(func=cmd_token)

    dk = sub.add_parser("device-key", help="create (or read) a device key file and print its thumbprint")
    dk.add_argument("--out", required=True, help="the PEM key file (created with mode 0600 if missing)")
    dk.set_defaults(func=cmd_device_key)

    dp = sub.add_parser("dpop-proof", help="print a fresh DPoP proof for one request (the DPoP header)")
    dp.add_argument("--key", required=True, help="device key file (portcullis device-key)")
    dp.add_argument("--method", default="GET")
    dp.add_argument("--url", required=True, help="the full URL as the client calls it")
    dp.add_argument("--token", help="the access token sent with the request (its hash goes in ath)")
    dp.set_defaults(func=cmd_dpop_proof)

    mfa = sub.add_parser("mfa", help="step-up helpers for the demo")
    mfa_sub = mfa.add_subparsers(dest="mfa_command", required=True)
    mt = mfa_sub.add_parser("totp-code", help="print a demo customer's current TOTP code (alone on the last line)")
    mt.add_argument("--sub", required=True, help="the customer (alice, bob)")
    mt.add_argument("--secret-file", help="the demo TOTP file {sub: base32 secret} (default: var/demo/totp.json)")
    mt.add_argument("--next", action="store_true",
                    help="the next 30 s step's code (when this step's was used already; accepted within +-1 step)")
    mt.set_defaults(func=cmd_mfa_totp_code)

    mo = mfa_sub.add_parser("enrol-officer", help="enrol a compliance officer's authenticator (the console's step-up):"
                            " prints the otpauth:// URI once, for the officer's app")
    mo.add_argument("--config", required=True, help="the gateways' configuration: its [state] (Redis) and"
                    " [step_up] secrets_file are where the console's TOTP check looks")
    mo.add_argument("--sub", required=True, help="the officer's subject (listed in [policy_admin] officers)")
    mo.add_argument("--replace", action="store_true", help="replace an authenticator already enrolled")
    mo.set_defaults(func=cmd_mfa_enrol_officer)

    b = sub.add_parser("bench", help="benchmark direct vs bare proxy vs gateway")
    b.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    b.add_argument("--rounds", type=int, default=3,
                   help="rounds of direct, bare, gateway back to back; results are medians")
    b.add_argument("--connections", type=int, default=32)
    b.add_argument("--rate", type=int, default=500, help="requests/s for the fixed-load latency run")
    b.add_argument("--path", default="/api/quotes/600519.SH")
    b.add_argument("--tool", choices=("auto", "wrk", "locust"), default="auto")
    b.add_argument("--engine", choices=("baseline", "rego"), default=None,
                   help="override the example's [policy] engine for the gateway target")
    b.set_defaults(func=cmd_bench)

    pol = sub.add_parser("policy", help="test and check a Rego policy bundle")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True)
    pt = pol_sub.add_parser("test", help="run the bundle's test_* rules (like opa test)")
    pt.add_argument("dir", nargs="?", default=str(POLICY_DIR), help="bundle directory (default: policies/)")
    pt.add_argument("--verbose", "-v", action="store_true", help="show prints and full error text")
    pt.add_argument("--run", metavar="REGEX", help="only tests whose data.<package>.<rule> path matches")
    pt.set_defaults(func=cmd_policy_test)
    pc = pol_sub.add_parser("check", help="compile, test, run the gateway invariants and the sample inputs")
    pc.add_argument("dir", nargs="?", default=str(POLICY_DIR), help="bundle directory (default: policies/)")
    pc.add_argument("--verbose", "-v", action="store_true", help="show every sample decision")
    pc.add_argument("--bound-ms", type=float, default=None,
                    help="time bound per evaluation in ms (default: the engine's budget, 50 ms)")
    pc.set_defaults(func=cmd_policy_check)

    risk = sub.add_parser("risk", help="evaluate the risk engine")
    risk_sub = risk.add_subparsers(dest="risk_command", required=True)
    re_ = risk_sub.add_parser("eval", help="detection per attack scenario and legitimate step-ups on synthetic "
                                           "traffic (held-out seeds), as one JSON line")
    re_.add_argument("--seeds", type=int, nargs="+", help="held-out seeds to report on (default: 101 102 103)")
    re_.add_argument("--tune-seeds", type=int, nargs="+",
                     help="seeds used for tuning, refused as report seeds (default: 1 2 3 4)")
    re_.add_argument("--customers", type=int, help="legitimate customers per seed (default 300)")
    re_.add_argument("--warmup-days", type=int, help="days of learning before the scored window (default 12)")
    re_.add_argument("--eval-days", type=int, help="days scored (default 7)")
    re_.set_defaults(func=cmd_risk_eval)

    bio = sub.add_parser("biometrics", help="the face check")
    bio_sub = bio.add_subparsers(dest="biometrics_command", required=True)
    be = bio_sub.add_parser("eval", help="false-match and false-non-match rates at the chosen threshold on the "
                                         "shared face photos, as one JSON line")
    be.add_argument("--vectors", default=os.environ.get("PORTCULLIS_VECTORS", str(REPO_ROOT.parent / "shared" /
                                                                                  "vectors")) + "/face",
                    help="the face vectors folder (default ../shared/vectors/face)")
    be.set_defaults(func=cmd_biometrics_eval)

    _keys_parser(sub)
    from gateway.cli_audit import add_parser as audit_parser

    audit_parser(sub, EXAMPLE_CONFIG)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"portcullis: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a listener port already in use
        print(f"portcullis: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
