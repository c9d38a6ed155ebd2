"""A stand-in for NVIDIA's dcgm-exporter whose series the caller sets: a real `prometheus_client` process.

The child process serves ``/metrics`` on 127.0.0.1 and re-reads a JSON file on every scrape, so the
parent (a test, the demo's workload) changes GPU load by writing that file (atomically)::

    with DcgmExporter(tmp) as exporter:
        exporter.set(gpu("triage-abcde-gpu-worker-1", 90), gpu("triage-abcde-gpu-worker-2", 70))

A series with a ``timestamp`` is exposed with that explicit time (a frozen exporter, for staleness tests).
Run alone: ``python -m tiered_devstack.dcgm_exporter --values FILE [--port N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tiered_devstack.processes import stop

GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"


@dataclass(frozen=True)
class Series:
    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = field(default=None)


def gpu(
    pod: str, value: float, *, namespace: str = "default", metric: str = GPU_UTIL, device: int = 0
) -> Series:
    """One GPU's series as dcgm-exporter labels it (with its Kubernetes pod mapping on)."""
    labels = {"gpu": str(device), "UUID": f"GPU-{pod}-{device}", "modelName": "NVIDIA H100 80GB HBM3"}
    return Series(metric, {**labels, "namespace": namespace, "pod": pod, "container": "ray-worker"}, value)


class FileCollector(Collector):
    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        try:
            rows = json.loads(self.path.read_text())
        except (OSError, ValueError):
            rows = []
        families: dict[tuple[str, tuple[str, ...]], GaugeMetricFamily] = {}
        for row in rows:
            labels = tuple(sorted(row["labels"]))
            key = (row["name"], labels)
            if key not in families:
                families[key] = GaugeMetricFamily(row["name"], "set by the test exporter", labels=labels)
            families[key].add_metric([row["labels"][k] for k in labels], row["value"], row.get("timestamp"))
        yield from families.values()


class DcgmExporter:
    """The exporter child process; ``address`` (host:port) is what Prometheus scrapes."""

    def __init__(self, workdir: Path) -> None:
        self.values = Path(workdir) / f"dcgm-{os.getpid()}-{id(self)}.json"
        self.address = ""
        self._process: subprocess.Popen[str] | None = None

    def set(self, *series: Series) -> None:
        tmp = self.values.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(s) for s in series]))
        tmp.replace(self.values)

    def start(self) -> Self:
        self.set()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tiered_devstack.dcgm_exporter", "--values", str(self.values)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # "listening 127.0.0.1:PORT", or "" if it died
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"dcgm exporter did not start (said {line!r})")
        self.address = line.split()[1]
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        stop(process)
        if process.stdout:
            process.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--values", type=Path, required=True, help="JSON list of series, re-read per scrape")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    registry = CollectorRegistry()
    registry.register(FileCollector(args.values))
    server, _ = start_http_server(args.port, addr="127.0.0.1", registry=registry)
    print(f"listening 127.0.0.1:{server.server_port}", flush=True)
    threading.Event().wait()  # serve until terminated
    return 0


if __name__ == "__main__":
    sys.exit(main())
