"""`python -m biometrics serve --port 8090 --secret-file FILE [--data-dir DIR]`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from biometrics.service import FaceService, ServiceConfig, is_loopback, make_app, read_secret


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m biometrics", description="the Portcullis face service")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the face service on loopback")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8090)
    s.add_argument("--secret-file", required=True, type=Path, help="shared secret (>= 32 bytes) the gateway sends")
    s.add_argument("--data-dir", type=Path, default=Path("var/biometrics"),
                   help="consent log, sealed templates, the template key (default var/biometrics)")
    s.add_argument("--key-file", type=Path, help="template key (32 bytes; default DATA_DIR/template.key)")
    s.add_argument("--workers", type=int, default=1, help="face worker processes")
    s.add_argument("--allow-non-loopback", action="store_true",
                   help="bind a non-loopback address (put mTLS in front of it)")
    s.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not is_loopback(args.host) and not args.allow_non_loopback:
        print(f"biometrics: refusing to listen on {args.host}: loopback only (see --allow-non-loopback)",
              file=sys.stderr)
        return 2
    try:
        config = ServiceConfig(data_dir=args.data_dir, secret=read_secret(args.secret_file),
                               key_file=args.key_file, workers=args.workers)
    except (OSError, ValueError) as exc:
        print(f"biometrics: {exc}", file=sys.stderr)
        return 2
    app = make_app(FaceService(config))
    web.run_app(app, host=args.host, port=args.port, access_log=None,
                print=lambda _: print(f"biometrics listening on {args.host}:{args.port}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
