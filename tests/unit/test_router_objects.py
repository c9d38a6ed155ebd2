"""RoutingPolicy → router objects: golden files, hot-reload safety, secrets by reference, real schemas."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from tiered_operator.api.model import InferenceTier, RoutingPolicy
from tiered_operator.api.objects import load_file
from tiered_operator.core.render import SPEC_HASH_ANNOTATION, to_yaml
from tiered_operator.core.router_config import CONFIG_KEY, router_config
from tiered_operator.core.router_objects import (
    RenderedObject,
    render_router_objects,
    router_endpoint,
    router_name,
)
from tiered_router.config import RouterConfig

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
HTTPROUTE_CRD = Path(__file__).parent / "schemas" / "gateway.networking.k8s.io_httproutes.yaml"
KUBERNETES_VERSIONS = ["1.30", "1.31", "1.32", "1.33"]
UID = "0b1c2d3e-0000-4000-8000-000000000001"


def _example_raw() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "policy-frontier.yaml").read_text())
    raw["metadata"]["uid"] = UID
    return raw


def _tiers() -> dict[str, InferenceTier]:
    objects = [obj for path in sorted((ROOT / "examples").glob("tier-*.yaml")) for obj in load_file(path)]
    return {obj.metadata.name: obj for obj in objects if isinstance(obj, InferenceTier)}


def _policy(raw: dict[str, Any]) -> RoutingPolicy:
    return RoutingPolicy.model_validate(raw)


def _gateway_raw() -> dict[str, Any]:
    """The example with every optional router field set: keys Secret, resources, HTTPRoute."""
    raw = _example_raw()
    raw["spec"]["router"] = {
        "replicas": 3,
        "image": "registry.example/tiered-router:0.1.0",
        "apiKeysSecretRef": "router-keys",
        "resources": {"requests": {"cpu": "500m", "memory": "384Mi"}, "limits": {"memory": "768Mi"}},
        "httpRoute": {"parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
                      "hostnames": ["llm.example.com"]},
    }
    return raw


def _render(raw: dict[str, Any], *, bursting: bool = False) -> list[RenderedObject]:
    policy = _policy(raw)
    config, _ = router_config(policy, _tiers(), bursting=bursting)
    return render_router_objects(policy, config)


def _by_kind(objects: list[RenderedObject]) -> dict[str, dict[str, Any]]:
    return {obj.kind: obj.body for obj in objects}


CASES = {"router-policy-frontier": _example_raw, "router-policy-gateway": _gateway_raw}


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    rendered = to_yaml([obj.body for obj in _render(CASES[case]())])
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file for {case}: run with UPDATE_GOLDEN=1"
    assert rendered == golden.read_text()


def test_kinds_names_owner_and_labels() -> None:
    objects = _render(_gateway_raw())
    assert [obj.kind for obj in objects] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment",
                                             "Service", "HTTPRoute"]
    assert {obj.name for obj in objects} == {"tiered-router-default"}
    for obj in objects:
        metadata = obj.body["metadata"]
        assert metadata["ownerReferences"] == [{
            "apiVersion": "tiered.dev/v1alpha1", "kind": "RoutingPolicy", "name": "default", "uid": UID,
            "controller": True, "blockOwnerDeletion": True}]
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "tiered"
        assert metadata["labels"]["tiered.dev/policy"] == "default"
        assert metadata["annotations"][SPEC_HASH_ANNOTATION] == obj.spec_hash
    assert router_endpoint(_policy(_example_raw())) == "http://tiered-router-default.default.svc.cluster.local/v1"
    assert "HTTPRoute" not in _by_kind(_render(_example_raw()))


def test_the_deployment_runs_the_router_on_the_mounted_config() -> None:
    objects = _by_kind(_render(_example_raw()))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["router", "--config", "/etc/tiered/router/router.yaml", "--host", "0.0.0.0",
                                 "--port", "8080", "--metrics-port", "9090", "--drain-seconds", "5",
                                 "--shutdown-timeout", "25"]
    # /metrics (every team's costs) on its own port; the Service exposes only the API port.
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert [port["targetPort"] for port in objects["Service"]["spec"]["ports"]] == ["http"]
    assert container["image"] == "ghcr.io/tiered-dev/tiered-router:0.1.0"
    assert pod["terminationGracePeriodSeconds"] > 25
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert config_mount["mountPath"] == "/etc/tiered/router" and "subPath" not in config_mount
    assert {"name": "config", "configMap": {"name": "tiered-router-default"}} in pod["volumes"]
    assert CONFIG_KEY in objects["ConfigMap"]["data"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"]
    assert not security["allowPrivilegeEscalation"] and security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"] == {"limits": {"memory": "512Mi"}, "requests": {"cpu": "250m", "memory": "256Mi"}}


def _changed(raw: dict[str, Any], edit: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    edit(raw["spec"])
    return raw


CONFIG_CHANGES = {
    "rule tier": lambda spec: spec["rules"][0].update(tier="triage"),
    "new rule": lambda spec: spec["rules"].append({"match": {"keywords": ["urgent"]}, "tier": "frontier"}),
    "default": lambda spec: spec.update(default="edge"),
    "concurrency": lambda spec: spec["tiers"][0].update(maxConcurrency=8),
    "price": lambda spec: spec["tiers"][3].update(pricing={"inputPerMTok": 3.0, "outputPerMTok": 12.0}),
    "private teams": lambda spec: spec["privacy"].update(privateTeams=["legal", "hr"]),
}


@pytest.mark.parametrize("change", CONFIG_CHANGES)
def test_a_config_change_updates_only_the_configmap(change: str) -> None:
    before = _render(_example_raw())
    after = _render(_changed(_example_raw(), CONFIG_CHANGES[change]))
    changed = {a.kind for a, b in zip(before, after, strict=True) if a.spec_hash != b.spec_hash}
    assert changed == {"ConfigMap"}
    assert _by_kind(before)["Deployment"] == _by_kind(after)["Deployment"]


def test_a_burst_flip_updates_only_the_configmap() -> None:
    calm, hot = _render(_example_raw(), bursting=False), _render(_example_raw(), bursting=True)
    assert {a.kind for a, b in zip(calm, hot, strict=True) if a.spec_hash != b.spec_hash} == {"ConfigMap"}
    assert "burst: true" in _by_kind(hot)["ConfigMap"]["data"][CONFIG_KEY]


ROLLING_CHANGES = {
    "image": lambda spec: spec.update(router={"image": "registry.example/router:0.2.0"}),
    "replicas": lambda spec: spec.update(router={"replicas": 5}),
    "resources": lambda spec: spec.update(router={"resources": {"requests": {"cpu": "1"}}}),
}


@pytest.mark.parametrize("change", ROLLING_CHANGES)
def test_image_replica_and_resource_changes_update_the_deployment(change: str) -> None:
    before = _by_kind(_render(_example_raw()))["Deployment"]
    after = _by_kind(_render(_changed(_example_raw(), ROLLING_CHANGES[change])))["Deployment"]
    assert before["metadata"]["annotations"] != after["metadata"]["annotations"]
    if change != "replicas":
        assert before["spec"]["template"] != after["spec"]["template"]


def test_api_keys_are_passed_by_reference_never_copied() -> None:
    objects = _by_kind(_render(_gateway_raw()))
    container = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [
        {"name": "TIERED_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "TIERED_API_KEY_FRONTIER", "valueFrom": {"secretKeyRef": {"name": "frontier-api", "key": "api-key"}}}]
    config = RouterConfig.model_validate(yaml.safe_load(objects["ConfigMap"]["data"][CONFIG_KEY]))
    frontier = next(t for t in config.tiers if t.name == "frontier")
    assert frontier.api_key_env == "TIERED_API_KEY_FRONTIER"
    # The router's own keys: a Secret volume (not subPath, so rotation reaches the pod), named in the config.
    assert config.api_keys_file == "/etc/tiered/keys/keys.yaml"
    volumes = objects["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "api-keys", "secret": {"secretName": "router-keys",
                                           "items": [{"key": "keys.yaml", "path": "keys.yaml"}]}} in volumes
    text = to_yaml([obj for obj in objects.values()])
    assert "frontier-api" not in objects["ConfigMap"]["data"][CONFIG_KEY]
    assert "secretKeyRef" in text and "stringData" not in text
    assert all(kind != "Secret" for kind in objects)


def test_the_default_image_comes_from_the_caller() -> None:
    policy = _policy(_example_raw())
    config, _ = router_config(policy, _tiers(), bursting=False)
    objects = _by_kind(render_router_objects(policy, config, default_image="registry.example/router:9.9.9"))
    assert objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/router:9.9.9")


def test_a_long_policy_name_still_fits_a_service_name() -> None:
    raw = _example_raw()
    raw["metadata"]["name"] = "p" * 63
    name = router_name(_policy(raw))
    assert len(name) <= 63 and name.startswith("tiered-router-p")
    assert name != router_name(_policy({**raw, "metadata": {**raw["metadata"], "name": "p" * 62}}))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_every_object_passes_kubernetes_validate_strict(case: str, version: str) -> None:
    for obj in _render(CASES[case]()):
        if obj.kind == "HTTPRoute":
            continue  # a CRD kind: validated against the Gateway API schema below
        kubernetes_validate.validate(obj.body, version, strict=True)


def test_strict_validation_catches_a_typo() -> None:
    deployment = copy.deepcopy(_by_kind(_render(_example_raw()))["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.33", strict=True)


def test_httproute_matches_the_gateway_api_schema() -> None:
    crd = yaml.safe_load(HTTPROUTE_CRD.read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    route = _by_kind(_render(_gateway_raw()))["HTTPRoute"]
    jsonschema.validate(route, schema)
    broken = copy.deepcopy(route)
    broken["spec"]["rules"][0]["backendRefs"][0]["port"] = "http"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_budgets_let_the_router_keep_spend_in_its_own_configmap_only() -> None:
    objects = _by_kind(_render(_example_raw()))  # the example has a budget
    role, binding = objects["Role"], objects["RoleBinding"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["tiered-spend-default"],
         "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},  # RBAC cannot name a create
    ]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "tiered-router-default"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tiered-router-default", "namespace": "default"}]
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True and pod["serviceAccountName"] == "tiered-router-default"
    config = RouterConfig.model_validate(yaml.safe_load(objects["ConfigMap"]["data"][CONFIG_KEY]))
    store = config.budget_settings.store
    assert store is not None and (store.config_map, store.namespace) == ("tiered-spend-default", "default")
    # Without budgets: no Role, no token in the pod (the router never talks to the API then).
    plain = _by_kind(_render(_changed(_example_raw(), lambda spec: spec.pop("budgets"))))
    assert "Role" not in plain and "RoleBinding" not in plain
    assert plain["Deployment"]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
