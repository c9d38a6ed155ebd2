"""`make demo`: the request path for real on one machine: app → router → tier model, priced, with burst.

Brings up the local stack (`stack.running_stack`: emulator, operator, Prometheus, one local Ray Serve, the
KubeRay stand-in, the router the operator rendered), applies two llama.cpp tiers with kubectl (`small`:
SmolLM2-135M; `frontier-stand-in`: Gemma 3 270M declared as an external tier at frontier prices) and a
RoutingPolicy, plus one vLLM example tier that this machine cannot run (its status says so). Then it
drives a bounded, mixed workload through the router (classification, extraction, short summaries, harder
questions, private-team traffic), pushes `small` into burst with the stand-in DCGM exporter and back, and
prints the cost report from the router's cost API (`/v1/tiered/costs`).

`--keep` leaves the stack up afterwards, prints `OPENAI_BASE_URL=…`, `OPENAI_API_KEY=…`, `DASHBOARD=…` (the
router's cost dashboard with the admin key) and `KUBECONFIG=…`, and waits for Ctrl-C or SIGTERM; either way
every process the demo started is stopped. `--report FILE` writes the report as JSON (the e2e test checks its
arithmetic). Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import yaml

from tiered_devstack import stack_objects as objects
from tiered_devstack.cluster import EmulatorProcess, eventually
from tiered_devstack.data import EXAMPLES
from tiered_devstack.dcgm_exporter import gpu
from tiered_devstack.stack import LocalStack, running_stack

# KubeRay names worker pods <raycluster>-<group>-worker-<hash>; the stand-in exporter reports such a pod.
SMALL_WORKER = "small-local-workers-worker-a1b2c"
NOT_RUNNABLE_EXAMPLE = "tier-awq-h100.yaml"
EXAMPLES_NAMESPACE = "examples"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(emulator: EmulatorProcess, *args: str) -> None:
    print(emulator.kubectl(*args).stdout.rstrip(), flush=True)


@dataclass(frozen=True)
class Job:
    task: str
    feature: str
    team: str
    prompt: str
    max_tokens: int = 24
    private_header: bool = False


JOBS = [
    Job("classification", "ticket-triage", "support",
        "Classify the sentiment of this review as positive or negative: 'The battery died after two days.'"),
    Job("extraction", "invoice-extract", "support",
        "Extract the invoice number and the total from: 'Invoice INV-2041, total due $1,250.00 by March 3.'"),
    Job("summary", "meeting-notes", "marketing",
        "Summarize in one sentence: the team agreed to ship the beta on Friday and to fix login bugs first."),
    Job("reasoning", "research-qa", "marketing",
        "A train leaves at 3 pm at 60 km/h and another at 4 pm at 90 km/h on the same track. When does the "
        "second catch up? Explain step by step.", max_tokens=48),
    Job("classification", "ticket-triage", "support",
        "Is this message spam or not spam? 'You won a free cruise, click here to claim your prize now!'"),
    Job("reasoning", "contract-review", objects.PRIVATE_TEAM,
        "Our contract says either party may terminate with 30 days notice. Can we end it next week? "
        "Think it through.", max_tokens=48),
    Job("extraction", "crm-sync", "marketing",
        "Extract the person's name and company: 'Hi, this is Dana Ortiz from Blue Harbor Logistics.'"),
    Job("summary", "meeting-notes", "support",
        "Summarize in a few words: customers ask for dark mode, faster export and a cheaper plan."),
    Job("reasoning", "research-qa", "support",
        "Why is the sky blue? Give a short, careful explanation.", max_tokens=48, private_header=True),
]


@dataclass
class Outcome:
    job: Job
    status: int
    tier: str
    reason: str
    phase: str


def progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done == total else ""
    print(f"\r  {label:<9} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, flush=True)


def send(client: httpx.Client, url: str, job: Job) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {objects.app_key(job.team, job.feature)}", "x-tiered-task": job.task}
    if job.private_header:
        headers["x-tiered-private"] = "1"
    body = {"model": "auto", "messages": [{"role": "user", "content": job.prompt}], "max_tokens": job.max_tokens}
    try:
        response = client.post(f"{url}/v1/chat/completions", headers=headers, json=body)
    except httpx.HTTPError as error:
        return 0, "-", type(error).__name__
    return response.status_code, response.headers.get("x-tiered-tier", "-"), response.headers.get(
        "x-tiered-reason", "")


def drive(stack: LocalStack, phase: str, count: int, concurrency: int, offset: int = 0) -> list[Outcome]:
    """`count` requests of the mix, `concurrency` at a time, with a progress bar."""
    jobs = [JOBS[(offset + i) % len(JOBS)] for i in range(count)]
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    progress(0, count, phase)
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(concurrency) as pool:
        def one(job: Job) -> None:
            status, tier, reason = send(client, stack.router.url, job)
            with lock:
                outcomes.append(Outcome(job, status, tier, reason, phase))
                progress(len(outcomes), count, phase)
        list(pool.map(one, jobs))
    by_tier = Counter(o.tier for o in outcomes)
    failed = [o for o in outcomes if o.status != 200]
    print(f"  answered {count - len(failed)}/{count}: " + ", ".join(f"{t} {n}" for t, n in sorted(by_tier.items()))
          + (f"; failed: {Counter(o.status for o in failed)}" if failed else ""), flush=True)
    return outcomes


def router_burst(stack: LocalStack) -> bool | None:
    """Whether the config the running router read has burst on for `small` (None before it has one)."""
    volume = stack.router.volumes.get("config")
    if volume is None or not volume.files:
        return None
    config = yaml.safe_load(next(iter(volume.files.values())))
    return any(t.get("name") == objects.SMALL and t.get("burst") for t in config.get("tiers") or ())


def wait_for_burst(stack: LocalStack, wanted: bool, started: float, timeout: float = 90) -> float:
    """Until the router has reloaded a config with burst `wanted`; prints the policy status on the way."""
    def reached() -> bool:
        return router_burst(stack) is wanted and stack.router.ready()
    eventually(reached, timeout=timeout, interval=0.5, what=f"burst {'on' if wanted else 'off'} in the router")
    at = time.monotonic() - started
    policy = stack.emulator.api("GET", f"/apis/tiered.dev/v1alpha1/namespaces/{objects.NAMESPACE}/"
                                f"routingpolicies/{objects.POLICY}")[1]
    burst = (policy.get("status") or {}).get("burst") or {}
    print(f"  +{at:5.1f} s  router reloaded: burst {'ON ' if wanted else 'off'}  "
          f"({str(burst.get('reason', ''))[:90]})", flush=True)
    return at


def costs(stack: LocalStack) -> dict[str, Any]:
    response = httpx.get(f"{stack.router.url}/v1/tiered/costs", timeout=10,
                         headers={"Authorization": f"Bearer {objects.ADMIN_KEY}"})
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


FIELDS = ("requests", "input_tokens", "output_tokens", "cost_usd", "baseline_cost_usd")


def group(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0.0))
    for row in rows:
        for name in FIELDS:
            out[row[key]][name] += row[name]
    return dict(sorted(out.items()))


def build_report(summary: dict[str, Any], bursts: list[tuple[float, float]], outcomes: list[Outcome]) -> dict[str, Any]:
    rows = summary["by_tier_team_feature"]
    totals = summary["totals"]
    return {
        "baseline_tier": summary["baseline_tier"],
        "rows": rows,
        "by_tier": group(rows, "tier"),
        "by_team": group(rows, "team"),
        "by_feature": group(rows, "feature"),
        "totals": totals,
        "savings_usd": totals["baseline_cost_usd"] - totals["cost_usd"],
        "burst_periods": [{"start_s": round(a, 1), "end_s": round(b, 1)} for a, b in bursts],
        "sent": len(outcomes),
        "answered": sum(o.status == 200 for o in outcomes),
        "burst_overflow": sum(o.phase == "burst" and o.tier == objects.FRONTIER and "burst" in o.reason
                              for o in outcomes),
        "private_on_frontier": sum(o.tier == objects.FRONTIER and (o.job.team == objects.PRIVATE_TEAM
                                                                   or o.job.private_header) for o in outcomes),
    }


def print_table(title: str, groups: dict[str, dict[str, float]]) -> None:
    print(f"\n  {title:<18} {'requests':>8} {'in tok':>7} {'out tok':>7} {'cost $':>11} {'baseline $':>11}")
    for name, line in groups.items():
        print(f"  {name:<18} {int(line['requests']):>8} {int(line['input_tokens']):>7} "
              f"{int(line['output_tokens']):>7} {line['cost_usd']:>11.6f} {line['baseline_cost_usd']:>11.6f}")


def print_report(report: dict[str, Any]) -> None:
    totals = report["totals"]
    print_table("tier", report["by_tier"])
    print(f"  ({objects.FRONTIER} is a 270M model on this machine priced as a frontier API: not frontier quality)")
    print_table("team", report["by_team"])
    print_table("feature", report["by_feature"])
    baseline, cost = totals["baseline_cost_usd"], totals["cost_usd"]
    share = 100 * report["savings_usd"] / baseline if baseline else 0.0
    print(f"\n  requests {totals['requests']} (sent {report['sent']}, answered {report['answered']}), "
          f"tokens in {totals['input_tokens']} out {totals['output_tokens']}")
    print(f"  cost ${cost:.6f}; all on {report['baseline_tier']} (baseline) ${baseline:.6f}; "
          f"savings ${report['savings_usd']:.6f} ({share:.1f}%)")
    periods = ", ".join(f"+{p['start_s']} s → +{p['end_s']} s" for p in report["burst_periods"]) or "none"
    print(f"  burst periods (router config): {periods}; overflow sent to {objects.FRONTIER} in burst: "
          f"{report['burst_overflow']}; private requests on {objects.FRONTIER}: {report['private_on_frontier']}")


def prometheus_targets(stack: LocalStack) -> str:
    data = httpx.get(f"{stack.prometheus.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    return ", ".join(f"{t['labels']['job']} {t['health']}" for t in sorted(data, key=lambda t: t["labels"]["job"]))


def ready(stack: LocalStack, kind: str, name: str) -> bool:
    body = stack.emulator.api("GET", f"/apis/tiered.dev/v1alpha1/namespaces/{objects.NAMESPACE}/{kind}/{name}")[1]
    conditions = ((body or {}).get("status") or {}).get("conditions") or ()
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def apply(stack: LocalStack, workdir: Path) -> None:
    small, frontier = objects.smollm2(), objects.frontier_model()
    print(f"  models: {objects.SMALL} = {small.label}; {objects.FRONTIER} = {frontier.label} "
          "(a small local model standing in for a frontier API, priced at frontier rates)")
    manifests = workdir / "manifests"
    manifests.mkdir()
    docs = {"secret-keys.yaml": objects.keys_secret(), "tier-small.yaml": objects.small_tier(small),
            "tier-frontier-stand-in.yaml": objects.frontier_tier(frontier),
            "policy-demo.yaml": objects.demo_policy(frontier)}
    for name, doc in docs.items():
        (manifests / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    say(f"kubectl apply -f {manifests}/   (plus {NOT_RUNNABLE_EXAMPLE} from examples/ in namespace "
        f"{EXAMPLES_NAMESPACE})")
    show(stack.emulator, "apply", "--validate=false", "-f", str(manifests))
    show(stack.emulator, "apply", "--validate=false", "-n", EXAMPLES_NAMESPACE, "-f",
         str(Path(EXAMPLES) / NOT_RUNNABLE_EXAMPLE))


def run(keep: bool, report_path: Path | None) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tiered-demo-") as tmp:
        workdir = Path(tmp)
        say("Starting the emulator, one local Ray Serve, the KubeRay stand-in, Prometheus, the operator, "
            "and the router (as its Deployment says)")
        with running_stack(workdir) as stack:
            stack.exporter.set(gpu(SMALL_WORKER, 40))
            print(f"  API {stack.emulator.url}   Ray Serve {stack.ray.serve_url}   Prometheus "
                  f"{stack.prometheus.url}   router {stack.router.url}   (+{time.monotonic() - started:.0f} s)")
            apply(stack, workdir)

            say("Waiting for the tiers' Serve apps and the router")
            eventually(lambda: ready(stack, "inferencetiers", objects.SMALL)
                       and ready(stack, "inferencetiers", objects.FRONTIER)
                       and ready(stack, "routingpolicies", objects.POLICY) and stack.router.ready(),
                       timeout=240, interval=0.5, what="tiers, policy and router ready")
            print(f"  ready at +{time.monotonic() - started:.0f} s")
            show(stack.emulator, "get", "itier,rpol", "-A")
            show(stack.emulator, "get", "rayservices", "-A", "-o",
                 "custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,"
                 "READY:.status.conditions[0].status,REASON:.status.conditions[0].reason,"
                 "MESSAGE:.status.conditions[0].message")

            say("Traffic through the router: small tasks on small, harder questions on the frontier stand-in, "
                "private teams kept local")
            outcomes = drive(stack, "steady", 18, 2)

            say("small's utilization goes to 95% (stand-in DCGM exporter): burst after "
                f"{objects.demo_policy(objects.smollm2())['spec']['burst']['forSeconds']} s above 85%")
            stack.exporter.set(gpu(SMALL_WORKER, 95))
            burst_on = wait_for_burst(stack, True, started)
            outcomes += drive(stack, "burst", 18, 5, offset=18)

            say("small's utilization drops to 30%: burst ends after the exit window")
            stack.exporter.set(gpu(SMALL_WORKER, 30))
            burst_off = wait_for_burst(stack, False, started)
            outcomes += drive(stack, "after", 9, 2, offset=36)

            say(f"Cost report (router /v1/tiered/costs, baseline: everything on {objects.FRONTIER} at "
                f"frontier prices)")
            report = build_report(costs(stack), [(burst_on, burst_off)], outcomes)
            print_report(report)
            if report_path is not None:
                report_path.write_text(json.dumps(report, indent=2))
            print(f"\n  Prometheus targets: {prometheus_targets(stack)}")
            say("Events")
            show(stack.emulator, "get", "events", "-A", "--sort-by=.metadata.creationTimestamp", "-o",
                 "custom-columns=OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message")
            print(f"\n  demo took {time.monotonic() - started:.0f} s")
            if keep:
                say("Stack is up (Ctrl-C or SIGTERM stops it)")
                print(f"OPENAI_BASE_URL={stack.router.url}/v1")
                print(f"OPENAI_API_KEY={objects.USER_KEY}")
                print(f"DASHBOARD={stack.router.url}/dashboard#key={objects.ADMIN_KEY}")
                print(f"KUBECONFIG={stack.emulator.kubeconfig}", flush=True)
                wait_forever()
            say("Stopping everything")
    return 0


def wait_forever(sleep: Callable[[float], None] = time.sleep) -> None:
    try:
        while True:
            sleep(3600)
    except KeyboardInterrupt:
        pass


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true", help="leave the stack running until Ctrl-C or SIGTERM")
    parser.add_argument("--report", type=Path, help="also write the cost report as JSON to this file")


def demo(args: argparse.Namespace) -> int:
    """`tiered demo` (and `make demo`)."""
    signal.signal(signal.SIGTERM, _sigterm)  # unwind the contexts, which stop every process
    try:
        return run(args.keep, args.report)
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiered demo", description=__doc__.splitlines()[0])
    add_demo_arguments(parser)
    return demo(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
