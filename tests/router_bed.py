"""Test bed for the router: real fake-upstream and router processes on loopback, and helpers to steer them.

Every process is started on an ephemeral 127.0.0.1 port and stopped by the fixture that started it.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from tiered_devstack import fake_upstream


class FakeUpstream:
    """A running `tiered_devstack.fake_upstream` process and its control API."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.process, self.url = fake_upstream.spawn(
            ["-m", "tiered_devstack.fake_upstream", "--name", name], tmp / f"fake-{name}.log"
        )
        self.base_url = f"{self.url}/v1"
        self.control = httpx.Client(base_url=self.url, timeout=10)

    def mode(self, mode: str = "ok", **spec: Any) -> None:
        self.control.post("/_fake/mode", json={"mode": mode, **spec}).raise_for_status()

    def release(self) -> None:
        self.control.post("/_fake/release").raise_for_status()

    def reset(self) -> None:
        self.control.post("/_fake/reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        return self.control.get("/_fake/stats").json()  # type: ignore[no-any-return]

    @property
    def requests(self) -> int:
        return int(self.stats()["requests"])

    def stop(self) -> None:
        self.control.close()
        fake_upstream.stop(self.process)


def free_port_url() -> str:
    """A loopback URL where nothing listens (bound, then closed): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


class Router:
    """A running router (`python -m tiered_router.server`) whose config file the test can rewrite.

    `config_path` is where it reads its config (default `tmp/router.yaml`, written here; a test that
    prepares the file itself, e.g. in a `tiered_devstack.router_pod.VolumeDir`, passes its path and
    `config=None`). No drain period unless a test asks for one in `args` (`--drain-seconds`), so stopping
    it is quick.
    """

    def __init__(
        self,
        config: dict[str, Any] | None,
        tmp: Path,
        args: tuple[str, ...] = (),
        config_path: Path | None = None,
    ) -> None:
        self.config_path = config_path or tmp / "router.yaml"
        if config is not None:
            self.config_path.write_text(yaml.safe_dump(config))
        self.process, self.url = fake_upstream.spawn(
            [
                "-m",
                "tiered_router.server",
                "--config",
                str(self.config_path),
                "--port",
                "0",
                "--reload-interval",
                "0.1",
                "--drain-seconds",
                "0",
                *args,
            ],
            tmp / "router.log",
        )
        self.log = tmp / "router.log"
        self.base_url = f"{self.url}/v1"
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
        total = 0.0
        for line in self.http.get("/metrics").text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def apply(self, config: dict[str, Any]) -> None:
        """Write a new config and wait (bounded) until the router has loaded it."""
        before = self.metric("tiered_router_config_reloads_total")
        self.write(yaml.safe_dump(config))
        self.wait_metric("tiered_router_config_reloads_total", before + 1)

    def write(self, text: str) -> None:
        # Write then rename, as a ConfigMap update does, so the router never reads half a file.
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def wait_metric(self, name: str, at_least: float, **labels: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.metric(name, **labels) >= at_least:
                return
            time.sleep(0.05)
        raise AssertionError(f"{name}{labels} never reached {at_least}; log: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.http.close()
        fake_upstream.stop(self.process)


@contextlib.contextmanager
def fakes(tmp: Path, *names: str) -> Iterator[dict[str, FakeUpstream]]:
    started: dict[str, FakeUpstream] = {}
    try:
        for name in names:
            started[name] = FakeUpstream(name, tmp)
        yield started
    finally:
        for fake in started.values():
            fake.stop()


@contextlib.contextmanager
def router(
    config: dict[str, Any] | None, tmp: Path, args: tuple[str, ...] = (), config_path: Path | None = None
) -> Iterator[Router]:
    process = Router(config, tmp, args, config_path)
    try:
        yield process
    finally:
        process.stop()


def base_config(up: dict[str, FakeUpstream], **overrides: Any) -> dict[str, Any]:
    """Tiers `small` and `edge` (local) and `big` (external) on the fakes; tests override what they need."""
    config: dict[str, Any] = {
        "tiers": [
            {
                "name": "small",
                "kind": "local",
                "baseURL": up["small"].base_url,
                "model": "small-model",
                "pricing": {"gpuHourUSD": 3.6, "gpusPerReplica": 2, "tokensPerSecond": 1000},
                "fallback": ["edge", "big"],
            },
            {
                "name": "edge",
                "kind": "local",
                "baseURL": up["edge"].base_url,
                "pricing": {"gpuHourUSD": 0.36, "tokensPerSecond": 100},
            },
            {
                "name": "big",
                "kind": "external",
                "baseURL": up["big"].base_url,
                "pricing": {"inputPerMTok": 5, "outputPerMTok": 30},
            },
        ],
        "default": "small",
        "baseline": "big",
        "rules": [
            {"name": "extract", "match": {"taskTypes": ["extraction"]}, "tier": "edge"},
            {"name": "long", "match": {"minPromptTokens": 50}, "tier": "big"},
            {"name": "tiny", "match": {"maxPromptTokens": 2, "taskTypes": ["chat"]}, "tier": "edge"},
            {"name": "math", "match": {"keywords": ["Theorem"]}, "tier": "big"},
            {"name": "steps", "match": {"regex": r"step[- ]by[- ]step"}, "tier": "big"},
        ],
        "privacy": {"privateTeams": ["legal"]},
        "timeouts": {"connectSeconds": 1, "readSeconds": 1, "poolSeconds": 2},
        # High, so failures injected by one test never open a breaker for the next (breaker tests override).
        "breaker": {"failureThreshold": 100, "cooldownSeconds": 30},
        "retries": 2,
    }
    config.update(overrides)
    return config
