"""A real Prometheus (the Debian package's binary) on 127.0.0.1, scraping local targets.

    with DcgmExporter(tmp) as exporter, Prometheus(tmp, [exporter.address]) as prometheus:
        exporter.set(gpu("triage-abcde-gpu-worker-1", 90))
        poll(lambda: ..., what="the first sample")   # ~1-5 s after start; never sleep a fixed time

Fails loudly when the binary is missing (`make setup` installs it). Logs go to ``<workdir>/prometheus.log``.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import yaml

from tiered_devstack.processes import free_port, poll, stop

__all__ = ["Prometheus", "free_port", "poll", "prometheus_binary"]

def prometheus_binary() -> str:
    binary = shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin")
    if binary is None:
        raise RuntimeError("prometheus binary not found: run `make setup` (apt-get install prometheus)")
    return binary


class Prometheus:
    """One Prometheus process scraping ``targets`` (host:port) every ``scrape_interval``."""

    def __init__(self, workdir: Path, targets: Sequence[str], *, scrape_interval: str = "1s",
                 jobs: Mapping[str, Sequence[str]] | None = None) -> None:
        """`targets`: DCGM-style exporters (their labels kept); `jobs`: other scrape jobs by name (Ray's
        metrics port, routers, the operator)."""
        self.workdir = Path(workdir) / f"prometheus-{free_port()}"
        self.targets = list(targets)
        self.jobs = {name: list(addresses) for name, addresses in (jobs or {}).items()}
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, object]:
        return {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval},
            "scrape_configs": [
                # honor_labels: the exporter's namespace/pod labels name the workload, as with dcgm-exporter
                {"job_name": "dcgm", "honor_labels": True, "static_configs": [{"targets": self.targets}]},
                *({"job_name": name, "static_configs": [{"targets": addresses}]}
                  for name, addresses in self.jobs.items()),
            ],
        }

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        with (self.workdir / "prometheus.log").open("wb") as log:
            self._process = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            poll(self._ready, timeout=30, what=f"Prometheus ready at {self.url}", retry_on=(OSError,))
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool | None:
        assert self._process is not None
        if self._process.poll() is not None:
            log = (self.workdir / "prometheus.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"prometheus exited with {self._process.returncode}:\n{log}")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
            return True if response.status == 200 else None

    def stop(self) -> None:
        process, self._process = self._process, None
        stop(process)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
