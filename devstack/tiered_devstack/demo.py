"""`make demo`: the control plane on one machine, no cluster.

Starts the Kubernetes API emulator, a real Prometheus scraping a stand-in DCGM exporter, and the real
operator; applies the CRDs and `examples/` with the real kubectl; shows the tiers, plans and RayServices;
then plays KubeRay's part (marks the RayServices ready) and drives the `triage` tier's GPU utilization
up and down so it scales, bursts to the frontier tier and comes back. Everything listens on 127.0.0.1 and
stops at the end (or on Ctrl-C); `--keep` leaves the stack up until Ctrl-C.

Runs from an installed copy too (`pip install 'tiered[devstack]'`): the CRDs are generated from the
operator's models, the examples are package data (`tiered_devstack.data`); only kubectl comes from outside
(`.bin/kubectl` in a checkout, else `TIERED_KUBECTL`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tiered_operator.api.crds import all_crds, dump

from tiered_devstack.cluster import EmulatorProcess, eventually, running_emulator, running_operator
from tiered_devstack.data import EXAMPLES
from tiered_devstack.dcgm_exporter import DcgmExporter, gpu
from tiered_devstack.prometheus import Prometheus

# KubeRay names worker pods <raycluster>-<group>-worker-<hash>; the stand-in exporter uses such a name.
TRIAGE_WORKER = "triage-demo1-workers-worker-a1b2c"
# Short windows so the demo takes a minute, not the production 5 minutes.
FAST_TIER = {"spec": {"autoscaling": {"intervalSeconds": 2, "scaleDownStabilizationSeconds": 10}}}
FAST_BURST = {"spec": {"burst": {"forSeconds": 8, "exitForSeconds": 8}}}
KUBERAY_READY = {"status": {"conditions": [{
    "type": "Ready", "status": "True", "reason": "RayServiceReady", "message": "stand-in: Serve applications running",
    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(emulator: EmulatorProcess, *args: str) -> None:
    print(emulator.kubectl(*args).stdout.rstrip(), flush=True)


def get(emulator: EmulatorProcess, *args: str) -> Any:
    result = emulator.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def triage_line(emulator: EmulatorProcess) -> str:
    tier = get(emulator, "itier", "triage") or {}
    policy = get(emulator, "rpol", "default") or {}
    status = tier.get("status") or {}
    burst = (policy.get("status") or {}).get("burst") or {}
    return (f"utilization {status.get('utilization', '-'):>5}  replicas {status.get('replicas', {}).get('desired')}"
            f"  burst {'ON ' if burst.get('active') else 'off'}  {burst.get('reason', '')[:70]}")


def watch(emulator: EmulatorProcess, seconds: float, until: Any) -> None:
    """Print triage's line whenever it changes, until `until()` holds or `seconds` pass."""
    deadline, last = time.monotonic() + seconds, ""
    while time.monotonic() < deadline:
        line = triage_line(emulator)
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')}  {line}", flush=True)
            last = line
        if until():
            return
        time.sleep(1)
    print("  (time's up for this scene)")


def run(keep: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="tiered-demo-") as tmp:
        workdir = Path(tmp)
        say("Starting the Kubernetes API emulator, Prometheus + a stand-in DCGM exporter, and the operator")
        with running_emulator(workdir) as emulator, DcgmExporter(workdir) as exporter, \
                Prometheus(workdir, [exporter.address]) as prometheus, \
                running_operator(emulator, workdir, resync_seconds=2, extra_env={
                    "TIERED_PROMETHEUS_URL": prometheus.url, "TIERED_AUTOSCALE_TICK_SECONDS": "1"}):
            exporter.set(gpu(TRIAGE_WORKER, 40))
            print(f"API {emulator.url}   Prometheus {prometheus.url}   KUBECONFIG={emulator.kubeconfig}")

            say("kubectl apply -f crds/ ; kubectl apply -f examples/")
            crds = workdir / "crds"  # what `make crds` writes, from the same functions
            crds.mkdir()
            for name, crd in all_crds().items():
                (crds / name).write_text(dump(crd))
            show(emulator, "apply", "--validate=false", "-f", str(crds))
            show(emulator, "apply", "--validate=false", "-f", str(EXAMPLES))

            say("tiered plan -f examples/   (capacity: what fits where)")
            plan = subprocess.run([str(Path(sys.executable).with_name("tiered")), "plan", "-f",
                                   str(EXAMPLES)], capture_output=True, text=True, check=True)
            print(plan.stdout.rstrip())

            eventually(lambda: all(get(emulator, "rayservice", n) for n in ("triage", "extract", "edge")),
                       what="the operator's RayServices")
            say("kubectl get rayservices   (rendered by the operator, owned by the tiers)")
            show(emulator, "get", "rayservices", "-o",
                 "custom-columns=NAME:.metadata.name,OWNER:.metadata.ownerReferences[0].name,"
                 "WORKERS:.spec.rayClusterConfig.workerGroupSpecs[0].replicas,"
                 "GPU:.spec.rayClusterConfig.workerGroupSpecs[0].template.spec.nodeSelector.nvidia\\.com/gpu\\.product,"
                 "HASH:.metadata.annotations.tiered\\.dev/spec-hash")
            say("serveConfigV2 of RayService triage")
            print(get(emulator, "rayservice", "triage")["spec"]["serveConfigV2"].rstrip())

            say("Playing KubeRay: marking every RayService Ready")
            for name in ("triage", "extract", "edge"):
                emulator.kubectl("patch", "rayservice", name, "--subresource=status", "--type=merge",
                                 "-p", json.dumps(KUBERAY_READY))
            eventually(lambda: (get(emulator, "rpol", "default") or {}).get("status", {}).get("conditions")
                       and any(c["type"] == "Ready" and c["status"] == "True"
                               for c in get(emulator, "rpol", "default")["status"]["conditions"]),
                       timeout=30, what="the policy Ready")
            show(emulator, "get", "itier")
            show(emulator, "get", "rpol")

            say("Short windows for the demo (autoscaling every 2 s, burst after 8 s)")
            show(emulator, "patch", "itier", "triage", "--type=merge", "-p", json.dumps(FAST_TIER))
            show(emulator, "patch", "rpol", "default", "--type=merge", "-p", json.dumps(FAST_BURST))

            say("triage's GPUs go to 95%: scale up to max, then burst overflow to the frontier tier")
            exporter.set(gpu(TRIAGE_WORKER, 95))
            watch(emulator, 90, lambda: (get(emulator, "rpol", "default")["status"].get("burst") or {}).get("active"))

            say("triage's GPUs drop to 30%: leave burst after 8 s below 70%, scale down after the window")
            exporter.set(gpu(TRIAGE_WORKER, 30))
            watch(emulator, 90, lambda: not get(emulator, "rpol", "default")["status"]["burst"]["active"]
                  and get(emulator, "itier", "triage")["status"]["replicas"]["desired"] == 2)

            say("Events")
            show(emulator, "get", "events", "--sort-by=.metadata.creationTimestamp", "-o",
                 "custom-columns=OBJECT:.involvedObject.name,TYPE:.type,REASON:.reason,MESSAGE:.message")
            if keep:
                say(f"Stack is up: export KUBECONFIG={emulator.kubeconfig}   (Ctrl-C stops it)")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            say("Stopping everything")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiered demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack running until Ctrl-C")
    args = parser.parse_args(argv)
    try:
        return run(args.keep)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
