"""`tiered router --config FILE [--host H --port P]`: serve the OpenAI-compatible router.

Also runnable as `python -m tiered_router.server`. Prints `listening on http://HOST:PORT` once it accepts
connections (`--port 0` picks a free port, which tests use). Heavy imports happen inside `router()` so
that building the `tiered` CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys


def add_router_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="RouterConfig YAML file (reloaded when it changes)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=1.0,
        help="seconds between checks of the config and API key files (default 1)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=25.0,
        help="seconds in-flight requests get to finish after SIGTERM (default 25, under Kubernetes' 30)",
    )
    parser.add_argument("--log-level", default="INFO")


def router(args: argparse.Namespace) -> int:
    import asyncio
    import socket

    from aiohttp import web

    from tiered_router.app import build_app
    from tiered_router.state import RouterState

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        state = RouterState(args.config, reload_interval=args.reload_interval)
    except ValueError as error:
        print(f"tiered router: invalid config: {error}", file=sys.stderr)
        return 2
    # Everything allocated so far (modules, config) lives for the whole process: keep it out of the
    # collector's scans so collections on the request path stay short.
    gc.freeze()
    try:
        import uvloop  # measured: a little more throughput on the same core; optional

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]

    def announce(*_: object) -> None:
        print(f"listening on http://{host}:{port}", flush=True)

    web.run_app(build_app(state), sock=sock, print=announce, access_log=None, shutdown_timeout=args.shutdown_timeout)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiered router", description=__doc__.splitlines()[0])
    add_router_arguments(parser)
    return router(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
