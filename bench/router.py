"""Router benchmark: the same fake upstream measured direct, through the tiered router, and through LiteLLM.

For each path: latency at 1 request in flight (p50/p99, and what the proxy adds over direct) and throughput
at 32 in flight (requests/s, errors), plus the proxy's CPU time per request. The proxy under test is pinned
to one core; the fake upstream (`tiered_devstack.fake_upstream --fast`, a canned reply from a bare asyncio
protocol) and this load generator (raw keep-alive HTTP/1.1 on asyncio streams) share the other, so the
proxy is what limits throughput. The router runs with routing (`model: auto` through rules), metrics and
cost accounting on. LiteLLM runs from its own venv (`.bench-venv/litellm`, created on first use); if it
cannot be installed the table says so and shows direct vs router. The machine is shared, so each path
runs three rounds and the table shows the median round.

Every load loop is bounded in request count and in time. Run: `.venv/bin/python bench/router.py [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from tiered_devstack import fake_upstream

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VENV = ROOT / ".bench-venv" / "litellm"
LITELLM_KEY = "sk-bench-0123456789abcdef0123456789abcdef"
BODY = json.dumps(
    {"model": "auto", "messages": [{"role": "user", "content": "Say hello in one word."}], "max_tokens": 8}
).encode()
ROUNDS = 3  # the machine is shared: report the median round
CORES = sorted(os.sched_getaffinity(0))
PROXY_CORE, LOAD_CORES = CORES[0], set(CORES[1:] or CORES)


# ---- processes ------------------------------------------------------------------------------------


@contextlib.contextmanager
def ours(args: list[str], log: Path, core: int) -> Iterator[tuple[int, str]]:
    """The fake upstream or the router, pinned to `core`; yields (pid, url)."""
    proc, url = fake_upstream.spawn(args, log, core)
    try:
        yield proc.pid, url
    finally:
        fake_upstream.stop(proc)


@contextlib.contextmanager
def litellm_process(binary: Path, config: Path, port: int, log: Path) -> Iterator[int]:
    """LiteLLM's proxy pinned to the proxy core, once its liveness endpoint answers; yields its pid."""
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
    }
    cmd = [
        str(binary),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=out, env=env, preexec_fn=lambda: os.sched_setaffinity(0, {PROXY_CORE})
        )
    try:
        deadline = time.monotonic() + 180  # LiteLLM imports for a long while
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"LiteLLM did not start; log:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).status_code == 200:
                    break
            time.sleep(0.25)
        yield proc.pid
    finally:
        fake_upstream.stop(proc)


# ---- load generator ---------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: requests are prebuilt bytes, replies are read by length."""

    def __init__(self, url: str, path: str, headers: dict[str, str]) -> None:
        hostport = url.split("://", 1)[1].split("/", 1)[0]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n{extra}\r\n"
        ).encode() + BODY
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"content-length:")
        if at >= 0:
            await self.reader.readexactly(int(lower[at + 15 : lower.index(b"\r\n", at)]))
        elif b"chunked" in lower:
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readuntil(b"\r\n")
        if b"connection: close" in lower:
            self.writer.close()
            self.writer = None
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Result:
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    rps: float = float("nan")
    errors: int = 0
    cpu_ms_per_request: float = float("nan")


