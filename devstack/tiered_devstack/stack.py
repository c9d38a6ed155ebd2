"""The whole local stack in one context manager: what `make demo` and tests/e2e run.

`running_stack(workdir)` starts, on loopback: the Kubernetes API emulator, one local Ray (`ray_serve`,
unless the caller passes a running one), the KubeRay stand-in (`kuberay`), a stand-in DCGM exporter, a real
Prometheus scraping the exporter, Ray's metrics port (the tiers' Serve and llama.cpp metrics), the router and
the operator's metrics port, the real operator (reading that Prometheus), and a kubelet stand-in that runs
the router of policy `policy` (`router_pod`). It yields a `LocalStack`; leaving the context stops every
process it started, in reverse order.

Owns: wiring those parts together. Must not apply any tier or policy (callers do, with kubectl).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tiered_devstack.cluster import EmulatorProcess, OperatorProcess, running_emulator, running_operator
from tiered_devstack.dcgm_exporter import DcgmExporter
from tiered_devstack.kuberay import KubeRayStandIn, running_kuberay
from tiered_devstack.processes import free_port
from tiered_devstack.prometheus import Prometheus
from tiered_devstack.ray_serve import LocalRay, running_ray
from tiered_devstack.router_pod import RouterPod, running_router
from tiered_devstack.stack_objects import NAMESPACE, POLICY


@dataclass
class LocalStack:
    emulator: EmulatorProcess
    ray: LocalRay
    kuberay: KubeRayStandIn
    exporter: DcgmExporter
    prometheus: Prometheus
    operator: OperatorProcess
    router: RouterPod
    operator_metrics: str


@contextlib.contextmanager
def running_stack(workdir: Path, *, ray: LocalRay | None = None, policy: str = POLICY,
                  namespace: str = NAMESPACE) -> Iterator[LocalStack]:
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(running_emulator(workdir))
        if ray is None:
            ray = stack.enter_context(running_ray(workdir))
        exporter = stack.enter_context(DcgmExporter(workdir))
        router_dir = workdir / "router"
        router_dir.mkdir(parents=True, exist_ok=True)
        operator_metrics = f"127.0.0.1:{free_port()}"
        # The router's port is chosen before it starts, so Prometheus can be told where to scrape it.
        router = RouterPod(emulator, namespace, f"tiered-router-{policy}", router_dir, ray.serve_url)
        prometheus = stack.enter_context(Prometheus(workdir, [exporter.address], jobs={
            "ray": [ray.metrics_address], "router": [f"127.0.0.1:{router.metrics_port}"],
            "operator": [operator_metrics]}))
        operator = stack.enter_context(running_operator(emulator, workdir, resync_seconds=2, extra_env={
            "TIERED_PROMETHEUS_URL": prometheus.url, "TIERED_AUTOSCALE_TICK_SECONDS": "1",
            "TIERED_METRICS_PORT": operator_metrics.rsplit(":", 1)[1]}))
        kuberay = stack.enter_context(running_kuberay(emulator, ray))
        stack.enter_context(running_router(router))
        yield LocalStack(emulator, ray, kuberay, exporter, prometheus, operator, router, operator_metrics)
