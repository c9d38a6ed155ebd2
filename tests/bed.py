"""Test bed: the emulator and operator processes live in `tiered_devstack.cluster` (the demo and the
benchmarks use them too); this module re-exports them for the tests and keeps the emulator's own benchmark.

`python tests/bed.py --bench` prints the emulator's throughput (GET and PATCH per second, 500 objects).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from tiered_devstack.cluster import (
    KUBECTL,
    MERGE,
    REPO_ROOT,
    TIERED,
    WRITE_VERBS,
    EmulatorProcess,
    OperatorProcess,
    check_kubectl,
    eventually,
    running_emulator,
    running_kopf,
    running_operator,
)

__all__ = [
    "KUBECTL", "REPO_ROOT", "TIERED", "WRITE_VERBS", "EmulatorProcess", "OperatorProcess", "check_kubectl",
    "eventually", "running_emulator", "running_kopf", "running_operator",
]


def bench(objects: int = 500, seconds: float = 5.0, concurrency: int = 16) -> dict[str, float]:
    """Requests per second against a fresh emulator with `objects` custom resources (one client process)."""
    import asyncio

    import aiohttp

    async def load(url: str) -> dict[str, float]:
        base = f"{url}/apis/ray.io/v1/namespaces/default/rayservices"
        async with aiohttp.ClientSession() as session:
            for i in range(objects):
                async with session.post(base, json={"apiVersion": "ray.io/v1", "kind": "RayService",
                                                    "metadata": {"name": f"rs-{i}"}, "spec": {}}) as response:
                    assert response.status == 201, await response.text()
            results = {}
            for verb in ("GET", "PATCH"):
                done, stop = 0, time.monotonic() + seconds

                async def worker(offset: int, verb: str = verb, stop: float = stop) -> None:
                    nonlocal done
                    i = offset
                    while time.monotonic() < stop:
                        name = f"{base}/rs-{i % objects}"
                        if verb == "GET":
                            request = session.get(name)
                        else:
                            patch = json.dumps({"metadata": {"labels": {"n": str(i)}}})
                            request = session.patch(name, data=patch, headers={"Content-Type": MERGE})
                        async with request as response:
                            await response.read()
                            assert response.status == 200
                        done, i = done + 1, i + concurrency

                started = time.monotonic()
                await asyncio.gather(*(worker(n) for n in range(concurrency)))
                results[f"{verb} per second"] = round(done / (time.monotonic() - started))
            return results

    with tempfile.TemporaryDirectory() as tmp, running_emulator(Path(tmp), ["--no-validation"]) as emulator:
        return asyncio.run(load(emulator.url))



if __name__ == "__main__":
    if "--bench" in sys.argv:
        print(bench())
