"""Autoscaling and burst end to end: a real Prometheus scrapes DCGM-named series the test sets; the real
operator against the emulator scales the RayService and flips the RoutingPolicy's burst state."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from bed import EmulatorProcess, OperatorProcess, eventually, running_operator
from tiered_devstack.dcgm_exporter import DcgmExporter, gpu
from tiered_devstack.prometheus import Prometheus
from tiered_operator.core.render import SPEC_HASH_ANNOTATION
from tiered_router.config import RouterConfig

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WORKER = "triage-abcde-workers-worker-x1y2z"  # as KubeRay names the pods of RayService "triage"

TIER = {
    "apiVersion": "tiered.dev/v1alpha1", "kind": "InferenceTier", "metadata": {"name": "triage"},
    "spec": {
        "model": {"id": "llama", "source": "hf://org/llama-AWQ", "parameters": "8B", "quantization": "awq",
                  "bits": 4},
        "replicas": {"min": 1, "max": 4},
        "autoscaling": {"target": 70, "intervalSeconds": 1, "scaleDownStabilizationSeconds": 3,
                        "staleAfterSeconds": 10, "maxStep": 1},
    },
}
POLICY = {
    "apiVersion": "tiered.dev/v1alpha1", "kind": "RoutingPolicy", "metadata": {"name": "default"},
    "spec": {
        "tiers": [{"name": "triage", "tierRef": "triage"},
                  {"name": "frontier", "external": {"baseURL": "https://api.example.com/v1", "model": "big"},
                   "pricing": {"inputPerMTok": 5, "outputPerMTok": 30}}],
        "default": "triage",
        "burst": {"from": "triage", "to": "frontier", "utilizationAbove": 85, "forSeconds": 4,
                  "exitBelow": 70, "exitForSeconds": 4},
    },
}


@pytest.fixture
def stack(emulator: EmulatorProcess, tmp_path: Path) -> Iterator[tuple[DcgmExporter, Prometheus, OperatorProcess]]:
    with DcgmExporter(tmp_path) as exporter, Prometheus(tmp_path, [exporter.address]) as prometheus, \
            running_operator(emulator, tmp_path, extra_env={"TIERED_PROMETHEUS_URL": prometheus.url,
                                                            "TIERED_AUTOSCALE_TICK_SECONDS": "0.5"}) as operator:
        yield exporter, prometheus, operator


def get(emulator: EmulatorProcess, *args: str) -> Any:
    result = emulator.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def num_replicas(emulator: EmulatorProcess) -> int | None:
    rayservice = get(emulator, "rayservice", "triage")
    if rayservice is None:
        return None
    app = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]
    count: int = app["deployments"][0]["num_replicas"]  # the deployments override, never the app's args
    return count


def router_burst(emulator: EmulatorProcess) -> bool:
    """The burst flag of the triage tier in the router's ConfigMap (a valid RouterConfig)."""
    configmap = get(emulator, "configmap", "tiered-router-default")
    config = RouterConfig.model_validate(yaml.safe_load(configmap["data"]["router.yaml"]))
    return next(tier.burst for tier in config.tiers if tier.name == "triage")


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def test_scales_and_bursts_on_gpu_utilization(emulator: EmulatorProcess, stack: tuple) -> None:
    exporter, prometheus, operator = stack
    exporter.set(gpu(WORKER, 50))
    emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "crds"))
    for obj in (TIER, POLICY):
        emulator.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(obj))
    eventually(lambda: num_replicas(emulator) == 1, what="RayService with 1 replica")
    assert eventually(lambda: get(emulator, "deployment", "tiered-router-default"), what="router Deployment")
    assert router_burst(emulator) is False
    router_version = get(emulator, "deployment", "tiered-router-default")["metadata"]["resourceVersion"]
    first_hash = get(emulator, "rayservice", "triage")["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    tier = eventually(lambda: (t := get(emulator, "itier", "triage"))
                      and condition(t, "MetricsAvailable").get("status") == "True" and t, what="metrics read")
    assert tier["status"]["utilization"] == 50

    # Hot: one replica at a time (maxStep 1) up to max, and burst once ≥ 85 has held for 4 s.
    exporter.set(gpu(WORKER, 95))
    eventually(lambda: num_replicas(emulator) == 4, timeout=40, what="scale up to max")
    policy = eventually(lambda: (p := get(emulator, "rpol", "default")) and p["status"].get("burst", {}).get("active")
                        and p, timeout=30, what="burst entered")
    assert condition(policy, "Bursting")["status"] == "True"
    assert "tier at max replicas" in policy["status"]["burst"]["reason"]
    eventually(lambda: router_burst(emulator), what="burst in the router's ConfigMap")
    assert get(emulator, "rayservice", "triage")["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == first_hash
    tier = get(emulator, "itier", "triage")
    assert tier["status"]["replicas"]["desired"] == 4 and tier["status"]["lastScaleTime"]
    events = get(emulator, "events")["items"]
    assert any(e["reason"] == "ScaledUp" and e["involvedObject"]["name"] == "triage" for e in events)
    assert any(e["reason"] == "BurstStarted" and e["involvedObject"]["kind"] == "RoutingPolicy" for e in events)

    # Cool: scale down after the 3 s window, leave burst after 4 s below 70.
    exporter.set(gpu(WORKER, 20))
    eventually(lambda: num_replicas(emulator) == 1, timeout=60, what="scale down to min")
    eventually(lambda: get(emulator, "rpol", "default")["status"]["burst"]["active"] is False, timeout=30,
               what="burst left")
    eventually(lambda: router_burst(emulator) is False, what="burst off in the router's ConfigMap")
    # Burst reached the router by its ConfigMap alone: the Deployment (its pods) never changed.
    assert get(emulator, "deployment", "tiered-router-default")["metadata"]["resourceVersion"] == router_version

    # Hot again, then Prometheus goes away: metrics unavailable, replicas and burst held.
    exporter.set(gpu(WORKER, 95))
    eventually(lambda: num_replicas(emulator) == 2, timeout=30, what="scale up again")
    prometheus.stop()
    tier = eventually(lambda: (t := get(emulator, "itier", "triage"))
                      and condition(t, "MetricsAvailable").get("status") == "False" and t, timeout=15,
                      what="MetricsAvailable=False")
    assert condition(tier, "MetricsAvailable")["reason"] == "Unreachable"
    held = num_replicas(emulator)
    burst = get(emulator, "rpol", "default")["status"]["burst"]
    emulator.reset_requests()
    time.sleep(5)
    assert num_replicas(emulator) == held
    assert get(emulator, "rpol", "default")["status"]["burst"] == burst
    assert emulator.writes() == 0
    assert "Traceback" not in operator.output()
