"""Rendering: an InferenceTier and its capacity plan → the KubeRay `RayService` (ray.io/v1) that runs it.

vLLM tiers run Ray Serve LLM (`ray.serve.llm:build_openai_app`) with one LLMConfig; llama-cpp tiers run
`tiered_serving.llama_cpp:build_app`. How scaling reaches Ray (checked against KubeRay 1.7 and Ray 2.60):
- the replica count lives only in the application's `deployments: [{name, num_replicas}]` override, never
  in its `args`: Ray Serve hashes `args` into the app's code version, so a count there restarts every
  engine, while an override change only adds or removes replicas;
- worker pods come from KubeRay's in-tree Ray autoscaler (`enableInTreeAutoscaling`) within the plan's
  worker bounds, as Serve asks for replicas; KubeRay leaves a RayService's worker `replicas`/`minReplicas`/
  `maxReplicas` out of its change check, so the render writes no worker count at all.
The RayService carries a spec-hash annotation computed with every replica count blanked, so scaling never
changes the hash, and a hash change always means "the spec changed: update the child".

Pure: typed input, plain dicts out, stable key order.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from tiered_operator.api.model import InferenceTier, InferenceTierSpec
from tiered_operator.core.plan import CapacityPlan

RAYSERVICE_API_VERSION = "ray.io/v1"
SPEC_HASH_ANNOTATION = "tiered.dev/spec-hash"
TIER_LABEL = "tiered.dev/tier"
MANAGED_BY = {"app.kubernetes.io/managed-by": "tiered"}
APP_NAME = "llm"
VLLM_IMPORT_PATH = "ray.serve.llm:build_openai_app"
LLAMA_CPP_IMPORT_PATH = "tiered_serving.llama_cpp:build_app"
LLAMA_CPP_DEPLOYMENT = "LlamaCppServer"
# Ray Serve LLM names the engine deployment `LLMServer:<model_id>` ("/" → "--", "." → "_"):
# ray.llm._internal.serve.core.server.builder (build_llm_deployment, _get_deployment_name).
VLLM_DEPLOYMENT_PREFIX = "LLMServer:"
SERVING_IMAGE = "ghcr.io/tiered-dev/tiered-serving"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_PRODUCTS = {"H100": "NVIDIA-H100-80GB-HBM3", "H200": "NVIDIA-H200", "B200": "NVIDIA-B200"}
GPU_RESOURCE = "nvidia.com/gpu"
SERVE_PORT = 8000
WORKER_GROUP = "workers"
MODEL_MOUNT = "/models"
# Ray's object store and NCCL use shared memory; a container's default /dev/shm is 64 MiB.
SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}
# The Ray autoscaler sidecar on the head (KubeRay's defaults, written out so quotas see them).
AUTOSCALER_RESOURCES = {"cpu": "500m", "memory": "512Mi"}
# How long an idle worker pod is kept: a GPU worker takes minutes to come back (image pull, weights load).
IDLE_TIMEOUT_SECONDS = {"gpu": 300, "cpu": 60}


def default_image(spec: InferenceTierSpec) -> str:
    if spec.image:
        return spec.image
    if spec.engine == "llama-cpp":
        return f"{SERVING_IMAGE}:ray{spec.ray_version}"
    # Ray builds ray-llm images for Python 3.12 on CUDA 13.0 (docker/ray-llm/cuda.wanda.yaml); vLLM 0.29, which
    # Ray 2.60 pins, is built for CUDA 13.
    return f"rayproject/ray-llm:{spec.ray_version}-py312-cu130"


def endpoint(name: str, namespace: str) -> str:
    """In-cluster OpenAI base URL of a tier (KubeRay's serve Service is `<name>-serve-svc`)."""
    return f"http://{name}-serve-svc.{namespace}.svc.cluster.local:{SERVE_PORT}/v1"


def desired_replicas(spec: InferenceTierSpec, autoscaled: int | None) -> int:
    """Replicas to run: the autoscaler's choice when autoscaling, else `desired`, clamped to min/max."""
    if spec.autoscaling.enabled and autoscaled is not None:
        wanted = autoscaled
    elif spec.replicas.desired is not None:
        wanted = spec.replicas.desired
    else:
        wanted = spec.replicas.min
    return max(spec.replicas.min, min(spec.replicas.max, wanted))


def _model_location(spec: InferenceTierSpec) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(model_source for the engine, volumes, volume mounts)."""
    scheme, _, rest = spec.model.source.partition("://")
    if scheme == "hf":
        return rest, [], []
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
        return f"{MODEL_MOUNT}/{path}".rstrip("/"), [volume], [mount]
    return spec.model.source, [], []


def _secret_env(spec: InferenceTierSpec) -> list[dict[str, Any]]:
    ref = spec.model.secret_ref
    if ref is None:
        return []
    name = "HF_TOKEN" if spec.model.source.startswith("hf://") else "MODEL_SOURCE_TOKEN"
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def llm_deployment_name(model_id: str) -> str:
    """The name Ray Serve LLM's `build_openai_app` gives the engine deployment of `model_id`."""
    return VLLM_DEPLOYMENT_PREFIX + model_id.replace("/", "--").replace(".", "_")


def _replica_override(name: str, spec: InferenceTierSpec, replicas: int) -> dict[str, Any]:
    """The app's `deployments` entry, the only place scaling rewrites. `autoscaling_config: null`: the operator
    owns the count, and Ray Serve LLM otherwise gives its deployment a Serve autoscaling config (one replica)
    that wins over `num_replicas`."""
    return {
        "name": name,
        "num_replicas": replicas,
        "max_ongoing_requests": spec.max_ongoing_requests,
        "autoscaling_config": None,
    }


def serve_application(spec: InferenceTierSpec, plan: CapacityPlan, replicas: int) -> dict[str, Any]:
    """The one Ray Serve application of a tier, in KubeRay's serveConfigV2 format. `args` (the app's code
    version) do not depend on `replicas`; only the `deployments` override does."""
    model_source, _, _ = _model_location(spec)
    if spec.engine == "llama-cpp":
        return {
            "name": APP_NAME,
            "import_path": LLAMA_CPP_IMPORT_PATH,
            "route_prefix": "/",
            "args": {
                "model_id": spec.model.id,
                "model_source": model_source,
                "n_ctx": spec.model.max_model_len,
                "n_threads": plan.cpus_per_replica,
                **({"sha256": spec.model.sha256} if spec.model.sha256 else {}),
            },
            "deployments": [
                {
                    **_replica_override(LLAMA_CPP_DEPLOYMENT, spec, replicas),
                    "ray_actor_options": {"num_cpus": plan.cpus_per_replica},
                }
            ],
        }
    # No `quantization`: awq, gptq and fp8 checkpoints carry their quantization_config, which vLLM reads and
    # maps to its fastest kernel; an explicit value can only disagree with it (api.model.ModelSpec).
    engine_kwargs: dict[str, Any] = {
        "dtype": "auto",
        "max_model_len": spec.model.max_model_len,
        "gpu_memory_utilization": plan.engine_memory_utilization,
        "tensor_parallel_size": plan.tensor_parallel_size,
        # Requests sharing a prefix (system prompt, earlier turns) reuse its KV cache instead of recomputing
        # it: the self-hosted half of the router's prompt-cache passthrough (docs/router.md, Token discipline).
        "enable_prefix_caching": True,
    }
    llm_config: dict[str, Any] = {
        "model_loading_config": {"model_id": spec.model.id, "model_source": model_source},
        "accelerator_type": spec.accelerator.type,
        "engine_kwargs": engine_kwargs,
    }
    if plan.replicas_per_gpu > 1:
        # Several engines share one GPU (experimental, as in Ray's fractional-GPU guide): each asks Ray for its
        # fraction (Ray sets VLLM_RAY_PER_WORKER_GPUS from the bundle), runs eagerly (no CUDA-graph memory),
        # and skips vLLM's shared compile cache, which co-located engines contend for.
        engine_kwargs["enforce_eager"] = True
        llm_config["placement_group_config"] = {
            "bundles": [{"CPU": 1, "GPU": plan.gpus_per_replica}],
            "strategy": "PACK",
        }
        llm_config["runtime_env"] = {"env_vars": {"VLLM_DISABLE_COMPILE_CACHE": "1"}}
    return {
        "name": APP_NAME,
        "import_path": VLLM_IMPORT_PATH,
        "route_prefix": "/",
        "args": {"llm_configs": [llm_config]},
        "deployments": [_replica_override(llm_deployment_name(spec.model.id), spec, replicas)],
    }


def serve_config(spec: InferenceTierSpec, plan: CapacityPlan, replicas: int) -> dict[str, Any]:
    return {"applications": [serve_application(spec, plan, replicas)]}


def worker_pods(plan: CapacityPlan, replicas: int) -> int:
    """Worker pods for `replicas` replicas: one per GPU group on GPU tiers, one per replica on CPU."""
    if not plan.on_gpu:
        return replicas
    return math.ceil(plan.worker_gpus(replicas) / plan.tensor_parallel_size)


def _worker_resources(plan: CapacityPlan) -> dict[str, str]:
    if not plan.on_gpu:
        memory = math.ceil(plan.replica_gib + 1)
        return {"cpu": str(plan.cpus_per_replica), "memory": f"{memory}Gi"}
    gpus = plan.tensor_parallel_size
    engines = plan.replicas_per_gpu if plan.replicas_per_gpu > 1 else 1
    cpu = 2 + 2 * max(engines, gpus)
    memory = 8 + math.ceil(2 * plan.weights_gib * engines)
    return {"cpu": str(cpu), "memory": f"{memory}Gi", GPU_RESOURCE: str(gpus)}


def _head_group(image: str) -> dict[str, Any]:
    ports = [
        {"containerPort": SERVE_PORT, "name": "serve", "protocol": "TCP"},
        {"containerPort": 8080, "name": "metrics", "protocol": "TCP"},
        {"containerPort": 6379, "name": "gcs", "protocol": "TCP"},
        {"containerPort": 8265, "name": "dashboard", "protocol": "TCP"},
        {"containerPort": 10001, "name": "client", "protocol": "TCP"},
    ]
    resources = {"cpu": "2", "memory": "8Gi"}
    return {
        # The head schedules no engine: all replicas land on workers.
        "rayStartParams": {"num-cpus": "0", "num-gpus": "0"},
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "ray-head",
                        "image": image,
                        "ports": ports,
                        "resources": {"limits": resources, "requests": dict(resources)},
                    }
                ]
            }
        },
    }


