"""The chart installed the way a cluster would run it: `helm template` output applied with the real kubectl
to the emulator, then the operator started exactly as the chart's Deployment starts it.

The command is the operator image's ENTRYPOINT plus the container's `args`, the environment is the
container's `env`. Only what a pod gets from its cluster is replaced: KUBECONFIG instead of the in-cluster
service account, the downward API's POD_NAME and POD_NAMESPACE, and the addresses its servers bind (a pod
has a network namespace of its own; here they listen on free loopback ports). Then `examples/` is applied and
the test shows the policy's router objects, the Lease, `/metrics`, that every API request the operator made
is one the chart's RBAC grants, and that re-applying the chart and the examples changes nothing.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from bed import TIERED, EmulatorProcess, eventually
from tiered_devstack.processes import free_port, poll, stop
from tiered_router.config import RouterConfig

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tiered"
HELM = ROOT / ".bin" / "helm"
NAMESPACE = "tiered-system"
POD_NAME = "tiered-5d8f7c9b4-x2x7q"
ROUTER = "tiered-router-default"
# The API group of every resource the operator may touch (the emulator counts requests by plural).
GROUPS = {"inferencetiers": "tiered.dev", "routingpolicies": "tiered.dev", "rayservices": "ray.io",
          "deployments": "apps", "services": "", "configmaps": "", "serviceaccounts": "", "events": "",
          "leases": "coordination.k8s.io", "customresourcedefinitions": "apiextensions.k8s.io",
          "httproutes": "gateway.networking.k8s.io", "namespaces": "",
          "roles": "rbac.authorization.k8s.io", "rolebindings": "rbac.authorization.k8s.io"}
Request = tuple[str, str, str]  # (verb, plural, subresource), as the emulator counts them


class Kubectl:
    """The real kubectl against the emulator, counting its own API requests (from `-v=6`), so that what
    is left of the emulator's counts is what the operator asked."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self.emulator = emulator
        self.requests: collections.Counter[Request] = collections.Counter()

    def __call__(self, *args: str, input: str | None = None) -> str:
        result = self.emulator.kubectl("-v=6", *args, input=input)
        for method, url in re.findall(r'"Response" verb="(\w+)" url="([^"]+)"', result.stderr):
            if (request := api_request(method, url)) is not None:
                self.requests[request] += 1
        return result.stdout

    def get(self, *args: str) -> Any:
        return json.loads(self("get", *args, "-o", "json"))


def api_request(method: str, url: str) -> Request | None:
    """(verb, plural, subresource) of a resource request, the way the API server (and the emulator) name
    them; None for discovery."""
    parsed = urllib.parse.urlsplit(url)
    parts = parsed.path.strip("/").split("/")
    parts = parts[2:] if parts[0] == "api" else parts[3:]  # drop /api/v1 or /apis/GROUP/VERSION
    if len(parts) >= 2 and parts[0] == "namespaces" and len(parts) != 2:
        parts = parts[2:]  # a namespaced path (but /namespaces/NAME is a namespace itself)
    if not parts or not parts[0]:
        return None
    plural, name, subresource = parts[0], parts[1] if len(parts) > 1 else None, "/".join(parts[2:])
    watch = urllib.parse.parse_qs(parsed.query).get("watch", [""])[0] in ("true", "1")
    verb = {"GET": "watch" if watch else "list" if name is None else "get", "POST": "create", "PUT": "update",
            "PATCH": "patch", "DELETE": "deletecollection" if name is None else "delete"}[method]
    return verb, plural, subresource


