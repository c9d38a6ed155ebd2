"""Rendering: golden files for every example, and the output checked against KubeRay's and Ray's schemas."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema
from tiered_operator.api.model import InferenceTier
from tiered_operator.api.objects import Skipped, load_file
from tiered_operator.cli.commands import render_documents
from tiered_operator.core.plan import plan_capacity
from tiered_operator.core.render import (
    SPEC_HASH_ANNOTATION,
    render_rayservice,
    render_tier,
    replica_fields,
    to_yaml,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"
KUBERAY_CRD = ROOT / "devstack" / "tiered_devstack" / "data" / "kuberay" / "ray.io_rayservices.yaml"


def _tiers() -> list[InferenceTier]:
    return [obj for path in EXAMPLES for obj in load_file(path) if isinstance(obj, InferenceTier)]


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
    tier = _tiers()[0]
    plan = plan_capacity(tier.spec)
    two, six = render_rayservice(tier, plan, 2), render_rayservice(tier, plan, 6)
    assert two["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == six["metadata"]["annotations"][
        SPEC_HASH_ANNOTATION
    ]
    assert replica_fields(two) != replica_fields(six)
    assert replica_fields(six)["numReplicas"] == [6]
    assert replica_fields(six)["workerGroups"][0]["replicas"] == 2  # four replicas share each H100

    longer = tier.model_copy(
        update={"spec": tier.spec.model_copy(
            update={"model": tier.spec.model.model_copy(update={"max_model_len": 4096})})}
    )
    assert render_tier(longer, plan_capacity(longer.spec), 2).spec_hash != render_tier(tier, plan, 2).spec_hash


def test_render_derives_hash_and_replica_counts_once() -> None:
    tier = _tiers()[0]
    rendered = render_tier(tier, plan_capacity(tier.spec), 3)
    assert rendered.manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == rendered.spec_hash
    assert rendered.replicas == replica_fields(rendered.manifest)  # the manifest read back agrees


def test_packed_tier_shares_gpus_and_splits_memory() -> None:
    extract = next(t for t in _tiers() if t.metadata.name == "extract")
    rayservice = render_rayservice(extract, plan_capacity(extract.spec), 7)
    llm = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]["llm_configs"][0]
    assert llm["placement_group_config"]["bundles"] == [{"CPU": 1, "GPU": 0.3333}]
    assert llm["engine_kwargs"]["gpu_memory_utilization"] == pytest.approx(0.9 / 3)
    assert llm["engine_kwargs"]["quantization"] == "gptq"
    group = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert group["replicas"] == 3  # ceil(7 / 3) B200s
    assert group["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-B200"}
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_cpu_tier_runs_tiered_serving_without_gpus() -> None:
    edge = next(t for t in _tiers() if t.metadata.name == "edge")
    rayservice = render_rayservice(edge, plan_capacity(edge.spec), 3)
    app = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]
    assert app["import_path"] == "tiered_serving.llama_cpp:build_app"
    assert app["deployments"][0]["num_replicas"] == 3
    assert app["args"]["model_source"] == "/models/smollm2-135m-instruct-q4_1.gguf"
    pod = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in pod
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models"
