"""Rendering: golden files for every example, and the output checked against KubeRay's CRD, Ray Serve's
config schema, Ray Serve LLM's own `LLMConfig` model and vLLM's engine-argument names; scaling changes only
the deployments override."""

from __future__ import annotations

import ast
import copy
import json
import os
from importlib import metadata, util
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
from ray.serve.schema import ServeDeploySchema
from tiered_operator.api.model import InferenceTier
from tiered_operator.api.objects import Skipped, load_file
from tiered_operator.cli.commands import render_documents
from tiered_operator.core.plan import plan_capacity
from tiered_operator.core.reconcile import child_action
from tiered_operator.core.render import (
    SPEC_HASH_ANNOTATION,
    llm_deployment_name,
    render_rayservice,
    render_tier,
    replica_fields,
    to_yaml,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"
KUBERAY_CRD = ROOT / "devstack" / "tiered_devstack" / "data" / "kuberay" / "ray.io_rayservices.yaml"
# Written by scripts/vllm_engine_args.py from the vllm wheel Ray pins (not installable here: CUDA).
VLLM_ARGS = json.loads((Path(__file__).parent / "data" / "vllm_engine_args.json").read_text())


def _tiers() -> list[InferenceTier]:
    return [obj for path in EXAMPLES for obj in load_file(path) if isinstance(obj, InferenceTier)]


def _vllm_tiers() -> list[InferenceTier]:
    return [tier for tier in _tiers() if tier.spec.engine == "vllm"]


def _tier(name: str) -> InferenceTier:
    return next(t for t in _tiers() if t.metadata.name == name)


def _app(rayservice: dict[str, Any]) -> dict[str, Any]:
    app: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]
    return app


@pytest.fixture(scope="module")
def rayservice_schema() -> dict[str, Any]:
    crd = yaml.safe_load(KUBERAY_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_golden(example: Path) -> None:
    rendered = to_yaml(render_documents([example]))
    golden = GOLDEN / f"{example.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file for {example.name}: run with UPDATE_GOLDEN=1"
    assert rendered == golden.read_text()


@pytest.mark.parametrize("tier", _tiers(), ids=lambda t: t.metadata.name)
def test_rendered_rayservice_matches_kuberay_schema(tier: InferenceTier, rayservice_schema: dict) -> None:
    rayservice = render_rayservice(tier, plan_capacity(tier.spec), tier.spec.replicas.max)
    jsonschema.validate(rayservice, rayservice_schema)
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)


def test_every_example_is_a_tiered_object() -> None:
    for path in EXAMPLES:
        assert not [obj for obj in load_file(path) if isinstance(obj, Skipped)], path


def test_schema_check_catches_a_bad_rayservice(rayservice_schema: dict) -> None:
    tier = _tiers()[0]
    rayservice = render_rayservice(tier, plan_capacity(tier.spec), 1)
    del rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rayservice, rayservice_schema)


def test_spec_hash_ignores_replica_counts_only() -> None:
    tier = _tier("triage")
    plan = plan_capacity(tier.spec)
    two, six = render_rayservice(tier, plan, 2), render_rayservice(tier, plan, 6)
    assert two["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == six["metadata"]["annotations"][
        SPEC_HASH_ANNOTATION
    ]
    assert replica_fields(two) != replica_fields(six)
    assert replica_fields(six) == {
        "numReplicas": [6],
        "workerGroups": [{"groupName": "workers", "minReplicas": 1, "maxReplicas": 2}],  # 4 replicas per H100
    }

    longer = tier.model_copy(
        update={"spec": tier.spec.model_copy(
            update={"model": tier.spec.model.model_copy(update={"max_model_len": 4096})})}
    )
    assert render_tier(longer, plan_capacity(longer.spec), 2).spec_hash != render_tier(tier, plan, 2).spec_hash


