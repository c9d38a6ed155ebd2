"""The Helm chart `charts/tiered`, checked with the real helm and Kubernetes' published schemas.

Every values file in `charts/tiered/ci/` is linted and rendered; every rendered object is validated with
`kubernetes-validate --strict` for Kubernetes 1.30–1.33 (custom kinds against their own CRD schemas), and the
policies a platform team would enforce are tests here: RBAC without wildcards or Secrets, the restricted Pod
Security profile, resources on every container, pinned image tags. The router objects the operator renders
(`core.router_objects`) are held to the same policies.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from tiered_operator.api.model import API_VERSION, InferenceTier, RoutingPolicy
from tiered_operator.api.objects import load_file, parse_object
from tiered_operator.cli import build_parser
from tiered_operator.core.router_config import router_config
from tiered_operator.core.router_objects import ROUTER_VERSION, render_router_objects

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tiered"
HELM = ROOT / ".bin" / "helm"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
KUBERNETES_VERSIONS = ["1.30", "1.31", "1.32", "1.33"]
# CRDs of optional integrations the chart does not install, vendored for tests (see their headers).
VENDORED_CRDS = [Path(__file__).parent / "schemas" / "monitoring.coreos.com_podmonitors.yaml"]
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def helm(*args: str) -> str:
    assert HELM.exists(), f"{HELM} is missing: run `make setup`"  # fail loudly, never skip
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


@cache
def rendered(values: Path) -> tuple[dict[str, Any], ...]:
    text = helm("template", "tiered", str(CHART), "--namespace", "tiered-system", "-f", str(values))
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def chart_crds() -> list[dict[str, Any]]:
    return [doc for path in sorted((CHART / "crds").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → openAPIV3Schema of every CRD the chart ships or integrates with."""
    schemas = {}
    vendored = [doc for path in VENDORED_CRDS for doc in yaml.safe_load_all(path.read_text()) if doc]
    for crd in chart_crds() + vendored:
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api_version, crd["spec"]["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


def ids(path: Path) -> str:
    return path.stem


def test_there_are_several_ci_values_files() -> None:
    assert len(CI_VALUES) >= 3


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_helm_lint(values: Path) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_rendered_chart_passes_kubernetes_validate_strict(values: Path, version: str) -> None:
    schemas = crd_schemas()
    for doc in rendered(values):
        key = (doc["apiVersion"], doc["kind"])
        if doc["apiVersion"] == API_VERSION:
            parse_object(doc)  # tiered's own kinds: the offline admission path (schema and CEL rules)
        elif key in schemas:
            jsonschema.Draft4Validator(schemas[key]).validate(doc)  # CRD schemas are OpenAPI v3.0
        else:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_chart_crds_pass_kubernetes_validate_strict(version: str) -> None:
    for crd in chart_crds():
        kubernetes_validate.validate(crd, version, strict=True)


def test_strict_validation_catches_an_unknown_field() -> None:
    deployment = next(d for d in rendered(CI_VALUES[0]) if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33", strict=True)


def test_chart_crds_are_a_copy_of_crds() -> None:
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    for name in generated:
        copy = CHART / "crds" / name
        assert copy.exists() and copy.read_text() == (ROOT / "crds" / name).read_text(), (
            f"charts/tiered/crds/{name} differs from crds/{name}: run `make crds`")
    extra = {p.name for p in (CHART / "crds").glob("*.yaml")} - set(generated)
    assert not extra  # kopf's peering CRDs are gone: the operator elects its leader on a Lease


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_nothing_of_kopf_peering_is_left(values: Path) -> None:
    text = json.dumps(rendered(values)) + json.dumps(chart_crds())
    assert "kopf.dev" not in text and "peering" not in text.lower()


# ---- policies --------------------------------------------------------------------------------------------


def rbac_rules(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [rule for doc in docs if doc["kind"] in ("ClusterRole", "Role") for rule in doc["rules"]]


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_rbac_has_no_wildcards_and_no_secrets(values: Path) -> None:
    for rule in rbac_rules(rendered(values)):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), rule
        assert not rule.get("nonResourceURLs"), rule
        assert "secrets" not in rule["resources"], rule  # the operator never reads Secrets
        assert not set(rule["verbs"]) & {"escalate", "bind", "impersonate", "deletecollection"}, rule


# What the operator does, read from operator/tiered_operator/controller/: kopf lists and watches every kind
# it has a handler for (handlers.py) and the CRDs (its discovery), and never GETs a watched object (the
# controller reads its store); reconciler.py creates and merge-patches children, patches tiers' and policies'
# status and never their spec, never deletes (owner references do) and never PUTs; kube.py posts Events;
# leader.py GETs, creates and PUTs its Lease. The chart must grant exactly that: no more, no less.
WATCHED_CHILD = {"list", "watch", "create", "patch"}
OPERATOR_GRANTS = {
    ("tiered.dev", "inferencetiers"): {"list", "watch"},
    ("tiered.dev", "routingpolicies"): {"list", "watch"},
    ("tiered.dev", "inferencetiers/status"): {"patch"},
    ("tiered.dev", "routingpolicies/status"): {"patch"},
    ("ray.io", "rayservices"): WATCHED_CHILD,
    ("apps", "deployments"): WATCHED_CHILD,
    ("", "services"): WATCHED_CHILD,
    ("", "configmaps"): WATCHED_CHILD | {"get"},  # get: only so that it may grant it to routers (budgets)
    ("rbac.authorization.k8s.io", "roles"): WATCHED_CHILD,
    ("rbac.authorization.k8s.io", "rolebindings"): WATCHED_CHILD,
    ("", "serviceaccounts"): WATCHED_CHILD,
    ("", "events"): {"create"},
}
GATEWAY_GRANTS = {("gateway.networking.k8s.io", "httproutes"): WATCHED_CHILD}
DISCOVERY_GRANTS = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
NAMESPACE_DISCOVERY_GRANTS = {("", "namespaces"): {"list", "watch"}}  # only when watching some namespaces
LEASE_GRANTS = {("coordination.k8s.io", "leases", ""): {"create"},
                ("coordination.k8s.io", "leases", "tiered-operator"): {"get", "update"}}


def grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


def lease_grants(role: dict[str, Any]) -> dict[tuple[str, str, str], set[str]]:
    table: dict[tuple[str, str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [""]:
                    table.setdefault((group, resource, name), set()).update(rule["verbs"])
    return table


def roles(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {f"{d['metadata'].get('namespace', '')}/{d['metadata']['name']}": d for d in docs if d["kind"] == kind}


def test_rbac_grants_exactly_what_the_operator_uses() -> None:
    full = rendered(CHART / "ci" / "full-values.yaml")
    assert grants(roles(full, "ClusterRole")["/tiered"]) == {**DISCOVERY_GRANTS, **OPERATOR_GRANTS, **GATEWAY_GRANTS}
    default = rendered(CHART / "ci" / "default-values.yaml")
    assert grants(roles(default, "ClusterRole")["/tiered"]) == {**DISCOVERY_GRANTS, **OPERATOR_GRANTS}
    for docs in (full, default):
        assert set(roles(docs, "Role")) == {"tiered-system/tiered-leader-election"}
        assert lease_grants(roles(docs, "Role")["tiered-system/tiered-leader-election"]) == LEASE_GRANTS


def test_the_lease_role_names_the_lease_the_operator_is_told_to_take() -> None:
    docs = rendered(CHART / "ci" / "default-values.yaml")
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    lease = next(e["value"] for e in container["env"] if e["name"] == "TIERED_LEASE_NAME")
    role = roles(docs, "Role")["tiered-system/tiered-leader-election"]
    assert [rule.get("resourceNames") for rule in role["rules"]] == [None, [lease]]
    binding = roles(docs, "RoleBinding")["tiered-system/tiered-leader-election"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tiered", "namespace": "tiered-system"}]
    # Two releases in one namespace elect on two Leases.
    other = helm("template", "other", str(CHART), "--namespace", "tiered-system")
    assert "other-tiered-operator" in other


def test_bring_your_own_rbac_renders_no_rbac() -> None:
    docs = rendered(CHART / "ci" / "bring-your-own-rbac-values.yaml")
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io")]


def test_namespaced_install_has_no_cluster_wide_rights_on_namespaced_objects() -> None:
    docs = rendered(CHART / "ci" / "namespaced-values.yaml")
    assert grants(roles(docs, "ClusterRole")["/tiered"]) == {**DISCOVERY_GRANTS, **NAMESPACE_DISCOVERY_GRANTS}
    namespaced = roles(docs, "Role")
    assert set(namespaced) == {"team-a/tiered", "team-b/tiered", "tiered-system/tiered-leader-election"}
    for name in ("team-a/tiered", "team-b/tiered"):
        assert grants(namespaced[name]) == OPERATOR_GRANTS
    assert set(roles(docs, "RoleBinding")) == set(namespaced)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "operator", "--liveness", "http://0.0.0.0:8080/healthz", "--metrics-port", "9090", "--metrics-host",
        "0.0.0.0", "--namespace", "team-a", "--namespace", "team-b"]


def pod_specs(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [doc["spec"]["template"]["spec"] for doc in docs
            if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def check_restricted(pod: dict[str, Any]) -> None:
    """The restricted Pod Security Standard, plus a read-only root filesystem."""
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        for key, value in RESTRICTED_CONTAINER.items():
            assert context[key] == value, (container["name"], key)
        assert not context.get("privileged")
    assert not any("hostPath" in volume for volume in pod.get("volumes", []))


def check_resources(pod: dict[str, Any]) -> None:
    for container in pod["containers"] + pod.get("initContainers", []):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert "memory" in resources["limits"], container["name"]


def check_pinned(pod: dict[str, Any]) -> None:
    for container in pod["containers"] + pod.get("initContainers", []):
        image = container["image"]
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), image


def router_docs() -> list[dict[str, Any]]:
    objects = [obj for path in sorted((ROOT / "examples").glob("*.yaml")) for obj in load_file(path)]
    policy = next(obj for obj in objects if isinstance(obj, RoutingPolicy))
    tiers = {obj.metadata.name: obj for obj in objects if isinstance(obj, InferenceTier)}
    config, _ = router_config(policy, tiers, bursting=False)
    return [obj.body for obj in render_router_objects(policy, config)]


@pytest.mark.parametrize("values", [*CI_VALUES, "router"], ids=lambda v: v if isinstance(v, str) else v.stem)
def test_every_pod_is_restricted_with_resources_and_pinned_images(values: Path | str) -> None:
    docs = router_docs() if values == "router" else rendered(values)
    pods = pod_specs(docs)
    assert pods
    for pod in pods:
        check_restricted(pod)
        check_resources(pod)
        check_pinned(pod)


def test_image_tags_default_to_the_app_version() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    deployment = next(d for d in rendered(CHART / "ci" / "default-values.yaml") if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/tiered-dev/tiered-operator:{app_version}"
    router_image = next(e["value"] for e in container["env"] if e["name"] == "TIERED_ROUTER_IMAGE")
    assert router_image == f"ghcr.io/tiered-dev/tiered-router:{app_version}"
    assert app_version == ROUTER_VERSION  # the operator's own default for routers: the same release


def operator_container(values: Path) -> dict[str, Any]:
    deployment = next(d for d in rendered(values) if d["kind"] == "Deployment")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_operator_runs_as_the_cli_starts_it() -> None:
    container = operator_container(CHART / "ci" / "default-values.yaml")
    assert container["args"] == ["operator", "--liveness", "http://0.0.0.0:8080/healthz",
                                 "--metrics-port", "9090", "--metrics-host", "0.0.0.0"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8080, "metrics": 9090}


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_the_real_cli_accepts_the_operator_args(values: Path) -> None:
    args = operator_container(values)["args"]
    parsed = build_parser("operator").parse_args(args)  # argparse exits on an unknown flag
    assert parsed.metrics_port == 9090 and parsed.metrics_host == "0.0.0.0"
    assert not parsed.no_leader_election


def test_every_env_var_the_chart_sets_is_one_the_operator_reads() -> None:
    container = operator_container(CHART / "ci" / "full-values.yaml")
    source = "\n".join(path.read_text() for path in (ROOT / "operator" / "tiered_operator").rglob("*.py"))
    for env in container["env"]:
        assert f'"{env["name"]}"' in source, env["name"]
    by_name = {env["name"]: env for env in container["env"]}
    assert "TIERED_PEERING_NAME" not in by_name
    # What a pod learns from the downward API: its identity in the Lease, and the Lease's namespace.
    assert by_name["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert by_name["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_two_replicas_by_default_behind_a_disruption_budget() -> None:
    docs = rendered(CHART / "ci" / "default-values.yaml")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    one = rendered(CHART / "ci" / "bring-your-own-rbac-values.yaml")
    assert next(d for d in one if d["kind"] == "Deployment")["spec"]["replicas"] == 1
    assert not [d for d in one if d["kind"] == "PodDisruptionBudget"]


def test_the_operator_podmonitor_scrapes_the_metrics_port() -> None:
    docs = rendered(CHART / "ci" / "full-values.yaml")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    monitor = next(d for d in docs if d["kind"] == "PodMonitor" and d["metadata"]["name"].endswith("-operator"))
    assert monitor["spec"]["selector"] == deployment["spec"]["selector"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["metrics"]["podMonitor"]["operator"] is True  # on whenever PodMonitors are


def test_health_and_metrics_ports_must_differ() -> None:
    result = subprocess.run([str(HELM), "template", "t", str(CHART), "--set", "operator.metricsPort=8080"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "must differ" in result.stderr


def test_network_policies_keep_tiers_for_routers() -> None:
    docs = rendered(CHART / "ci" / "full-values.yaml")
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    egress = policies["tiered-routers-egress"]["spec"]["egress"]
    assert {"ipBlock": {"cidr": "162.159.140.0/24"}} in egress[-1]["to"]
    assert egress[0]["ports"] == [{"port": 8000, "protocol": "TCP"}]
    serve = policies["tiered-tiers-ingress"]["spec"]["ingress"][1]
    assert serve["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tiered-router"}}}]


def test_optional_parts_are_off_by_default() -> None:
    kinds = {d["kind"] for d in rendered(CHART / "ci" / "default-values.yaml")}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment",
                     "PodDisruptionBudget"}
    full = {d["kind"] for d in rendered(CHART / "ci" / "full-values.yaml")}
    assert {"PodMonitor", "NetworkPolicy", "InferenceTier", "RoutingPolicy"} <= full


# ---- values ----------------------------------------------------------------------------------------------

DATA_VALUES = {"resources", "kuberayNamespaceSelector", "prometheusNamespaceSelector"}  # one value each


def test_every_value_has_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        stack = [(i, k) for i, k in stack if i < indent]
        inside_data = any(k in DATA_VALUES for _, k in stack)
        stack.append((indent, key))
        previous = next((lines[i].strip() for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        if not inside_data and not previous.startswith("#"):
            missing.append(f"line {number + 1}: {key}")
    assert not missing


def test_values_schema_matches_values_and_refuses_mistakes() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    for path in CI_VALUES:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    for bad in ({"operator": {"image": {"tag": "latest"}}}, {"operator": {"replica": 2}},
                {"networkPolicy": {"externalCIDRs": ["api.openai.com"]}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_helm_refuses_values_the_schema_refuses() -> None:
    result = subprocess.run([str(HELM), "template", "t", str(CHART), "--set", "operator.image.tag=latest"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "tag" in result.stderr


def test_notes_say_how_to_check_the_install() -> None:
    out = helm("install", "tiered", str(CHART), "--dry-run=client", "--namespace", "tiered-system",
               "-f", str(CHART / "ci" / "full-values.yaml"))
    notes = out[out.index("NOTES:"):]
    assert "kubectl -n tiered-system rollout status deployment/tiered" in notes
    assert "kubectl -n tiered-system get lease tiered-operator" in notes
    assert "kubectl get itier,rpol -A" in notes and "kubectl -n default get itier/edge rpol/example" in notes


def test_podmonitor_schema_catches_a_mistake() -> None:
    monitor = next(d for d in rendered(CHART / "ci" / "full-values.yaml") if d["kind"] == "PodMonitor")
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["podMetricsEndpoints"][0]["interval"] = "often"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(crd_schemas()[("monitoring.coreos.com/v1", "PodMonitor")]).validate(broken)
