"""Two operator replicas against one emulator: only the Lease holder reconciles; killing it hands over."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from bed import EmulatorProcess, OperatorProcess, eventually, running_operator
from tiered_devstack.processes import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
LEASE = "/apis/coordination.k8s.io/v1/namespaces/default/leases/tiered-operator"


def tier(name: str) -> str:
    return json.dumps({
        "apiVersion": "tiered.dev/v1alpha1", "kind": "InferenceTier", "metadata": {"name": name},
        "spec": {"model": {"id": "llama", "source": "hf://org/llama-AWQ", "parameters": "8B",
                           "quantization": "awq", "bits": 4},
                 "autoscaling": {"enabled": False}},
    })


def leader_metric(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("tiered_operator_leader "))


def holder(emulator: EmulatorProcess) -> Any:
    code, lease = emulator.api("GET", LEASE)
    return lease["spec"].get("holderIdentity") if code == 200 else None


def test_only_the_lease_holder_reconciles_and_a_killed_leader_hands_over(emulator: EmulatorProcess,
                                                                        tmp_path: Path) -> None:
    emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "crds"))
    ports = free_port(), free_port()
    env = [{"TIERED_METRICS_PORT": str(port), "TIERED_LEASE_SECONDS": "3", "POD_NAME": name}
           for port, name in zip(ports, ("first", "second"), strict=True)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_operator(emulator, tmp_path / "a", extra_env=env[0]) as first:
        eventually(lambda: holder(emulator) == "first", what="the first replica holds the lease")
        with running_operator(emulator, tmp_path / "b", extra_env=env[1]) as second:
            emulator.kubectl("apply", "--validate=false", "-f", "-", input=tier("one"))
            eventually(lambda: emulator.api("GET", "/apis/ray.io/v1/namespaces/default/rayservices/one")[0] == 200,
                       what="RayService one")
            assert (leader_metric(ports[0]), leader_metric(ports[1])) == (1, 0)
            eventually(lambda: "RayService one" in first.output(), what="the leader logging its write")
            assert "RayService one" not in second.output()

            first.process.send_signal(signal.SIGKILL)  # no release: the lease must expire
            first.process.wait(timeout=10)
            eventually(lambda: holder(emulator) == "second", timeout=20, what="the second replica takes over")
            emulator.kubectl("apply", "--validate=false", "-f", "-", input=tier("two"))
            eventually(lambda: emulator.api("GET", "/apis/ray.io/v1/namespaces/default/rayservices/two")[0] == 200,
                       what="RayService two, made by the new leader")
            assert leader_metric(ports[1]) == 1
            # The log line follows the write it reports: wait for it rather than read it once.
            eventually(lambda: "RayService two" in second.output(), what="the new leader logging its write")


def test_a_stopped_leader_releases_the_lease(emulator: EmulatorProcess, operator: OperatorProcess) -> None:
    eventually(lambda: holder(emulator), what="a lease holder")
    operator.process.send_signal(signal.SIGTERM)
    operator.process.wait(timeout=20)
    assert holder(emulator) == ""
