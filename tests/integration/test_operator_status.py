"""The real operator's status and drift guarantees: one writer under concurrent changes, hand edits repaired."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from bed import MERGE, EmulatorProcess, OperatorProcess, eventually, running_operator
from tiered_devstack.dcgm_exporter import DcgmExporter, gpu
from tiered_devstack.prometheus import Prometheus

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TIERS = 100


def tier(name: str, autoscaled: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "tiered.dev/v1alpha1", "kind": "InferenceTier",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "model": {"id": "llama", "source": "hf://org/llama-AWQ", "parameters": "8B", "quantization": "awq",
                      "bits": 4},
            "replicas": {"min": 1, "max": 4},
            "autoscaling": {"enabled": autoscaled, "target": 70, "intervalSeconds": 1, "staleAfterSeconds": 30},
        },
    }


def get(emulator: EmulatorProcess, path: str) -> dict[str, Any]:
    code, body = emulator.api("GET", path)
    assert code == 200, body
    return body


def ready(obj: dict[str, Any]) -> str | None:
    return next((c["status"] for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"),
                None)


TIER_PATH = "/apis/tiered.dev/v1alpha1/namespaces/default/inferencetiers"
RAYSERVICE_PATH = "/apis/ray.io/v1/namespaces/default/rayservices"


def test_a_hand_edit_of_the_head_image_is_reverted(emulator: EmulatorProcess, operator: OperatorProcess) -> None:
    emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "crds"))
    emulator.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(tier("drift", autoscaled=False)))
    child = eventually(lambda: emulator.api("GET", f"{RAYSERVICE_PATH}/drift")[0] == 200 and
                       get(emulator, f"{RAYSERVICE_PATH}/drift"), what="RayService drift")
    head = child["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    image = head["image"]
    emulator.kubectl("patch", "rayservice", "drift", "--type=json", "-p", json.dumps([{
        "op": "replace", "path": "/spec/rayClusterConfig/headGroupSpec/template/spec/containers/0/image",
        "value": "example.com/not-ours:1"}]))

    def reverted() -> bool:
        now = get(emulator, f"{RAYSERVICE_PATH}/drift")
        return now["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == image

    eventually(reverted, what="head image reverted")
    events = json.loads(emulator.kubectl("get", "events", "-o", "json").stdout)["items"]
    assert any(e["reason"] == "RayServiceUpdated" and "edited outside the operator" in e["message"] for e in events)
    emulator.reset_requests()
    time.sleep(3)
    assert emulator.writes() == 0  # repaired once, then quiet


def test_no_ready_condition_is_lost_while_autoscale_ticks_write_status(emulator: EmulatorProcess,
                                                                       tmp_path: Path) -> None:
    """KubeRay (played by this test) marks 100 RayServices Ready while the autoscaler records a new
    utilization for every tier every second; the resync is too slow to mend a lost update."""
    names = [f"race-{i:03d}" for i in range(TIERS)]
    with DcgmExporter(tmp_path) as exporter, Prometheus(tmp_path, [exporter.address], scrape_interval="1s") \
            as prometheus, running_operator(emulator, tmp_path, resync_seconds=600, extra_env={
                "TIERED_PROMETHEUS_URL": prometheus.url, "TIERED_AUTOSCALE_TICK_SECONDS": "0.5"}):
        stop = threading.Event()

        def vary_utilization() -> None:
            step = 0
            while not stop.wait(0.5) and step < 400:  # bounded: at most 200 s
                step += 1
                exporter.set(*(gpu(f"{name}-abcde-workers-worker-{i}", 40 + (step + i) % 20)
                               for i, name in enumerate(names)))

        varying = threading.Thread(target=vary_utilization)
        varying.start()
        try:
            emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "crds"))
            items = {"apiVersion": "v1", "kind": "List", "items": [tier(name) for name in names]}
            emulator.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(items))
            eventually(lambda: len(get(emulator, RAYSERVICE_PATH)["items"]) == TIERS, timeout=60,
                       what="all RayServices")
            # Ticks are writing utilization into the tiers' status by now.
            eventually(lambda: sum("utilization" in (t.get("status") or {})
                                   for t in get(emulator, TIER_PATH)["items"]) == TIERS, timeout=60,
                       what="utilization in every tier's status")

            refused: list[Any] = []

            def mark_ready(chunk: list[str]) -> None:
                for name in chunk:
                    code, body = emulator.api("PATCH", f"{RAYSERVICE_PATH}/{name}/status", {"status": {
                        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "serving",
                                        "lastTransitionTime": "2026-12-01T00:00:00Z"}]}}, content_type=MERGE)
                    if code != 200:
                        refused.append(body)

            patchers = [threading.Thread(target=mark_ready, args=(names[i::4],)) for i in range(4)]
            for thread in patchers:
                thread.start()
            for thread in patchers:
                thread.join()
            assert refused == []

            def all_ready() -> bool:
                return all(ready(t) == "True" for t in get(emulator, TIER_PATH)["items"])

            eventually(all_ready, timeout=30, what="every tier Ready")
            writes_before = emulator.writes()
            for _ in range(10):  # and it stays so while the ticks go on writing
                time.sleep(0.5)
                not_ready = [t["metadata"]["name"] for t in get(emulator, TIER_PATH)["items"] if ready(t) != "True"]
                assert not_ready == []
            assert emulator.writes() > writes_before  # the ticks really were writing meanwhile
        finally:
            stop.set()
            varying.join()
