"""Operator throughput: N InferenceTiers created at once against the emulator, the real operator reconciling.

Prints: tiers/s until every RayService exists, p50/p95 create→child latency, API writes during a
steady-state window (the operator resyncs every object meanwhile), and the operator's CPU time and RSS.
Goals: ≥ 250 tiers/s (issue 7; 150 before), p95 ≤ 300 ms, 0 steady-state writes.

    python bench/reconcile.py [--tiers 500] [--steady-seconds 60] [--resync-seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
from tiered_devstack.cluster import EmulatorProcess, running_emulator, running_operator

NAMESPACE = "bench"


def tier(name: str) -> dict:
    return {
        "apiVersion": "tiered.dev/v1alpha1",
        "kind": "InferenceTier",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"id": "llama-3.1-8b-instruct", "source": "hf://org/llama-AWQ", "parameters": "8B",
                      "quantization": "awq", "bits": 4},
            "replicas": {"min": 1, "max": 4},
        },
    }


async def create_and_watch(url: str, names: list[str], timeout: float, rate: float | None = None
                           ) -> tuple[dict[str, float], dict[str, float]]:
    """Create tiers (all at once, or `rate` per second); return creation and child-appearance times by name."""
    count = len(names)
    created: dict[str, float] = {}
    appeared: dict[str, float] = {}
    tiers_url = f"{url}/apis/tiered.dev/v1alpha1/namespaces/{NAMESPACE}/inferencetiers"
    children_url = f"{url}/apis/ray.io/v1/namespaces/{NAMESPACE}/rayservices"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout + 30)) as session:
        async with session.get(children_url) as response:
            version = (await response.json())["metadata"]["resourceVersion"]

        async def watch() -> None:
            params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": str(int(timeout))}
            async with session.get(children_url, params=params) as response:
                async for line in response.content:
                    event = json.loads(line)
                    if event["type"] == "ADDED":
                        appeared.setdefault(event["object"]["metadata"]["name"], time.monotonic())
                        if len(appeared) >= count:
                            return

        watcher = asyncio.create_task(watch())
        semaphore = asyncio.Semaphore(32)

        start = time.monotonic()

        async def create(index: int, name: str) -> None:
            if rate:
                await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
            async with semaphore:
                created[name] = time.monotonic()
                async with session.post(tiers_url, json=tier(name)) as response:
                    assert response.status == 201, await response.text()

        await asyncio.gather(*(create(i, name) for i, name in enumerate(names)))
        await asyncio.wait_for(watcher, timeout)
    return created, appeared


def settle(emulator: EmulatorProcess, quiet_seconds: float = 2.0, timeout: float = 60.0) -> None:
    """Wait (bounded) until a `quiet_seconds` window passes with no API writes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        emulator.reset_requests()
        time.sleep(quiet_seconds)
        if emulator.writes() == 0:
            return


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiers", type=int, default=500)
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument("--resync-seconds", type=float, default=30)
    parser.add_argument("--paced-tiers", type=int, default=200)
    parser.add_argument("--paced-rate", type=float, default=50, help="tiers created per second when paced")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir, running_emulator(Path(workdir)) as emulator, \
            running_operator(emulator, Path(workdir), resync_seconds=args.resync_seconds) as operator:
        process = psutil.Process(operator.process.pid)
        server = psutil.Process(emulator.process.pid)
        cpu_before = sum(process.cpu_times()[:2])
        server_before = sum(server.cpu_times()[:2])
        started = time.monotonic()
        names = [f"tier-{i:04d}" for i in range(args.tiers)]
        created, appeared = asyncio.run(create_and_watch(emulator.url, names, timeout=120))
        elapsed = max(appeared.values()) - started
        cpu_burst = sum(process.cpu_times()[:2]) - cpu_before
        server_burst = sum(server.cpu_times()[:2]) - server_before
        latencies = [(appeared[name] - created[name]) * 1000 for name in created]
        settle(emulator)  # the burst's status patches and Events, so the paced run starts on a quiet operator
        paced_names = [f"paced-{i:04d}" for i in range(args.paced_tiers)]
        created, appeared = asyncio.run(create_and_watch(emulator.url, paced_names, 120, args.paced_rate))
        paced = [(appeared[name] - created[name]) * 1000 for name in created]

        settle(emulator)
        emulator.reset_requests()
        cpu_steady_before = sum(process.cpu_times()[:2])
        time.sleep(args.steady_seconds)
        writes = emulator.writes()
        reads = sum(emulator.requests().values()) - writes
        cpu_steady = sum(process.cpu_times()[:2]) - cpu_steady_before
        rss = process.memory_info().rss / 2**20

    print(f"reconcile bench: {args.tiers} InferenceTiers, operator resync every {args.resync_seconds:g} s")
    print(f"  throughput           {args.tiers / elapsed:8.1f} tiers/s   (goal ≥ 250; {elapsed:.2f} s for all)")
    burst = f"p50 {statistics.median(latencies):7.1f} ms  p95 {percentile(latencies, 0.95):7.1f} ms"
    print(f"  create→child, burst  {burst}"
          f"  (all {args.tiers} created at once: mostly queueing)")
    print(f"  create→child, paced  p50 {statistics.median(paced):7.1f} ms  p95 {percentile(paced, 0.95):7.1f} ms"
          f"  ({args.paced_tiers} tiers at {args.paced_rate:g}/s; goal p95 ≤ 300)")
    print(f"  steady-state writes  {writes:8d}         in {args.steady_seconds:g} s (goal 0); reads {reads}")
    print(f"  operator CPU         {cpu_burst:8.2f} s during creation, {cpu_steady:.2f} s steady "
          f"({cpu_steady / args.steady_seconds * 100:.1f}% of a core)")
    print(f"  operator RSS         {rss:8.1f} MiB")
    print(f"  emulator CPU         {server_burst:8.2f} s during creation (the same two cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