@pytest.mark.parametrize("tier", _tiers(), ids=lambda t: t.metadata.name)
def test_a_rescale_changes_only_the_deployments_override(tier: InferenceTier) -> None:
    """2 → 3 replicas: `args` (the app's code version, whose change restarts every engine) stay byte-identical,
    the RayCluster is untouched, and the child action patches only serveConfigV2."""
    plan = plan_capacity(tier.spec)
    two, three = render_tier(tier, plan, 2), render_tier(tier, plan, 3)
    app_two, app_three = _app(two.manifest), _app(three.manifest)
    assert yaml.safe_dump(app_two["args"]) == yaml.safe_dump(app_three["args"])
    assert "num_replicas" not in json.dumps(app_three["args"])
    assert [d["num_replicas"] for d in app_three["deployments"]] == [3]
    changed = {key for key in app_three if app_three[key] != app_two[key]}
    assert changed == {"deployments"}
    for d2, d3 in zip(app_two["deployments"], app_three["deployments"], strict=True):
        assert {key for key in d3 if d3[key] != d2[key]} == {"num_replicas"}
    assert three.manifest["spec"]["rayClusterConfig"] == two.manifest["spec"]["rayClusterConfig"]
    assert three.spec_hash == two.spec_hash

    action = child_action(three, copy.deepcopy(two.manifest))
    assert action.kind == "rescale"
    assert action.patch == {"spec": {"serveConfigV2": three.manifest["spec"]["serveConfigV2"]}}


def test_render_derives_hash_and_replica_counts_once() -> None:
    tier = _tiers()[0]
    rendered = render_tier(tier, plan_capacity(tier.spec), 3)
    assert rendered.manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == rendered.spec_hash
    assert rendered.replicas == replica_fields(rendered.manifest)  # the manifest read back agrees


