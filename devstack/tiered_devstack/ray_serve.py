"""One local Ray Serve for the whole dev stack: `ray start --head --block` on this machine, driven over the
dashboard's Serve REST API (`PUT/GET /api/serve/applications/`), the API KubeRay itself uses.

`running_ray(workdir)` yields a `LocalRay`:

    ray.serve_url        http://127.0.0.1:PORT       Serve's HTTP proxy (every application's route prefix)
    ray.dashboard_url    http://127.0.0.1:PORT       dashboard + Serve REST API
    ray.metrics_address  127.0.0.1:PORT              the node's Prometheus metrics (Serve's and the apps')
    ray.deploy(applications)                         the whole declarative Serve config (what is left out goes)
    ray.applications() -> {name: status dict}        Serve's view, as `serve status` shows it

Token auth is off (`RAY_AUTH_MODE=disabled`, Ray 2.60's default is token auth) because only this machine
talks to it. Every port Ray lets us choose is a free loopback-checked port, so two stacks can run side by
side; Ray still binds GCS, raylet and its agents on all interfaces and picks the machine's address as the
node IP even when told 127.0.0.1 (docs/demo.md says so). Stopping the `--block` process stops every Ray
process it started (it is the only one we signal; never `ray stop`, which would stop other people's Ray).

Owns: starting and stopping that Ray and talking to its Serve REST API. Must not know about RayServices.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiered_devstack.processes import free_port, stop

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT = 120.0
LOGICAL_CPUS = 8  # Ray's bookkeeping, not cores: two tiers at two replicas fit on a 2-core machine


@dataclass
class LocalRay:
    process: subprocess.Popen[bytes]
    dashboard_url: str
    serve_port: int
    metrics_address: str
    log: Path
    temp_dir: Path

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    def _request(self, method: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.dashboard_url}/api/serve/applications/", data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def deploy(self, applications: list[dict[str, Any]]) -> None:
        """Make `applications` the whole set Serve runs (as `serve deploy` does): new ones start, changed ones
        update in place (a `deployments` override keeps replicas, changed `args` restart them), others go."""
        self._request("PUT", {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": self.serve_port},
            "applications": applications,
        })

    def applications(self) -> dict[str, dict[str, Any]]:
        apps: dict[str, dict[str, Any]] = (self._request("GET") or {}).get("applications") or {}
        return apps

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_for_serve_api(ray: LocalRay, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if ray.process.poll() is not None:
            raise RuntimeError(f"ray start exited ({ray.process.returncode}):\n{ray.output()[-3000:]}")
        try:
            ray.applications()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            if time.monotonic() > deadline:
                message = f"Ray's Serve API did not answer in {timeout:g} s:\n{ray.output()[-3000:]}"
                raise RuntimeError(message) from None
            time.sleep(0.25)


@contextlib.contextmanager
def running_ray(workdir: Path, timeout: float = START_TIMEOUT) -> Iterator[LocalRay]:
    """A local Ray head with the dashboard (Serve's REST API) on loopback ports; stopped afterwards."""
    # Ray's unix sockets live under its temp dir: keep the path short (sun_path is 107 bytes).
    temp_dir = Path(tempfile.mkdtemp(prefix="tray-", dir="/tmp"))
    log = workdir / "ray.log"
    dashboard, serve_port, metrics = free_port(), free_port(), free_port()
    command = [
        RAY, "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={free_port()}", f"--num-cpus={LOGICAL_CPUS}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={metrics}",
        f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}", f"--temp-dir={temp_dir}",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    ray = LocalRay(process, f"http://127.0.0.1:{dashboard}", serve_port, f"127.0.0.1:{metrics}", log, temp_dir)
    try:
        _wait_for_serve_api(ray, timeout)
        yield ray
    finally:
        stop(process, timeout=30)
        with contextlib.suppress(OSError):
            subprocess.run(["rm", "-rf", str(temp_dir)], check=False, timeout=60)
