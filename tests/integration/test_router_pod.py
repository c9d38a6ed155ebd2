"""The router as a pod runs it: a ConfigMap volume swapped under traffic, and SIGTERM under load.

Real router and fake-upstream processes on loopback. Load loops are bounded in count and time; the only
clock comparisons are lower bounds on the router's own promises (the listener stays open for the whole
drain period), which a slow machine cannot break.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml
from router_bed import FakeUpstream, base_config, router
from tiered_devstack import fake_upstream
from tiered_devstack.router_pod import VolumeDir

pytestmark = pytest.mark.integration

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


async def _ask(client: httpx.AsyncClient, url: str, stream: bool) -> str:
    """One completion; returns the tier that answered, raises on anything but a whole 200 answer."""
    body = {**CHAT, "stream": True} if stream else CHAT
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        data = await response.aread()
    if response.status_code != 200:
        raise AssertionError(f"{response.status_code}: {data[:300]!r}")
    if stream and (not data.rstrip().endswith(b"data: [DONE]") or b'"error"' in data):
        raise AssertionError(f"stream did not finish cleanly: {data[-300:]!r}")
    return response.headers["x-tiered-tier"]


async def test_configmap_volume_swap_reloads_with_no_failed_request(
    router_fakes: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    for fake in router_fakes.values():
        fake.reset()
    volume = VolumeDir(tmp_path / "config")  # laid out and swapped as kubelet keeps a ConfigMap volume
    volume.update({"config.yaml": yaml.safe_dump(base_config(router_fakes))})
    swaps = 12
    with router(None, tmp_path, config_path=volume.root / "config.yaml") as rt:
        served: dict[str, int] = {}
        failures: list[str] = []
        done = asyncio.Event()
        budget = {"requests": 2000}
        give_up = time.monotonic() + 20

        async def worker(index: int) -> None:
            async with httpx.AsyncClient(timeout=10) as client:
                while not done.is_set() and budget["requests"] > 0 and time.monotonic() < give_up:
                    budget["requests"] -= 1
                    try:
                        tier = await _ask(client, rt.url, stream=budget["requests"] % 4 == 0)
                        served[tier] = served.get(tier, 0) + 1
                    except (httpx.HTTPError, AssertionError) as error:
                        failures.append(repr(error))

        workers = [asyncio.create_task(worker(i)) for i in range(8)]
        reloads = rt.metric("tiered_router_config_reloads_total")
        for i in range(swaps):
            default = "edge" if i % 2 == 0 else "small"
            volume.update({"config.yaml": yaml.safe_dump(base_config(router_fakes, default=default))})
            # The router noticed this very swap (bounded wait) before the next one is written.
            await asyncio.to_thread(rt.wait_metric, "tiered_router_config_reloads_total", reloads + i + 1)
            await asyncio.sleep(0.1)
        done.set()
        await asyncio.wait_for(asyncio.gather(*workers), 30)

        assert failures == []
        assert rt.metric("tiered_router_config_reloads_total") == reloads + swaps
        assert rt.metric("tiered_router_config_reload_errors_total") == 0
        assert served.get("small", 0) > 0 and served.get("edge", 0) > 0, served
        print(f"\nConfigMap swaps: {swaps}, requests served: {sum(served.values())} {served}, failed: 0")
        last = httpx.post(f"{rt.url}/v1/chat/completions", json=CHAT, timeout=10)
        assert last.headers["x-tiered-tier"] == "small"  # the last swap's default


class OpenStream:
    """A streamed completion read up to its first chunk; `rest()` reads it to the end."""

    @classmethod
    async def start(cls, client: httpx.AsyncClient, url: str, model: str) -> OpenStream:
        body = {**CHAT, "model": model, "stream": True}
        request = client.build_request("POST", f"{url}/v1/chat/completions", json=body)
        stream = cls(await client.send(request, stream=True))
        assert stream.response.status_code == 200
        stream.chunks.append(await stream.raw.__anext__())
        return stream

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.raw = response.aiter_raw()
        self.chunks: list[bytes] = []

    async def rest(self) -> bytes:
        async for chunk in self.raw:
            self.chunks.append(chunk)
        await self.response.aclose()
        return b"".join(self.chunks)


async def test_sigterm_drains_then_finishes_in_flight_and_cuts_streams_at_the_deadline(
    router_fakes: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    drain, deadline = 3.0, 8.0
    for fake in router_fakes.values():
        fake.reset()
    router_fakes["edge"].mode("hold")  # a stream that finishes after the listener closed, within the deadline
    router_fakes["big"].mode("hold")  # a stream still running at the deadline
    args = ("--drain-seconds", str(drain), "--shutdown-timeout", str(deadline))
    slow = FakeUpstream("slow", tmp_path)  # never answers: a plain request still waiting at the deadline
    slow.mode("stall")
    config = base_config(router_fakes)
    config["tiers"].append(
        {"name": "slow", "baseURL": slow.base_url, "pricing": {"gpuHourUSD": 1, "tokensPerSecond": 1}}
    )
    # Held streams stay silent for seconds: a read timeout longer than the whole shutdown. The load goes to
    # `small` only: no fallback into the held tiers if the busy machine makes one connect slow.
    config["timeouts"] = {"connectSeconds": 5, "readSeconds": 30, "poolSeconds": 5}
    config["tiers"][0]["fallback"] = []
    try:
        with router(config, tmp_path, args) as rt:
            streams = httpx.AsyncClient(timeout=30)
            finishing = await OpenStream.start(streams, rt.url, "edge")
            cut = await OpenStream.start(streams, rt.url, "big")
            waiting = asyncio.create_task(streams.post(f"{rt.url}/v1/chat/completions", json={**CHAT, "model": "slow"}))

            served_after_signal = 0
            failures: list[str] = []
            signalled = asyncio.Event()
            stop_load = asyncio.Event()

            async def worker(index: int) -> None:
                nonlocal served_after_signal
                # Half the workers keep one connection alive, half connect anew for every request.
                keep = httpx.AsyncClient(timeout=10) if index % 2 else None
                for i in range(3000):  # bounded; the load stops before the drain period ends
                    if stop_load.is_set():
                        break
                    after = signalled.is_set()
                    try:
                        if keep is not None:
                            await _ask(keep, rt.url, stream=i % 3 == 0)
                        else:
                            async with httpx.AsyncClient(timeout=10) as fresh:
                                await _ask(fresh, rt.url, stream=i % 3 == 0)
                        served_after_signal += after
                    except (httpx.HTTPError, AssertionError) as error:
                        failures.append(f"{'after' if after else 'before'} SIGTERM: {error!r}")
                if keep is not None:
                    await keep.aclose()

            workers = [asyncio.create_task(worker(i)) for i in range(6)]
            await asyncio.sleep(0.5)
            rt.process.send_signal(signal.SIGTERM)
            signalled.set()
            sent = time.monotonic()

            probe = httpx.AsyncClient(timeout=5)
            for _ in range(500):  # bounded poll
                if (await probe.get(f"{rt.url}/readyz")).status_code == 503:
                    break
                await asyncio.sleep(0.01)
            not_ready_after = time.monotonic() - sent
            assert (await probe.get(f"{rt.url}/readyz")).json() == {"status": "draining"}
            assert not_ready_after < drain  # readiness flipped while the listener still serves

            # Endpoints have dropped the pod by the end of the drain period: the load stops a second before.
            await asyncio.sleep(max(0.0, drain - 1.0 - (time.monotonic() - sent)))
            stop_load.set()
            await asyncio.wait_for(asyncio.gather(*workers), 30)
            assert failures == []
            assert served_after_signal > 0

            refused_after = None
            for _ in range(400):  # bounded: the listener closes at the end of the drain period
                try:
                    async with httpx.AsyncClient(timeout=5) as fresh:
                        await fresh.get(f"{rt.url}/healthz")
                except httpx.TransportError:  # refused, or reset as the listener closes
                    refused_after = time.monotonic() - sent
                    break
                await asyncio.sleep(0.05)
            assert refused_after is not None, "the listener never closed"
            assert refused_after >= drain  # never refused during the drain period

            router_fakes["edge"].release()
            finished = await asyncio.wait_for(finishing.rest(), 30)
            assert finished.rstrip().endswith(b"data: [DONE]") and b'"error"' not in finished

            ended = await asyncio.wait_for(cut.rest(), 30)
            cut_after = time.monotonic() - sent
            events = [line[len(b"data: ") :] for line in ended.splitlines() if line.startswith(b"data: ")]
            error = json.loads(events[-1])["error"]
            assert (error["type"], error["code"]) == ("service_unavailable", "shutting_down")
            assert b"[DONE]" not in ended
            unanswered = await asyncio.wait_for(waiting, 30)
            assert unanswered.status_code == 503 and unanswered.headers["retry-after"] == "1"
            assert unanswered.json()["error"]["code"] == "shutting_down"

            assert await asyncio.to_thread(rt.process.wait, 30) == 0
            await streams.aclose()
            await probe.aclose()
            log = rt.log.read_text()
            assert "cutting 2 requests" in log
            print(
                f"\nSIGTERM: readiness 503 after {not_ready_after * 1000:.0f} ms; {served_after_signal} requests "
                f"served during the drain, 0 failed; listener closed after {refused_after:.2f} s "
                f"(drain {drain} s); stream cut with an SSE error after {cut_after:.2f} s (deadline {deadline} s)"
            )
    finally:
        slow.stop()
        for fake in router_fakes.values():
            fake.release()
            fake.reset()


def test_runs_as_nobody_on_a_read_only_root_filesystem(router_fakes: dict[str, FakeUpstream], tmp_path: Path) -> None:
    """In a mount namespace whose root is remounted read-only, as uid 65534, with a tmpfs as its only tmp dir."""
    for fake in router_fakes.values():
        fake.reset()
    shared = Path(tempfile.mkdtemp(prefix="tiered-router-ro-", dir="/tmp"))  # readable by nobody, unlike tmp_path
    try:
        shared.chmod(0o755)
        config = shared / "router.yaml"
        config.write_text(yaml.safe_dump(base_config(router_fakes)))
        config.chmod(0o644)
        scratch = shared / "tmp"
        scratch.mkdir()
        router_command = [sys.executable, "-m", "tiered_router.server", "--config", str(config), "--port", "0"]
        script = (
            f"mount -o remount,bind,ro / && mount -t tmpfs -o size=16m,mode=1777 tmpfs {scratch} && "
            f"TMPDIR={scratch} HOME={scratch} exec setpriv --reuid=65534 --regid=65534 --clear-groups "
            + " ".join([*router_command, "--drain-seconds", "0"])
        )
        unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        # One process all along (unshare, sh and setpriv exec): SIGTERM from stop() reaches the router.
        process, url = fake_upstream.spawn(["-c", f"import os; os.execvp('unshare', {unshare!r})"], tmp_path / "ro.log")
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            assert "\nUid:\t65534\t65534\t65534\t65534\n" in status
            mounts = Path(f"/proc/{process.pid}/mountinfo").read_text().splitlines()
            root = next(line for line in mounts if line.split()[4] == "/")
            assert " ro," in f" {root.split()[5]},"
            answer = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10)
            assert answer.status_code == 200 and answer.headers["x-tiered-tier"] == "small"
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            assert httpx.get(f"{url}/metrics", timeout=5).status_code == 200
            # Not even its tmp dir was needed: the router writes no files.
            assert list(Path(f"/proc/{process.pid}/root{scratch}").iterdir()) == []
        finally:
            fake_upstream.stop(process)
        assert process.returncode == 0, (tmp_path / "ro.log").read_text()[-2000:]
        log = (tmp_path / "ro.log").read_text()
        assert "Read-only file system" not in log and "Permission denied" not in log
    finally:
        shutil.rmtree(shared)


def test_metrics_on_their_own_port(router_fakes: dict[str, FakeUpstream], tmp_path: Path) -> None:
    for fake in router_fakes.values():
        fake.reset()
    with socket.socket() as probe:  # a port free a moment ago (the router binds it at once)
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    with router(base_config(router_fakes), tmp_path, ("--metrics-port", str(metrics_port))) as rt:
        assert rt.http.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert rt.http.get("/metrics").status_code == 404  # not on the API port
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert scrape.status_code == 200
        assert 'tiered_router_requests_total{feature="unknown",reason="default"' in scrape.text
