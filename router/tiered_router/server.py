"""`tiered router --config FILE [--host H --port P]`: serve the OpenAI-compatible router.

Also runnable as `python -m tiered_router.server`. Prints `listening on http://HOST:PORT` once it accepts
connections (`--port 0` picks a free port, which tests use), and `metrics on http://HOST:PORT` first when
`--metrics-port` gives `/metrics` a listener of its own. Heavy imports happen inside `router()` so that
building the `tiered` CLI parser stays cheap.

Shutdown (SIGTERM or SIGINT), as a pod needs it: `/readyz` turns 503 at once while the listener keeps
serving for `--drain-seconds` (the Service's endpoints take seconds to drop the pod; responses meanwhile
say `Connection: close`); then the listener closes and requests in flight get until `--shutdown-timeout`
after the signal; whatever still runs then is cut with an OpenAI-shaped error (an SSE error event in a
started stream). A second signal skips the rest of the drain.

The router writes no files: it needs no writable root filesystem and no particular user.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tiered_router.state import RouterState

log = logging.getLogger("tiered.router")

HOST_ENV = "TIERED_ROUTER_HOST"
CUT_GRACE_SECONDS = 2.0
"""After the deadline cut, how long cut requests get to write their error reply before connections close."""


def add_router_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="RouterConfig YAML file (reloaded when it changes)")
    parser.add_argument(
        "--host",
        default=os.environ.get(HOST_ENV, "127.0.0.1"),
        help=f"address to listen on (default ${HOST_ENV}, else 127.0.0.1; in a pod 0.0.0.0)",
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics on this port instead of the API port (same host; 0 picks a free one)",
    )
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=1.0,
        help="seconds between checks of the config and API key files (default 1)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=5.0,
        help="after SIGTERM, seconds /readyz says 503 while the listener keeps serving (default 5)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=25.0,
        help="seconds after SIGTERM until requests still in flight are cut (default 25, under Kubernetes' 30)",
    )
    parser.add_argument("--log-level", default="INFO")


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def router(args: argparse.Namespace) -> int:
    import asyncio

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
    sock = bind(args.host, args.port)
    metrics_sock = None if args.metrics_port is None else bind(args.host, args.metrics_port)
    asyncio.run(serve(state, sock, metrics_sock, args.drain_seconds, args.shutdown_timeout))
    return 0


async def serve(
    state: RouterState,
    sock: socket.socket,
    metrics_sock: socket.socket | None,
    drain_seconds: float,
    shutdown_timeout: float,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain, stop accepting, wait for requests in flight, cut the rest."""
    import asyncio
    import signal

    from aiohttp import web

    from tiered_router.app import build_app, build_metrics_app

    loop = asyncio.get_running_loop()
    # By the time the runner cleans up, requests are done or cut: its own wait only covers the cut's replies.
    api = build_app(state, serve_metrics=metrics_sock is None)
    runner = web.AppRunner(api, access_log=None, shutdown_timeout=CUT_GRACE_SECONDS)
    await runner.setup()
    metrics_runner = None
    if metrics_sock is not None:
        metrics_runner = web.AppRunner(build_metrics_app(state), access_log=None)
        await metrics_runner.setup()
        await web.SockSite(metrics_runner, metrics_sock).start()
        print(f"metrics on {_url(metrics_sock)}", flush=True)
    site = web.SockSite(runner, sock)
    await site.start()
    print(f"listening on {_url(sock)}", flush=True)

    signals = asyncio.Queue[str]()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, signals.put_nowait, number.name)
    name = await signals.get()
    deadline = loop.time() + shutdown_timeout
    state.lifecycle.draining = True
    drain = max(0.0, min(drain_seconds, shutdown_timeout))
    log.info("%s: readiness is 503; serving for the %.1f s drain period", name, drain)
    try:
        await asyncio.wait_for(signals.get(), drain)
        log.info("second signal: drain period skipped")
    except TimeoutError:
        pass

    await site.stop()
    server = runner.server
    if server is not None:
        server.pre_shutdown()  # idle keep-alive connections close now, busy ones after their reply
    requests = state.lifecycle.requests
    log.info("stopped accepting; %d requests in flight have %.1f s", len(requests), max(0.0, deadline - loop.time()))
    while requests and loop.time() < deadline:  # bounded by the deadline
        await asyncio.sleep(0.05)
    if requests:
        log.warning("shutdown deadline: cutting %d requests still in flight", state.lifecycle.cut_requests())
        grace = loop.time() + CUT_GRACE_SECONDS
        while requests and loop.time() < grace:
            await asyncio.sleep(0.01)
    await runner.cleanup()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiered router", description=__doc__.splitlines()[0])
    add_router_arguments(parser)
    return router(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
