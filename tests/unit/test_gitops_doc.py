"""docs/gitops.md holds working configuration: its YAML parses, the chart values in it pass the chart's
values schema, and its health checks give the verdicts the doc promises. The Argo CD Lua runs in a real Lua
interpreter (lupa) and the Flux CEL in a real CEL implementation. They run on statuses built by the
operator's own status functions."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cel
import jsonschema
import pytest
import yaml
from lupa import LuaRuntime
from tiered_operator.api import conditions as c
from tiered_operator.api.model import RoutingPolicy
from tiered_operator.api.objects import load_file
from tiered_operator.api.status import PolicyStatus, TierStatus, WantedCondition, set_conditions
from tiered_operator.core.reconcile import failed_status, policy_status

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "gitops.md"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), re.M | re.S)


def documents() -> list[dict[str, Any]]:
    return [doc for block in blocks("yaml") for doc in yaml.safe_load_all(block) if doc]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents() if doc["kind"] == kind]


def test_every_yaml_block_parses_and_names_what_the_doc_promises() -> None:
    kinds = sorted(doc["kind"] for doc in documents())
    assert kinds == ["Application", "Application", "ConfigMap", "GitRepository", "HelmRelease", "Kustomization"]


def test_the_chart_values_in_the_doc_pass_the_chart_schema() -> None:
    schema = json.loads((ROOT / "charts" / "tiered" / "values.schema.json").read_text())
    chart = next(app for app in of_kind("Application") if app["spec"]["source"]["path"] == "charts/tiered")
    jsonschema.validate(chart["spec"]["source"]["helm"]["valuesObject"], schema)
    release = of_kind("HelmRelease")[0]
    jsonschema.validate(release["spec"]["values"], schema)
    assert release["spec"]["chart"]["spec"]["chart"] == "./charts/tiered"
    assert release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == "CreateReplace"


def test_the_scale_ignore_rule_names_the_crds_scale_path() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "tiered.dev_inferencetiers.yaml").read_text())
    scale = crd["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"]
    tiers = next(app for app in of_kind("Application") if app["spec"].get("ignoreDifferences"))
    pointers = tiers["spec"]["ignoreDifferences"][0]["jsonPointers"]
    assert pointers == [scale.replace(".", "/")]
    assert "RespectIgnoreDifferences=true" in tiers["spec"]["syncPolicy"]["syncOptions"]


# ---- the objects the health checks judge ------------------------------------------------------------


def tier(status: TierStatus | None, generation: int = 3) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "tiered.dev/v1alpha1", "kind": "InferenceTier",
                            "metadata": {"name": "edge", "namespace": "inference", "generation": generation}}
    if status is not None:
        body["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return body


def conditioned(*wanted: WantedCondition, generation: int = 3) -> TierStatus:
    return TierStatus(observed_generation=generation,
                      conditions=set_conditions((), wanted, now=NOW, generation=generation))


READY_TIER = conditioned(WantedCondition(type=c.READY, status="True", reason=c.RAYSERVICE_READY),
                         WantedCondition(type=c.INVALID, status="False", reason=c.VALID),
                         WantedCondition(type=c.DEGRADED, status="False", reason=c.HEALTHY))
STARTING_TIER = conditioned(WantedCondition(type=c.READY, status="False", reason=c.WAITING_FOR_RAYSERVICE,
                                            message="RayService edge is not ready yet"),
                            WantedCondition(type=c.INVALID, status="False", reason=c.VALID),
                            WantedCondition(type=c.DEGRADED, status="False", reason=c.HEALTHY))
UNHEALTHY_TIER = conditioned(WantedCondition(type=c.READY, status="False", reason=c.APPLICATION_UNHEALTHY),
                             WantedCondition(type=c.DEGRADED, status="True", reason=c.APPLICATION_UNHEALTHY,
                                             message="Serve application edge is UNHEALTHY"))


def policy(tiers: dict[str, TierStatus]) -> dict[str, Any]:
    example = next(obj for obj in load_file(ROOT / "examples" / "policy-frontier.yaml")
                   if isinstance(obj, RoutingPolicy))
    example = example.model_copy(update={"metadata": example.metadata.model_copy(update={"generation": 3})})
    status = policy_status(example, tiers, PolicyStatus(), None, NOW, endpoint="http://router/v1")
    return {"apiVersion": "tiered.dev/v1alpha1", "kind": "RoutingPolicy",
            "metadata": {"name": "default", "namespace": "inference", "generation": 3},
            "status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}


def policy_tiers() -> list[str]:
    example = next(obj for obj in load_file(ROOT / "examples" / "policy-frontier.yaml")
                   if isinstance(obj, RoutingPolicy))
    return [t.tier_ref for t in example.spec.tiers if t.tier_ref]


# (what, object, Argo CD health, Flux: current, Flux: failed)
CASES = [
    ("ready tier", lambda: tier(READY_TIER), "Healthy", True, False),
    ("tier not reconciled yet", lambda: tier(None), "Progressing", False, False),
    ("tier starting", lambda: tier(STARTING_TIER), "Progressing", False, False),
    ("tier edited, not yet seen", lambda: tier(READY_TIER, generation=4), "Progressing", False, False),
    ("invalid tier", lambda: tier(failed_status(TierStatus(), 3, c.DOES_NOT_FIT, "needs 96 GiB, H100 has 80",
                                                NOW, invalid=True)), "Degraded", False, True),
    ("tier failing", lambda: tier(failed_status(READY_TIER, 3, c.RECONCILE_FAILED, "boom", NOW, invalid=False)),
     "Degraded", False, True),
    ("tier application unhealthy", lambda: tier(UNHEALTHY_TIER), "Degraded", False, True),
    ("policy before its tiers", lambda: policy({}), "Progressing", False, False),
    ("policy, tiers starting", lambda: policy({name: STARTING_TIER for name in policy_tiers()}),
     "Progressing", False, False),
    ("policy, tiers ready", lambda: policy({name: READY_TIER for name in policy_tiers()}), "Healthy", True, False),
]


def lua_health(kind: str) -> Any:
    """The doc's health.lua for `kind`, as Argo CD runs it: the script body with `obj` bound."""
    config = of_kind("ConfigMap")[0]
    script = config["data"][f"resource.customizations.health.tiered.dev_{kind}"]
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.execute(f"function health(obj)\n{script}\nend")
    return lambda obj: lua.globals().health(lua.table_from(obj, recursive=True))