async def measure(
    url: str,
    path: str,
    headers: dict[str, str],
    pid: int | None,
    sequential: int,
    concurrent: int,
    seconds: float,
) -> Result:
    """ROUNDS rounds of (sequential requests, then `concurrent` requests 32 at a time), each bounded by
    seconds / ROUNDS; every figure is the median over the rounds, errors are summed."""
    conn = Connection(url, path, headers)
    for _ in range(50):  # warm-up: connections, caches, lazy imports
        await conn.post()
    conn.close()
    proc = psutil.Process(pid) if pid else None
    rounds = [
        await one_round(url, path, headers, proc, sequential // ROUNDS, concurrent // ROUNDS, seconds / ROUNDS)
        for _ in range(ROUNDS)
    ]
    return Result(
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        rps=statistics.median(r.rps for r in rounds),
        errors=sum(r.errors for r in rounds),
        cpu_ms_per_request=statistics.median(r.cpu_ms_per_request for r in rounds),
    )


async def one_round(
    url: str,
    path: str,
    headers: dict[str, str],
    proc: psutil.Process | None,
    sequential: int,
    concurrent: int,
    seconds: float,
) -> Result:
    result = Result()
    conn = Connection(url, path, headers)
    latencies = []
    deadline = time.monotonic() + seconds
    for _ in range(sequential):
        start = time.perf_counter()
        status = await conn.post()
        latencies.append(time.perf_counter() - start)
        result.errors += status != 200
        if time.monotonic() > deadline:
            break
    conn.close()
    latencies.sort()
    result.p50_ms = latencies[len(latencies) // 2] * 1e3
    result.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3

    remaining = concurrent
    errors = 0

    async def worker() -> int:
        nonlocal remaining, errors
        c = Connection(url, path, headers)
        done = 0
        try:
            while remaining > 0 and time.monotonic() < stop_at:
                remaining -= 1
                try:
                    errors += await c.post() != 200
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    c.close()
                    c = Connection(url, path, headers)
                done += 1
        finally:
            c.close()
        return done

    cpu_before = _cpu(proc)
    started = time.perf_counter()
    stop_at = time.monotonic() + seconds
    done = sum(await asyncio.gather(*(worker() for _ in range(32))))
    elapsed = time.perf_counter() - started
    result.rps = done / elapsed
    result.errors += errors
    if proc is not None:
        result.cpu_ms_per_request = (_cpu(proc) - cpu_before) / done * 1e3
    return result


def _cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    times = proc.cpu_times()
    return (
        times.user
        + times.system
        + sum(c.cpu_times().user + c.cpu_times().system for c in proc.children(recursive=True))
    )


# ---- LiteLLM ---------------------------------------------------------------------------------------


def litellm_binary() -> Path | None:
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    print("installing LiteLLM into .bench-venv/litellm (first run only) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=120)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True, timeout=1200)
    except (subprocess.SubprocessError, OSError) as error:
        print(f"LiteLLM unavailable: {error}")
        return None
    return binary if binary.exists() else None


def router_config(upstream: str, learned: bool = False) -> dict[str, object]:
    """The router's bench config; `learned` appends a classifier rule (the learned router scores every
    `model: auto` request the rules before it do not take — the bench's one prompt is embedded once and
    then served from the embedding cache, see docs/router.md "Learned routing" for unique prompts)."""
    pricing_local = {"gpuHourUSD": 3.5, "gpusPerReplica": 1, "tokensPerSecond": 2500}
    return {
        "tiers": [
            {
                "name": "small",
                "baseURL": f"{upstream}/v1",
                "pricing": pricing_local,
                "concurrency": 1000,
                "fallback": ["frontier"],
            },
            {
                "name": "frontier",
                "kind": "external",
                "baseURL": f"{upstream}/v1",
                "pricing": {"inputPerMTok": 5, "outputPerMTok": 30},
            },
        ],
        "default": "small",
        "baseline": "frontier",
        "rules": [
            {"name": "extract", "match": {"taskTypes": ["extraction"]}, "tier": "small"},
            {"name": "long", "match": {"minPromptTokens": 100000}, "tier": "frontier"},
            {
                "name": "math",
                "match": {"keywords": ["theorem", "prove"], "regex": "step[- ]by[- ]step"},
                "tier": "frontier",
            },
            *([{"name": "learned", "match": {"classifier": {}}, "tier": "frontier"}] if learned else []),
        ],
        "privacy": {"privateTeams": ["legal"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--no-litellm", action="store_true")
    args = parser.parse_args()
    sequential, concurrent, seconds = (600, 3000, 12.0) if args.quick else (3000, 18000, 30.0)
    os.sched_setaffinity(0, LOAD_CORES)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    results: dict[str, Result | str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    fake_args = ["-m", "tiered_devstack.fake_upstream", "--fast"]
    with ours(fake_args, tmp / "fake.log", min(LOAD_CORES)) as (_, upstream):
        print(
            f"cores: proxy on {PROXY_CORE}, fake upstream + load generator on {sorted(LOAD_CORES)}; "
            f"load average before: {os.getloadavg()[0]:.2f} (other work on this machine skews the numbers)"
        )
        results["direct"] = asyncio.run(
            measure(upstream, "/v1/chat/completions", {}, None, sequential, concurrent, seconds)
        )
        config = tmp / "router.yaml"
        config.write_text(json.dumps(router_config(upstream)))
        router_args = [
            "-m",
            "tiered_router.server",
            "--config",
            str(config),
            "--port",
            "0",
            "--log-level",
            "WARNING",
            "--drain-seconds",
            "0",
        ]
        path, headers = "/v1/chat/completions", {"x-tiered-team": "bench"}
        with ours(router_args, tmp / "router.log", PROXY_CORE) as (pid, url):
            results["router"] = asyncio.run(measure(url, path, headers, pid, sequential, concurrent, seconds))
        learned = tmp / "router-learned.yaml"
        learned.write_text(json.dumps(router_config(upstream, learned=True)))
        learned_args = [*router_args]
        learned_args[learned_args.index(str(config))] = str(learned)
        with ours(learned_args, tmp / "router-learned.log", PROXY_CORE) as (pid, url):
            results["learned"] = asyncio.run(measure(url, path, headers, pid, sequential, concurrent, seconds))
        binary = None if args.no_litellm else litellm_binary()
        if binary is None:
            results["litellm"] = "unavailable"
        else:
            results["litellm"] = run_litellm(binary, upstream, tmp, sequential, concurrent, seconds)
    report(results)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


def run_litellm(
    binary: Path, upstream: str, tmp: Path, sequential: int, concurrent: int, seconds: float
) -> Result | str:
    config = tmp / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "auto",
                        "litellm_params": {
                            "model": "openai/small",
                            "api_base": f"{upstream}/v1",
                            "api_key": "none",
                        },
                    }
                ],
                "general_settings": {"master_key": LITELLM_KEY},
            }
        )
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        with litellm_process(binary, config, port, tmp / "litellm.log") as pid:
            # LiteLLM manages ~100 requests/s: its phases end by the time bound, not the router's counts.
            headers = {"Authorization": f"Bearer {LITELLM_KEY}"}
            return asyncio.run(
                measure(
                    f"http://127.0.0.1:{port}",
                    "/v1/chat/completions",
                    headers,
                    pid,
                    min(sequential, 500),
                    concurrent,
                    seconds,
                )
            )
    except RuntimeError as error:
        return f"unavailable ({str(error).splitlines()[0]})"


def report(results: dict[str, Result | str]) -> None:
    direct = results["direct"]
    assert isinstance(direct, Result)
    paths = [name for name, r in results.items() if isinstance(r, Result)]
    rows = [
        ("p50 latency @1 in flight (ms)", lambda r: r.p50_ms),
        ("p99 latency @1 in flight (ms)", lambda r: r.p99_ms),
        ("added p50 over direct (ms)", lambda r: r.p50_ms - direct.p50_ms),
        ("added p99 over direct (ms)", lambda r: r.p99_ms - direct.p99_ms),
        ("requests/s @32 in flight", lambda r: r.rps),
        ("errors", lambda r: r.errors),
        ("proxy CPU ms per request", lambda r: r.cpu_ms_per_request),
    ]
    ratios = [("router/direct", "router", "direct")]
    if "litellm" in paths:
        ratios.append(("litellm/router", "litellm", "router"))
    print()
    print(f"{'':32}" + "".join(f"{p:>12}" for p in paths) + "".join(f"{r[0]:>16}" for r in ratios))
    for label, value in rows:
        cells = "".join(f"{value(results[p]):>12.3f}" if isinstance(results[p], Result) else "" for p in paths)
        ratio_cells = ""
        for _, a, b in ratios:
            va, vb = value(results[a]), value(results[b])  # type: ignore[arg-type]
            ratio_cells += f"{va / vb:>16.2f}" if vb and vb == vb and va == va else f"{'-':>16}"
        print(f"{label:32}{cells}{ratio_cells}")
    for name, r in results.items():
        if isinstance(r, str):
            print(f"{name}: {r}")
    router = results["router"]
    assert isinstance(router, Result)
    per_core = 1e3 / router.cpu_ms_per_request if router.cpu_ms_per_request > 0 else float("nan")
    print(f"\nrouter: one core's worth of its CPU time per request → {per_core:,.0f} requests/s per core")
    goals = [
        ("added p50 ≤ 1 ms", router.p50_ms - direct.p50_ms <= 1.0),
        ("added p99 ≤ 5 ms", router.p99_ms - direct.p99_ms <= 5.0),
        ("≥ 2,000 requests/s at 32 in flight, 0 errors", router.rps >= 2000 and router.errors == 0),
    ]
    learned = results.get("learned")
    if isinstance(learned, Result):
        goals.append(("learned routing ≥ 1,000 requests/s", learned.rps >= 1000 and learned.errors == 0))
    print("goals: " + "; ".join(f"{g}: {'met' if ok else 'NOT met'}" for g, ok in goals))


if __name__ == "__main__":
    sys.exit(main())