def render(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    assert HELM.exists(), f"{HELM} is missing: run `make setup`"  # fail loudly, never skip
    text = subprocess.run([str(HELM), "template", "tiered", str(CHART), "--namespace", NAMESPACE,
                           "--include-crds"], capture_output=True, text=True, timeout=60, check=True).stdout
    path = tmp_path / "chart.yaml"
    path.write_text(text)
    return path, [doc for doc in yaml.safe_load_all(text) if doc]


def image_entrypoint() -> list[str]:
    """The operator image's ENTRYPOINT (the container gives only `args`)."""
    dockerfile = (ROOT / "images" / "operator.Dockerfile").read_text()
    entrypoint: list[str] = json.loads(re.findall(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)[-1])
    return entrypoint


def pod_process(container: dict[str, Any], emulator: EmulatorProcess) -> tuple[list[str], dict[str, str],
                                                                             dict[str, int]]:
    """The command line and environment the container runs, with the pod's cluster-given parts replaced.
    Returns the container's named ports too, mapped to the loopback ports used here."""
    ports = {port["name"]: (port["containerPort"], free_port()) for port in container["ports"]}
    entrypoint = container.get("command") or image_entrypoint()
    assert entrypoint == ["tiered"], entrypoint
    args = []
    for arg in container["args"]:
        arg = arg.replace("0.0.0.0", "127.0.0.1")
        for inside, here in ports.values():
            arg = str(here) if arg == str(inside) else arg.replace(f":{inside}/", f":{here}/")
        args.append(arg)
    downward = {"metadata.name": POD_NAME, "metadata.namespace": NAMESPACE}
    env = {"PATH": os.environ["PATH"], "KUBECONFIG": str(emulator.kubeconfig)}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = downward[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return [*TIERED, *args], env, {name: here for name, (_, here) in ports.items()}


@contextmanager
def running(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    try:
        yield process
    except BaseException:
        print(f"--- operator log ---\n{log.read_text(errors='replace')}")
        raise
    finally:
        stop(process, timeout=20)


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def granted(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) the chart grants the operator's ServiceAccount."""
    bound = {(d["roleRef"]["kind"], d["roleRef"]["name"], d["metadata"].get("namespace")) for d in docs
             if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
             and {"kind": "ServiceAccount", "name": "tiered", "namespace": NAMESPACE} in d["subjects"]}
    return {(group, resource, verb) for d in docs if d["kind"] in ("ClusterRole", "Role")
            if (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) in bound
            or (d["kind"], d["metadata"]["name"], None) in bound
            for rule in d["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
            for verb in rule["verbs"]}


def chart_objects(kubectl: Kubectl, manifest: Path) -> list[tuple[str, dict[str, Any]]]:
    listed = kubectl.get("-f", str(manifest))
    return [(f"{obj['kind']}/{obj['metadata']['name']}", obj) for obj in listed["items"]]


def test_the_chart_installs_and_runs_the_operator_it_describes(emulator: EmulatorProcess, tmp_path: Path) -> None:
    kubectl = Kubectl(emulator)
    manifest, docs = render(tmp_path)
    kubectl("create", "namespace", NAMESPACE)
    crds = tmp_path / "crds.yaml"  # what helm does with crds/: first, before the templates
    crds.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] == "CustomResourceDefinition"]))
    kubectl("apply", "--validate=false", "-f", str(crds))
    kubectl("apply", "--validate=false", "-f", str(manifest))

    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command, env, ports = pod_process(container, emulator)
    emulator.reset_requests()
    baseline = collections.Counter(kubectl.requests)
    with running(command, env, tmp_path / "operator.log"):
        metrics_url = f"http://127.0.0.1:{ports['metrics']}/metrics"
        # Not listening yet counts as not yet (OSError); the probe and the metrics come up with kopf.
        poll(lambda: http_get(f"http://127.0.0.1:{ports['health']}/healthz"), timeout=30, retry_on=(OSError,),
             what="the operator's liveness probe")
        poll(lambda: metric(http_get(metrics_url), "tiered_operator_leader ") == 1 or None, timeout=30,
             retry_on=(OSError,), what="the operator leads")
        kubectl("apply", "--validate=false", "-f", str(ROOT / "examples"))

        def with_endpoint() -> Any:
            policy = kubectl.get("rpol", "default")
            return policy if (policy.get("status") or {}).get("endpoint") else None

        policy = eventually(with_endpoint, timeout=30, what="the policy's status.endpoint")
        assert policy["status"]["endpoint"] == f"http://{ROUTER}.default.svc.cluster.local/v1"
        owner = [{"apiVersion": "tiered.dev/v1alpha1", "kind": "RoutingPolicy", "name": "default",
                  "uid": policy["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        for kind in ("deployment", "service", "configmap", "serviceaccount"):
            child = eventually(lambda kind=kind: kubectl.get(kind, ROUTER), what=f"the router {kind}")
            assert child["metadata"]["ownerReferences"] == owner, kind
        config = kubectl.get("configmap", ROUTER)["data"]["router.yaml"]
        assert RouterConfig.model_validate(yaml.safe_load(config)).tiers
        router = kubectl.get("deployment", ROUTER)["spec"]["template"]["spec"]["containers"][0]
        assert router["image"] == env["TIERED_ROUTER_IMAGE"]  # the chart's router image reached the router

        lease = kubectl.get("lease", "-n", NAMESPACE, env["TIERED_LEASE_NAME"])
        assert lease["spec"]["holderIdentity"] == POD_NAME
        text = http_get(metrics_url)
        assert metric(text, "tiered_operator_reconciles_total") > 0
        assert metric(text, 'tiered_operator_writes_total{kind="configmaps"}') >= 1

        # Every request the operator made (the emulator's counts less kubectl's own) is one the chart grants.
        eventually(lambda: emulator.requests()["update", "leases", ""], what="the holder renewing its Lease")
        mine = kubectl.requests - baseline
        operator = {request for request, n in (emulator.requests() - mine).items() if n > 0}
        rights = granted(docs)
        used = {(GROUPS[plural], f"{plural}/{sub}" if sub else plural, verb) for verb, plural, sub in operator}
        assert used - rights == set(), f"requests the chart's RBAC would refuse: {sorted(used - rights)}"
        # ... and what is granted but unused here is only the repair of a child that drifted (patch), and the
        # ConfigMap `get` the operator holds only so it may grant it to a router with budgets (RBAC's rule).
        drift = {(group, resource, "patch") for group, resource in
                 [("ray.io", "rayservices"), ("apps", "deployments"), ("", "services"), ("", "configmaps"),
                  ("", "serviceaccounts"), ("rbac.authorization.k8s.io", "roles"),
                  ("rbac.authorization.k8s.io", "rolebindings")]} | {("", "configmaps", "get")}
        assert rights - used <= drift, f"granted but never used: {sorted(rights - used - drift)}"

        # Re-applying the chart and the examples changes nothing. kubectl says `unchanged` for every object but
        # the PodDisruptionBudget: its selector's patch strategy is `replace`, so kubectl's client-side apply
        # always sends it and reports `configured` (on a real API server too); the server stores nothing new.
        versions = {name: obj["metadata"]["resourceVersion"] for name, obj in chart_objects(kubectl, manifest)}
        assert len(versions) == len(docs)
        for path in (crds, manifest, ROOT / "examples"):
            out = kubectl("apply", "--validate=false", "-f", str(path)).strip().splitlines()
            changed = [line for line in out if not line.endswith(" unchanged")]
            assert out and changed in ([], ["poddisruptionbudget.policy/tiered configured"]), "\n".join(out)
        after = {name: obj["metadata"]["resourceVersion"] for name, obj in chart_objects(kubectl, manifest)}
        assert after == versions