@pytest.mark.parametrize("tier", _tiers(), ids=lambda t: t.metadata.name)
def test_capacity_comes_from_the_ray_autoscaler(tier: InferenceTier) -> None:
    """KubeRay ignores a RayService's worker counts on update: in-tree autoscaling within the plan's bounds,
    no worker `replicas`, and /dev/shm for Ray's object store on every worker."""
    plan = plan_capacity(tier.spec)
    cluster = render_rayservice(tier, plan, tier.spec.replicas.max)["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["upscalingMode"] == "Default"
    (group,) = cluster["workerGroupSpecs"]
    assert "replicas" not in group
    assert group["minReplicas"] <= group["maxReplicas"]
    pod = group["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


@pytest.mark.parametrize("tier", _vllm_tiers(), ids=lambda t: t.metadata.name)
def test_llm_config_is_valid_for_ray_serve_llm(tier: InferenceTier) -> None:
    """Ray's own LLMConfig model (it forbids unknown fields), and every engine kwarg a field of the vLLM Ray
    pins; quantized checkpoints get no `quantization` (vLLM reads their own quantization_config)."""
    llm = _app(render_rayservice(tier, plan_capacity(tier.spec), 2))["args"]["llm_configs"][0]
    parsed = LLMConfig.model_validate(llm)
    assert parsed.deployment_config == {}  # no replica count in `args`
    assert parsed.model_id == tier.spec.model.id
    vllm_fields = set(VLLM_ARGS["engine_args"]) | set(VLLM_ARGS["frontend_args"])
    assert set(llm["engine_kwargs"]) <= vllm_fields
    assert "quantization" not in llm["engine_kwargs"]
    assert parsed.engine_kwargs["enable_prefix_caching"] is True  # shared prefixes reuse their KV cache
    with pytest.raises(ValueError, match="enigne_kwargs"):
        LLMConfig.model_validate({**llm, "enigne_kwargs": {}})
    assert "max_modle_len" not in vllm_fields


def test_vendored_vllm_arguments_match_the_vllm_ray_pins() -> None:
    pins = [r for r in metadata.requires("ray") or [] if r.startswith("vllm") and "llm" in r]
    assert pins == [f"vllm[audio]=={VLLM_ARGS['vllm']}; extra == \"llm\""], (
        "Ray's vLLM pin changed: run scripts/vllm_engine_args.py")
    assert VLLM_ARGS["ray"] == metadata.version("ray")


def _ray_deployment_name_function() -> Any:
    """Ray Serve LLM's own `_get_deployment_name`, compiled from its source (the module imports vLLM)."""
    spec = util.find_spec("ray.llm._internal.serve.core.server.builder")
    assert spec is not None and spec.origin is not None
    text = Path(spec.origin).read_text()
    # The prefix is the deployment class's name: LLMServer, unless the LLMConfig names a server_cls.
    assert 'name_prefix = name_prefix or f"{deployment_cls.__name__}:"' in text
    assert "deployment_cls = deployment_cls or llm_config.server_cls or LLMServer" in text
    source = ast.parse(text)
    function = next(n for n in source.body if isinstance(n, ast.FunctionDef) and n.name == "_get_deployment_name")
    namespace: dict[str, Any] = {"LLMConfig": LLMConfig}
    exec(compile(ast.Module(body=[function], type_ignores=[]), spec.origin, "exec"), namespace)
    return namespace["_get_deployment_name"]


@pytest.mark.parametrize("model_id", ["llama-3.1-8b-instruct", "Qwen/Qwen2.5-14B-Instruct", "m"])
def test_the_override_names_the_deployment_ray_builds(model_id: str) -> None:
    ray_name = _ray_deployment_name_function()
    config = LLMConfig.model_validate({"model_loading_config": {"model_id": model_id}})
    assert llm_deployment_name(model_id) == "LLMServer:" + ray_name(config)


@pytest.mark.parametrize("tier", _tiers(), ids=lambda t: t.metadata.name)
def test_the_override_turns_serve_autoscaling_off(tier: InferenceTier) -> None:
    """Ray Serve LLM gives its deployment a Serve autoscaling config (one replica) unless `num_replicas` is in
    `args`; with that config left in place Serve ignores the override's `num_replicas` (checked on a real Ray
    Serve: 1 replica running for num_replicas 2). `autoscaling_config: null` in the override clears it."""
    (override,) = _app(render_rayservice(tier, plan_capacity(tier.spec), 2))["deployments"]
    assert "autoscaling_config" in override and override["autoscaling_config"] is None


def test_packed_tier_shares_gpus_the_way_ray_advises() -> None:
    extract = _tier("extract")
    rayservice = render_rayservice(extract, plan_capacity(extract.spec), 7)
    app = _app(rayservice)
    llm = app["args"]["llm_configs"][0]
    assert llm["placement_group_config"]["bundles"] == [{"CPU": 1, "GPU": 0.3333}]
    assert llm["engine_kwargs"]["gpu_memory_utilization"] == pytest.approx(0.9 / 3)
    assert llm["engine_kwargs"]["enforce_eager"] is True  # no CUDA-graph memory per engine
    assert llm["runtime_env"] == {"env_vars": {"VLLM_DISABLE_COMPILE_CACHE": "1"}}
    assert app["deployments"][0]["name"] == "LLMServer:qwen2_5-14b-instruct"
    group = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 4)  # ceil(1 / 3), ceil(12 / 3) B200s
    assert group["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-B200"}
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    triage = _tier("triage")
    whole = triage.spec.model_copy(
        update={"accelerator": triage.spec.accelerator.model_copy(update={"gpus_per_replica": "1"})})
    one_per_gpu = triage.model_copy(update={"spec": whole})
    llm = _app(render_rayservice(one_per_gpu, plan_capacity(whole), 2))["args"]["llm_configs"][0]
    assert "enforce_eager" not in llm["engine_kwargs"]
    assert "placement_group_config" not in llm and "runtime_env" not in llm


def test_default_gpu_image_is_the_one_ray_publishes() -> None:
    """Ray builds ray-llm images for Python 3.12 on CUDA 13.0 (vLLM 0.29, which Ray 2.60 pins, needs CUDA 13)."""
    triage = _tier("triage")
    pod = render_rayservice(triage, plan_capacity(triage.spec), 2)["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert pod["template"]["spec"]["containers"][0]["image"] == "rayproject/ray-llm:2.60.0-py312-cu130"


def test_cpu_tier_runs_tiered_serving_without_gpus() -> None:
    edge = _tier("edge")
    rayservice = render_rayservice(edge, plan_capacity(edge.spec), 3)
    app = _app(rayservice)
    assert app["import_path"] == "tiered_serving.llama_cpp:build_app"
    assert app["deployments"][0]["name"] == "LlamaCppServer"
    assert app["deployments"][0]["num_replicas"] == 3
    assert app["args"]["model_source"] == "/models/smollm2-135m-instruct-q4_1.gguf"
    pod = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in pod
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models"
