"""RoutingPolicy + its RouterConfig → the Kubernetes objects that run its router.

Per policy: a ServiceAccount, the ConfigMap carrying the RouterConfig (`router_config.render_router_configmap`),
a Deployment running `tiered router` with that ConfigMap mounted as a directory, a Service, and optionally a
Gateway API HTTPRoute. A policy with budgets also gets a Role and RoleBinding that let the router's
ServiceAccount get and patch its spend ConfigMap (`tiered-spend-<policy>`, by resourceNames) and create
ConfigMaps (RBAC cannot restrict `create` by name: the first replica creates it); then, and only then, the
pod mounts its service account token. The ConfigMap itself is the routers' (never rendered here: the
operator would otherwise repair their spend away as drift). Every object is owned by the policy and carries
a `tiered.dev/spec-hash` annotation (of what an update writes), so the controller can tell a no-op from an
update by comparing one string.

The router reloads its config file when the mounted ConfigMap changes, so nothing derived from the config
(rules, endpoints, burst flags) may reach the pod template: a config change must update only the ConfigMap.
Only image, replicas, resources, the Secrets it references and whether it has budgets (the token mount) roll
the Deployment. API keys stay in the
user's Secrets: external keys come in as `valueFrom.secretKeyRef` env, the router's own key file as a
Secret volume; none of them is ever copied into the ConfigMap.

Pure: typed input, plain dicts out, stable key order. Never imports the controller or any client.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tiered_router.config import RouterConfig

from tiered_operator.api.model import ResourceList, RoutingPolicy
from tiered_operator.core.render import MANAGED_BY, SPEC_HASH_ANNOTATION
from tiered_operator.core.router_config import CONFIG_KEY, render_router_configmap, spend_configmap_name

POLICY_LABEL = "tiered.dev/policy"
ROUTER_IMAGE = "ghcr.io/tiered-dev/tiered-router"
ROUTER_VERSION = "0.1.0"  # the chart's appVersion: operator and router images ship together
ROUTER_PORT = 8080
# /metrics carries every team's costs: it gets a port of its own, which the Service does not expose.
METRICS_PORT = 9090
SERVICE_PORT = 80
CONFIG_DIR = "/etc/tiered/router"
KEYS_DIR = "/etc/tiered/keys"
KEYS_FILE_KEY = "keys.yaml"
RUN_AS_USER = 65532  # the images' non-root user
DEFAULT_ROUTER_IMAGE = f"{ROUTER_IMAGE}:{ROUTER_VERSION}"
GRACE_SECONDS = 30
DRAIN_SECONDS = 5  # > readiness period × failures + endpoint propagation: no new connections get refused
SHUTDOWN_SECONDS = 25  # in-flight requests finish before the kubelet's SIGKILL at GRACE_SECONDS
DEFAULT_REQUESTS = {"cpu": "250m", "memory": "256Mi"}
DEFAULT_LIMITS = {"memory": "512Mi"}
HTTPROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"
POD_NAME_ENV = "TIERED_POD_NAME"  # the router's key in the spend ConfigMap (tiered_router.spend_store)
MAX_NAME = 63  # a Service name is a DNS-1035 label


@dataclass(frozen=True)
class RenderedObject:
    """One rendered object and the hash an update compares (also in its spec-hash annotation)."""

    kind: str
    name: str
    body: dict[str, Any]
    spec_hash: str


def router_name(policy: RoutingPolicy) -> str:
    """`tiered-router-<policy>`, shortened with a hash suffix when it would not fit a Service name."""
    name = f"tiered-router-{policy.metadata.name}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def router_endpoint(policy: RoutingPolicy) -> str:
    """In-cluster OpenAI base URL of the policy's router."""
    return f"http://{router_name(policy)}.{policy.metadata.namespace}.svc.cluster.local/v1"


def selector_labels(policy: RoutingPolicy) -> dict[str, str]:
    """Labels the Deployment and Service select router pods by (a Deployment's selector never changes)."""
    return {"app.kubernetes.io/name": "tiered-router", POLICY_LABEL: policy.metadata.name}


def _labels(policy: RoutingPolicy) -> dict[str, str]:
    return {**MANAGED_BY, **selector_labels(policy), "app.kubernetes.io/component": "router"}


def _metadata(policy: RoutingPolicy, name: str) -> dict[str, Any]:
    meta = policy.metadata
    metadata: dict[str, Any] = {"name": name, "namespace": meta.namespace, "labels": _labels(policy),
                                "annotations": {}}
    if meta.uid:
        metadata["ownerReferences"] = [{
            "apiVersion": policy.api_version,
            "kind": policy.kind,
            "name": meta.name,
            "uid": meta.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }]
    return metadata


