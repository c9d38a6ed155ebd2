"""The KubeRay stand-in's pure mapping (tiered_devstack.kuberay) and the router kubelet's rewrites."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from tiered_devstack.kuberay import placement, rayservice_status, serve_applications
from tiered_devstack.router_pod import local_tier_urls, stack_args, with_local_paths

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LLAMA = {"name": "llm", "import_path": "tiered_serving.llama_cpp:build_app", "route_prefix": "/",
         "args": {"model_id": "m", "model_source": "/m.gguf"},
         "deployments": [{"name": "LlamaCppServer", "num_replicas": 1}]}
VLLM = {"name": "llm", "import_path": "ray.serve.llm:build_openai_app", "route_prefix": "/", "args": {}}


def rayservice(name: str, *apps: dict[str, Any], generation: int = 3) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team-a", "generation": generation},
            "spec": {"serveConfigV2": yaml.safe_dump({"applications": list(apps)})}}


def serve_app(status: str, replicas: tuple[str, ...] = ("RUNNING",)) -> dict[str, Any]:
    return {"status": status, "message": "", "deployments": {"LlamaCppServer": {
        "status": "HEALTHY", "message": "", "replicas": [{"state": s} for s in replicas]}}}


def ready_of(status: dict[str, Any]) -> dict[str, Any]:
    [ready] = status["conditions"]
    return ready  # type: ignore[no-any-return]


def test_each_rayservice_gets_its_own_app_name_and_route_prefix_in_the_shared_serve() -> None:
    placed = placement(rayservice("edge", LLAMA))
    [app] = placed.applications
    assert app["name"] == "team-a--edge--llm" and app["route_prefix"] == "/team-a/edge"
    assert app["args"] == LLAMA["args"] and app["deployments"] == LLAMA["deployments"]
    other = placement(rayservice("small", {**LLAMA, "route_prefix": "/api"}))
    assert other.applications[0]["route_prefix"] == "/team-a/small/api"
    assert [a["name"] for a in serve_applications([placed, other])] == ["team-a--edge--llm", "team-a--small--llm"]


def test_a_vllm_app_is_not_deployed_and_its_status_says_why() -> None:
    placed = placement(rayservice("triage", VLLM))
    assert placed.applications == ()
    status = rayservice_status(placed, {}, None, NOW)
    app = status["activeServiceStatus"]["applicationStatuses"]["llm"]
    assert app["status"] == "DEPLOY_FAILED" and "not runnable on this machine" in app["message"]
    assert ready_of(status)["status"] == "False" and ready_of(status)["reason"] == "NotRunnableHere"


def test_ready_follows_serve_and_keeps_its_transition_time_until_it_flips() -> None:
    placed = placement(rayservice("edge", LLAMA))
    waiting = rayservice_status(placed, {}, None, NOW)
    assert ready_of(waiting)["status"] == "False"
    assert waiting["activeServiceStatus"]["applicationStatuses"]["llm"]["status"] == "DEPLOYING"
    running = rayservice_status(placed, {"team-a--edge--llm": serve_app("RUNNING")}, waiting, NOW)
    assert ready_of(running) | {"lastTransitionTime": None} == {
        "type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints", "lastTransitionTime": None,
        "message": "Serve applications running on the local Ray", "observedGeneration": 3}
    assert running["observedGeneration"] == 3
    later = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
    # An in-place update with a replica still running stays Ready, with the old transition time.
    updating = rayservice_status(placed, {"team-a--edge--llm": serve_app("DEPLOYING", ("RUNNING", "STARTING"))},
                                 running, later)
    assert ready_of(updating)["status"] == "True"
    assert ready_of(updating)["lastTransitionTime"] == ready_of(running)["lastTransitionTime"]
    failed = rayservice_status(placed, {"team-a--edge--llm": serve_app("DEPLOY_FAILED", ())}, updating, later)
    assert ready_of(failed)["status"] == "False" and ready_of(failed)["lastTransitionTime"] == "2026-12-01T13:00:00Z"


def test_unreadable_serve_config_is_reported_not_deployed() -> None:
    broken = {"metadata": {"name": "x", "namespace": "n"}, "spec": {"serveConfigV2": "applications: ["}}
    placed = placement(broken)
    assert placed.applications == () and placed.invalid
    assert ready_of(rayservice_status(placed, {}, None, NOW))["status"] == "False"


def test_the_router_kubelet_maps_tier_services_mounts_and_flags_to_this_machine() -> None:
    text = "baseURL: http://edge-serve-svc.team-a.svc.cluster.local:8000/v1\napiKeysFile: /etc/tiered/keys/keys.yaml"
    mounts = {"/etc/tiered/keys": Path("/tmp/w/keys"), "/tmp": Path("/tmp/w/tmp"),
              "/etc/tiered/router": Path("/tmp/w/config")}
    assert with_local_paths(local_tier_urls(text, "http://127.0.0.1:9"), mounts) == (
        "baseURL: http://127.0.0.1:9/team-a/edge/v1\napiKeysFile: /tmp/w/keys/keys.yaml")
    args = ["router", "--config", "/etc/tiered/router/router.yaml", "--host", "0.0.0.0", "--port", "8080",
            "--drain-seconds", "5"]
    assert stack_args(args, mounts, 4321) == ["router", "--config", "/tmp/w/config/router.yaml", "--host",
                                              "127.0.0.1", "--port", "4321", "--drain-seconds", "0"]
    assert stack_args([*args, "--metrics-port", "9090"], mounts, 4321, 4322)[-4:] == [
        "--drain-seconds", "0", "--metrics-port", "4322"]