def _autoscaler_options(plan: CapacityPlan) -> dict[str, Any]:
    return {
        "version": "v2",
        "upscalingMode": "Default",  # Serve asks for exactly the replicas the operator chose: no rate limit
        "idleTimeoutSeconds": IDLE_TIMEOUT_SECONDS["gpu" if plan.on_gpu else "cpu"],
        "resources": {"limits": dict(AUTOSCALER_RESOURCES), "requests": dict(AUTOSCALER_RESOURCES)},
    }


def _worker_group(tier: InferenceTier, plan: CapacityPlan, image: str) -> dict[str, Any]:
    spec = tier.spec
    resources = _worker_resources(plan)
    _, volumes, mounts = _model_location(spec)
    container: dict[str, Any] = {
        "name": "ray-worker",
        "image": image,
        "resources": {"limits": resources, "requests": dict(resources)},
    }
    if env := _secret_env(spec):
        container["env"] = env
    container["volumeMounts"] = [*mounts, dict(SHM_MOUNT)]
    pod_spec: dict[str, Any] = {"containers": [container]}
    node_selector = dict(spec.node_selector)
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if plan.on_gpu:
        node_selector = {GPU_PRODUCT_LABEL: GPU_PRODUCTS[spec.accelerator.type], **node_selector}
        tolerations.insert(0, {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    pod_spec["volumes"] = [*volumes, copy.deepcopy(SHM_VOLUME)]
    start_params = {"num-cpus": resources["cpu"]}
    if plan.on_gpu:
        start_params["num-gpus"] = resources[GPU_RESOURCE]
    # No `replicas`: the Ray autoscaler owns the pod count within these bounds.
    return {
        "groupName": WORKER_GROUP,
        "minReplicas": worker_pods(plan, spec.replicas.min),
        "maxReplicas": worker_pods(plan, spec.replicas.max),
        "numOfHosts": 1,
        "rayStartParams": start_params,
        "template": {
            "metadata": {"labels": {TIER_LABEL: tier.metadata.name}},
            "spec": pod_spec,
        },
    }


# libyaml: the pure-Python codec made YAML most of a reconcile's CPU time.
def _dump_serve_config(config: dict[str, Any]) -> str:
    return yaml.dump(config, Dumper=yaml.CSafeDumper, sort_keys=False, width=1000)


@functools.lru_cache(maxsize=4096)
def _load_serve_config(text: str) -> Any:
    """Parsed serveConfigV2 of a child as read back; cached, callers must not mutate it."""
    return yaml.load(text, Loader=yaml.CSafeLoader)


def _without_num_replicas(config: Any) -> Any:
    """A serveConfigV2 with the deployments overrides' `num_replicas` left out (a copy); `args` stay whole.
    Anything not shaped like a serve config (a hand edit) is returned as it is, to be repaired."""
    def app_without(app: Any) -> Any:
        if not isinstance(app, Mapping) or not isinstance(app.get("deployments"), list):
            return app
        deployments = [
            {key: value for key, value in deployment.items() if key != "num_replicas"}
            if isinstance(deployment, Mapping) else deployment
            for deployment in app["deployments"]
        ]
        return {**app, "deployments": deployments}

    if not isinstance(config, Mapping) or not isinstance(config.get("applications"), list):
        return config
    return {**config, "applications": [app_without(app) for app in config["applications"]]}


def _serve_config_of(spec: Mapping[str, Any]) -> Any:
    text = spec.get("serveConfigV2")
    return _load_serve_config(text) if isinstance(text, str) else text


def without_replica_counts(rayservice: Mapping[str, Any]) -> dict[str, Any]:
    """What an update writes with every replica count blanked: the spec (serveConfigV2 parsed) and labels.

    Used for the spec hash of a rendered child and to compare a child read back with the desired one.
    """
    spec = dict(rayservice.get("spec") or {})
    spec["serveConfigV2"] = _without_num_replicas(_serve_config_of(spec) or {})
    cluster = dict(spec.get("rayClusterConfig") or {})
    cluster["workerGroupSpecs"] = [
        {key: value for key, value in group.items() if key not in ("replicas", "minReplicas", "maxReplicas")}
        for group in cluster.get("workerGroupSpecs") or []
    ]
    spec["rayClusterConfig"] = cluster
    # Only what an update writes counts; ownerReferences carry the owner's uid, not the spec.
    return {"spec": spec, "labels": (rayservice.get("metadata") or {}).get("labels", {})}


def replica_fields(rayservice: Mapping[str, Any]) -> dict[str, Any]:
    """The replica counts of a RayService (rendered or read back), for comparing desired with actual."""
    spec = rayservice.get("spec") or {}
    config = _serve_config_of(spec) or {}
    serve = [
        deployment.get("num_replicas")
        for app in config.get("applications", [])
        for deployment in app.get("deployments", [])
    ]
    # Not `replicas`: the render writes none (the server defaults it, the Ray autoscaler owns the RayCluster's).
    groups = [
        {key: group.get(key) for key in ("groupName", "minReplicas", "maxReplicas")}
        for group in (spec.get("rayClusterConfig") or {}).get("workerGroupSpecs", [])
    ]
    return {"numReplicas": serve, "workerGroups": groups}


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RenderedRayService:
    """A rendered child and the values derived from it once, at render time."""

    manifest: dict[str, Any]
    spec_hash: str
    replicas: dict[str, Any]  # as `replica_fields` reads them
    comparable: dict[str, Any]  # as `without_replica_counts` reads it


def render_tier(tier: InferenceTier, plan: CapacityPlan, replicas: int) -> RenderedRayService:
    """The RayService for `tier` running `replicas` Serve replicas (already clamped by the caller)."""
    spec = tier.spec
    meta = tier.metadata
    image = default_image(spec)
    metadata: dict[str, Any] = {
        "name": meta.name,
        "namespace": meta.namespace,
        "labels": {**MANAGED_BY, TIER_LABEL: meta.name},
        "annotations": {},
    }
    if meta.uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": tier.api_version,
                "kind": tier.kind,
                "name": meta.name,
                "uid": meta.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    config = serve_config(spec, plan, replicas)
    structured: dict[str, Any] = {
        "apiVersion": RAYSERVICE_API_VERSION,
        "kind": "RayService",
        "metadata": metadata,
        "spec": {
            "serveConfigV2": config,
            "rayClusterConfig": {
                "rayVersion": spec.ray_version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": _autoscaler_options(plan),
                "headGroupSpec": _head_group(image),
                "workerGroupSpecs": [_worker_group(tier, plan, image)],
            },
        },
    }
    comparable = without_replica_counts(structured)
    metadata["annotations"][SPEC_HASH_ANNOTATION] = digest = _hash(comparable)
    fields = replica_fields(structured)
    manifest = {**structured, "spec": {**structured["spec"], "serveConfigV2": _dump_serve_config(config)}}
    return RenderedRayService(manifest, digest, fields, comparable)


def render_rayservice(tier: InferenceTier, plan: CapacityPlan, replicas: int) -> dict[str, Any]:
    """The RayService manifest alone (`tiered render`, golden files)."""
    return render_tier(tier, plan, replicas).manifest


class _ManifestDumper(yaml.SafeDumper):
    """Block style for multi-line strings (serveConfigV2 stays readable), and no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """Multi-document YAML of rendered manifests, keys in render order."""
    return yaml.dump_all(documents, Dumper=_ManifestDumper, sort_keys=False, width=120)
