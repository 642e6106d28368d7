"""``python -m demo_backend``: run the demo trading backend until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from .app import SEALED_ROUTE_NAMES, create_app

_ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'  # no headers: they carry the identity assertion
_TOKEN_ENV = "PORTCULLIS_BACKEND_INTERNAL_TOKEN"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo_backend", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="port to listen on (9000; 0: any)")
    p.add_argument(
        "--identity-jwks",
        type=Path,
        help="JWKS file with the gateway's identity-assertion public key (ES256)",
    )
    p.add_argument(
        "--identity-hmac-key",
        type=Path,
        help="this backend's own identity-assertion key (HS256, base64url text)",
    )
    p.add_argument(
        "--internal-token",
        default=os.environ.get(_TOKEN_ENV),
        help=f"also require this value in X-Portcullis-Internal-Token (env {_TOKEN_ENV})",
    )
    p.add_argument(
        "--debug-routes",
        action="store_true",
        help="serve /__debug/echo and /__debug/slow (integration tests only)",
    )
    p.add_argument(
        "--payload-key-file",
        type=Path,
        help="SM4 key file shared with the gateway (mode 0600): open request bodies it sealed",
    )
    p.add_argument(
        "--require-sealed",
        action="append",
        default=[],
        choices=SEALED_ROUTE_NAMES,
        metavar="ROUTE",
        help=f"refuse plaintext bodies on this route ({', '.join(SEALED_ROUTE_NAMES)}); repeatable",
    )
    p.add_argument("--access-log", action="store_true", help="log one line per request")
    p.add_argument("--seed", type=int, default=7, help="seed of the simulated prices")
    p.add_argument("--shutdown-timeout", type=float, default=5.0, help="seconds to drain")
    return p


async def _serve(args: argparse.Namespace) -> None:
    app = create_app(
        args.identity_jwks,
        identity_hmac_key=args.identity_hmac_key,
        debug_routes=args.debug_routes,
        internal_token=args.internal_token,
        seed=args.seed,
        payload_key_file=args.payload_key_file,
        require_sealed=args.require_sealed,
    )
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("demo_backend.access") if args.access_log else None,
        access_log_format=_ACCESS_LOG_FORMAT,
        handle_signals=False,
        shutdown_timeout=args.shutdown_timeout,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"demo backend listening on http://{shown}:{port}", flush=True)
        await stop.wait()
        print("demo backend stopping", flush=True)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.identity_jwks is None and args.identity_hmac_key is None:
        parser.error("give --identity-jwks, --identity-hmac-key or both")
    if args.require_sealed and args.payload_key_file is None:
        parser.error("--require-sealed needs --payload-key-file")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(args))
    except ValueError as exc:  # a bad JWKS file: say which and why, without a traceback
        print(f"demo backend: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"demo backend: cannot listen on {args.host}:{args.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
