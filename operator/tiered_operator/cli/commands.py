"""`tiered render` and `tiered plan`: what the operator would create, without a cluster."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from tiered_operator.api.model import InferenceTier, RoutingPolicy
from tiered_operator.api.objects import InvalidObject, Skipped, load_file
from tiered_operator.cli import UsageError
from tiered_operator.core.plan import CapacityPlan, PlanError, plan_capacity
from tiered_operator.core.render import desired_replicas, render_rayservice, to_yaml
from tiered_operator.core.router_config import RouterConfigRejected, render_router_configmap, router_config


def _load(paths: list[Path]) -> list[tuple[Path, InferenceTier | RoutingPolicy]]:
    loaded: list[tuple[Path, InferenceTier | RoutingPolicy]] = []
    for path in paths:
        files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
        for file in files:
            try:
                objects = load_file(file)
            except OSError as error:
                raise UsageError(f"cannot read {file}: {error.strerror or error}") from None
            except yaml.YAMLError as error:
                raise UsageError(f"{file}: malformed YAML: {error}".replace("\n", " ")) from None
            except InvalidObject as error:
                raise UsageError(str(error)) from None
            loaded += [(file, obj) for obj in objects if not isinstance(obj, Skipped)]
    return loaded


def _plan(file: Path, tier: InferenceTier) -> CapacityPlan:
    try:
        return plan_capacity(tier.spec)
    except PlanError as error:
        raise UsageError(f"{file}: InferenceTier/{tier.metadata.name}: spec: {error}") from None


def render_documents(paths: list[Path]) -> list[dict[str, Any]]:
    """RayServices for the tiers, then the router ConfigMap of each policy (not bursting)."""
    loaded = _load(paths)
    tiers = [obj for _, obj in loaded if isinstance(obj, InferenceTier)]
    documents = [render_rayservice(tier, _plan(file, tier), desired_replicas(tier.spec, None))
                 for file, tier in loaded if isinstance(tier, InferenceTier)]
    for file, policy in loaded:
        if isinstance(policy, RoutingPolicy):
            namespace = {t.metadata.name: t for t in tiers if t.metadata.namespace == policy.metadata.namespace}
            try:
                config, _ = router_config(policy, namespace, bursting=False)
            except RouterConfigRejected as error:
                raise UsageError(f"{file}: RoutingPolicy/{policy.metadata.name}: spec: {error}") from None
            documents.append(render_router_configmap(policy, config))
    return documents


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", type=Path, action="append", required=True,
                        help="YAML file or folder of tiered.dev objects (repeatable)")


def render(args: argparse.Namespace) -> int:
    print(to_yaml(render_documents(args.filename)), end="")
    return 0


add_plan_arguments = add_render_arguments


def plan_rows(paths: list[Path]) -> list[list[str]]:
    header = ["NAMESPACE", "NAME", "MODEL", "ACCELERATOR", "WEIGHTS", "KV", "PER-REPLICA", "REPLICAS/GPU",
              "GPUS/REPLICA", "TP", "GPUS(MIN-MAX)"]
    rows = [header]
    for file, obj in _load(paths):
        if not isinstance(obj, InferenceTier):
            continue
        plan = _plan(file, obj)
        spec = obj.spec
        rows.append([
            obj.metadata.namespace,
            obj.metadata.name,
            f"{spec.model.id} ({spec.model.parameters} {spec.model.quantization}/{spec.model.bits}b)",
            spec.accelerator.type,
            f"{plan.weights_gib:.1f}Gi",
            f"{plan.kv_cache_gib:.1f}Gi",
            f"{plan.replica_gib:.1f}Gi",
            str(plan.replicas_per_gpu) if plan.on_gpu else "-",
            f"{plan.gpus_per_replica:g}" if plan.on_gpu else f"{plan.cpus_per_replica} cpu",
            str(plan.tensor_parallel_size) if plan.on_gpu else "-",
            f"{plan.worker_gpus(spec.replicas.min)}-{plan.worker_gpus(spec.replicas.max)}"
            if plan.on_gpu else "-",
        ])
    return rows


def plan(args: argparse.Namespace) -> int:
    rows = plan_rows(args.filename)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0