def object_hash(body: dict[str, Any]) -> str:
    """Hash of what an update writes: everything but status and server/owner metadata."""
    written = {key: value for key, value in body.items() if key not in ("metadata", "status")}
    written["labels"] = body["metadata"].get("labels", {})
    payload = json.dumps(written, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _finish(body: dict[str, Any]) -> RenderedObject:
    digest = object_hash(body)
    body["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = digest
    return RenderedObject(kind=body["kind"], name=body["metadata"]["name"], body=body, spec_hash=digest)


def _quantities(resources: ResourceList | None, default: dict[str, str]) -> dict[str, str]:
    if resources is None:
        return dict(default)
    return resources.model_dump(by_alias=True, exclude_none=True)


def _resources(policy: RoutingPolicy) -> dict[str, Any]:
    spec = policy.spec.router.resources
    requests = _quantities(spec.requests if spec else None, DEFAULT_REQUESTS)
    limits = _quantities(spec.limits if spec else None, DEFAULT_LIMITS)
    resources: dict[str, Any] = {}
    if limits:
        resources["limits"] = limits
    if requests:
        resources["requests"] = requests
    return resources


def _api_key_env(policy: RoutingPolicy, config: RouterConfig) -> list[dict[str, Any]]:
    """One env var per external tier with a key, named as the RouterConfig expects, read from the Secret."""
    env = []
    for tier in config.tiers:
        if tier.api_key_env is None:
            continue
        external = policy.spec.tier(tier.name).external
        ref = external.api_key_secret_ref if external else None
        if ref is None:
            continue
        env.append({"name": tier.api_key_env,
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def render_deployment(
    policy: RoutingPolicy, config: RouterConfig, configmap_name: str, default_image: str = DEFAULT_ROUTER_IMAGE
) -> dict[str, Any]:
    """The router Deployment; its pod template depends on the policy's `router:` and Secret refs only."""
    router = policy.spec.router
    name = router_name(policy)
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": "router",
        "image": router.image or default_image,
        "args": ["router", "--config", f"{CONFIG_DIR}/{CONFIG_KEY}", "--host", "0.0.0.0",
                 "--port", str(ROUTER_PORT), "--metrics-port", str(METRICS_PORT),
                 "--drain-seconds", str(DRAIN_SECONDS), "--shutdown-timeout", str(SHUTDOWN_SECONDS)],
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
    }
    # The pod's own name: a replica's key in the spend ConfigMap (harmless without budgets).
    env = [{"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           *_api_key_env(policy, config)]
    container["env"] = env
    container.update({
        "resources": _resources(policy),
        "livenessProbe": probe,
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2,
                           "failureThreshold": 1},
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1,
                         "failureThreshold": 60},
        "securityContext": _container_security(),
    })
    # A directory mount, not subPath: kubelet swaps a ConfigMap volume atomically, subPath mounts never update.
    mounts = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": configmap_name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if router.api_keys_secret_ref:
        mounts.insert(1, {"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True})
        volumes.insert(1, {"name": "api-keys", "secret": {
            "secretName": router.api_keys_secret_ref,
            "items": [{"key": KEYS_FILE_KEY, "path": KEYS_FILE_KEY}],
        }})
    container["volumeMounts"] = mounts
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(policy, name),
        "spec": {
            "replicas": router.replicas,
            "selector": {"matchLabels": selector_labels(policy)},
            # Never below the wanted count during a roll: routers drain on SIGTERM but new ones come first.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": _labels(policy)},
                "spec": {
                    "serviceAccountName": name,
                    # The router talks to the Kubernetes API only to keep budget spend (its Role allows no more).
                    "automountServiceAccountToken": uses_spend_store(policy),
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS_USER,
                        "runAsGroup": RUN_AS_USER,
                        "fsGroup": RUN_AS_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def render_service(policy: RoutingPolicy) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(policy, router_name(policy)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(policy),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_service_account(policy: RoutingPolicy) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(policy, router_name(policy)),
        "automountServiceAccountToken": False,
    }


def uses_spend_store(policy: RoutingPolicy) -> bool:
    return bool(policy.spec.budgets)


def render_spend_role(policy: RoutingPolicy) -> dict[str, Any]:
    """What the router's ServiceAccount may do: keep its spend in the one ConfigMap, nothing else."""
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "Role",
        "metadata": _metadata(policy, router_name(policy)),
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [spend_configmap_name(policy)],
             "verbs": ["get", "patch"]},
            # `create` is authorized before the object has a name, so resourceNames cannot narrow it.
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        ],
    }


def render_spend_role_binding(policy: RoutingPolicy) -> dict[str, Any]:
    name = router_name(policy)
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": _metadata(policy, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": policy.metadata.namespace}],
    }


def render_httproute(policy: RoutingPolicy) -> dict[str, Any] | None:
    """The HTTPRoute to the router's Service, when the policy asks for one."""
    route = policy.spec.router.http_route
    if route is None:
        return None
    spec: dict[str, Any] = {
        "parentRefs": [ref.model_dump(by_alias=True, exclude_none=True) for ref in route.parent_refs],
    }
    if route.hostnames:
        spec["hostnames"] = list(route.hostnames)
    spec["rules"] = [{
        "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
        "backendRefs": [{"name": router_name(policy), "port": SERVICE_PORT}],
    }]
    return {
        "apiVersion": HTTPROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": _metadata(policy, router_name(policy)),
        "spec": spec,
    }


def render_router_objects(
    policy: RoutingPolicy, config: RouterConfig, *, default_image: str = DEFAULT_ROUTER_IMAGE
) -> list[RenderedObject]:
    """Everything that runs `policy`'s router, in apply order (the ConfigMap before the pods that mount it).

    `default_image`: the router image for policies that name none (the chart passes TIERED_ROUTER_IMAGE).
    """
    if policy.spec.router.api_keys_secret_ref:
        config = config.model_copy(update={"api_keys_file": f"{KEYS_DIR}/{KEYS_FILE_KEY}"})
    configmap = render_router_configmap(policy, config)
    name = router_name(policy)
    configmap["metadata"] = _metadata(policy, name)  # its labels are a superset of the ConfigMap's own
    bodies = [render_service_account(policy)]
    if uses_spend_store(policy):  # before the pods that use them
        bodies += [render_spend_role(policy), render_spend_role_binding(policy)]
    bodies += [configmap, render_deployment(policy, config, name, default_image), render_service(policy)]
    if (route := render_httproute(policy)) is not None:
        bodies.append(route)
    return [_finish(body) for body in bodies]