@pytest.mark.parametrize(("what", "make", "health", "current", "failed"), CASES, ids=[case[0] for case in CASES])
def test_argo_cd_health_check(what: str, make: Any, health: str, current: bool, failed: bool) -> None:
    obj = make()
    result = lua_health(obj["kind"])(obj)
    assert result["status"] == health, (what, result["message"])
    if health != "Healthy":
        assert result["message"], what  # a person sees why


def flux_exprs(kind: str) -> dict[str, str]:
    kustomization = of_kind("Kustomization")[0]
    found: dict[str, str] = next(e for e in kustomization["spec"]["healthCheckExprs"] if e["kind"] == kind)
    return found


def cel_true(expression: str, obj: dict[str, Any]) -> bool:
    try:
        return cel.evaluate(expression, obj) is True
    except (ValueError, RuntimeError, KeyError):
        return False  # a field that is not there yet: Flux keeps waiting (in progress)


@pytest.mark.parametrize(("what", "make", "health", "current", "failed"), CASES, ids=[case[0] for case in CASES])
def test_flux_health_check_exprs(what: str, make: Any, health: str, current: bool, failed: bool) -> None:
    obj = make()
    exprs = flux_exprs(obj["kind"])
    assert (cel_true(exprs["current"], obj), cel_true(exprs["failed"], obj)) == (current, failed), what


def test_both_kinds_share_one_health_check() -> None:
    config = of_kind("ConfigMap")[0]["data"]
    assert config["resource.customizations.health.tiered.dev_InferenceTier"] == \
        config["resource.customizations.health.tiered.dev_RoutingPolicy"]
    assert flux_exprs("InferenceTier") | {"kind": ""} == flux_exprs("RoutingPolicy") | {"kind": ""}


def test_the_checks_name_only_real_conditions_and_reasons() -> None:
    script = of_kind("ConfigMap")[0]["data"]["resource.customizations.health.tiered.dev_InferenceTier"]
    exprs = " ".join(v for k, v in flux_exprs("InferenceTier").items() if k in ("current", "failed"))
    named = set(re.findall(r'"([A-Z][A-Za-z]+)"', script)) | set(re.findall(r"'([A-Z][A-Za-z]+)'", exprs))
    known = {value for name, value in vars(c).items() if name.isupper() and isinstance(value, str)}
    statuses = {"True", "False", "Healthy", "Progressing", "Degraded"}  # condition statuses, Argo CD verdicts
    assert named - statuses <= known, named - statuses - known
