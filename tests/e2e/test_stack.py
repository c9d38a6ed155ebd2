"""The local stack for real: kubectl → operator → RayService → KubeRay stand-in → Ray Serve (llama.cpp with
SmolLM2 / Gemma 3 270M) ← the router the operator rendered, reloading its ConfigMap as kubelet swaps it.

One stack per module on the session's Ray; the tests run in order and build on each other's state (apply,
answer, rescale, change model, burst, delete). Costs ~105 s: the session Ray start (~15 s), model loads
(<1 s each) and Serve updates, two burst windows (~10 s each).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tiered_devstack import stack_objects as objects
from tiered_devstack.cluster import eventually
from tiered_devstack.data import EXAMPLES
from tiered_devstack.dcgm_exporter import gpu
from tiered_devstack.kuberay import serve_name
from tiered_devstack.ray_serve import LocalRay
from tiered_devstack.stack import LocalStack, running_stack

pytestmark = pytest.mark.integration

SMALL_WORKER = "small-local-workers-worker-a1b2c"  # matches the operator's worker-pod selector for `small`
SMALL_APP = serve_name(objects.NAMESPACE, objects.SMALL, "llm")
FRONTIER_APP = serve_name(objects.NAMESPACE, objects.FRONTIER, "llm")


@pytest.fixture(scope="module")
def stack(local_ray: LocalRay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("stack"), ray=local_ray) as running:
        running.exporter.set(gpu(SMALL_WORKER, 40))
        try:
            yield running
        except BaseException:
            print(f"--- router log ---\n{running.router.log.read_text(errors='replace')[-3000:]}")
            raise


def apply(stack: LocalStack, *docs: dict[str, Any]) -> str:
    return stack.emulator.kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump_all(docs)).stdout


def ask(stack: LocalStack, prompt: str, model: str = "auto", key: str = objects.USER_KEY,
        **headers: str) -> httpx.Response:
    return httpx.post(f"{stack.router.url}/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {key}", **headers},
                      json={"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16,
                            "temperature": 0})


def serve_app(stack: LocalStack, name: str) -> dict[str, Any] | None:
    return stack.ray.applications().get(name)


def running_replicas(app: dict[str, Any] | None) -> int:
    deployment = ((app or {}).get("deployments") or {}).get("LlamaCppServer") or {}
    return sum(replica.get("state") == "RUNNING" for replica in deployment.get("replicas") or ())


def tier_ready(stack: LocalStack, name: str) -> bool:
    body = stack.emulator.api("GET", f"/apis/tiered.dev/v1alpha1/namespaces/default/inferencetiers/{name}")[1]
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in ((body or {}).get("status") or {}).get("conditions") or ())


def router_config(stack: LocalStack) -> dict[str, Any]:
    volume = stack.router.volumes["config"]
    assert volume.files is not None
    loaded: dict[str, Any] = yaml.safe_load(next(iter(volume.files.values())))
    return loaded


def test_a_tier_applied_with_kubectl_answers_through_the_router_with_model_text(stack: LocalStack) -> None:
    out = apply(stack, objects.keys_secret(), objects.small_tier(), objects.frontier_tier(), objects.demo_policy())
    assert "inferencetier.tiered.dev/small created" in out
    eventually(lambda: tier_ready(stack, objects.SMALL) and tier_ready(stack, objects.FRONTIER)
               and stack.router.ready(), timeout=180, interval=0.5, what="tiers Ready and the router up")
    rayservice = stack.emulator.api("GET", "/apis/ray.io/v1/namespaces/default/rayservices/small")[1]
    ready = next(c for c in rayservice["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["lastTransitionTime"]
    assert rayservice["status"]["activeServiceStatus"]["applicationStatuses"]["llm"]["status"] == "RUNNING"
    assert serve_app(stack, SMALL_APP)["route_prefix"] == "/default/small"  # type: ignore[index]

    texts = set()
    for prompt in ("Name a fruit.", "Write one word about the sea.", "What is two plus two?"):
        response = ask(stack, prompt, model=objects.SMALL)
        assert response.status_code == 200, response.text
        assert response.headers["x-tiered-tier"] == objects.SMALL
        body = response.json()
        usage = body["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert body["model"] == "smollm2-135m-instruct"
        texts.add(body["choices"][0]["message"]["content"])
    assert len(texts) == 3, texts  # generated from the prompt, not canned


def test_the_routers_config_is_the_operators_configmap_with_local_tier_urls(stack: LocalStack) -> None:
    configmap = stack.emulator.api("GET", "/api/v1/namespaces/default/configmaps/tiered-router-demo")[1]
    rendered = yaml.safe_load(configmap["data"]["router.yaml"])
    local = router_config(stack)
    urls = {t["name"]: t["baseURL"] for t in local["tiers"]}
    assert {t["name"]: t["baseURL"] for t in rendered["tiers"]} == {
        name: objects.tier_service_url(name) for name in (objects.SMALL, objects.FRONTIER)}
    assert urls == {name: f"{stack.ray.serve_url}/default/{name}/v1" for name in (objects.SMALL, objects.FRONTIER)}
    mounted = stack.router.workdir / "volumes" / "config"
    assert (mounted / "router.yaml").is_symlink() and (mounted / "..data").is_symlink()


def test_changing_the_tiers_replicas_is_picked_up(stack: LocalStack) -> None:
    before = serve_app(stack, FRONTIER_APP)
    assert running_replicas(before) == 1
    stack.emulator.kubectl("patch", "itier", objects.FRONTIER, "--type=merge",
                           "-p", json.dumps({"spec": {"replicas": {"min": 2, "max": 2}}}))
    eventually(lambda: running_replicas(serve_app(stack, FRONTIER_APP)) == 2, timeout=90, interval=0.5,
               what="two running replicas of the frontier stand-in")
    deployed = serve_app(stack, FRONTIER_APP)["deployed_app_config"]  # type: ignore[index]
    assert deployed["deployments"][0]["num_replicas"] == 2
    eventually(lambda: tier_ready(stack, objects.FRONTIER), timeout=30, what="the tier Ready again")


def test_changing_the_tiers_model_is_picked_up(stack: LocalStack) -> None:
    gemma = objects.frontier_model()
    changed = {"spec": {"model": {"id": "second-model", "source": gemma.source, "parameters": gemma.parameters}}}
    stack.emulator.kubectl("patch", "itier", objects.SMALL, "--type=merge", "-p", json.dumps(changed))

    def answered_by_new_model() -> bool:
        response = ask(stack, "Say something.", model=objects.SMALL)
        return response.status_code == 200 and response.json()["model"] == "second-model"
    eventually(answered_by_new_model, timeout=120, interval=1, what="answers from the new model")
    assert serve_app(stack, SMALL_APP)["deployed_app_config"]["args"]["model_source"] == gemma.source  # type: ignore[index]


def test_a_burst_flip_reaches_the_running_router(stack: LocalStack) -> None:
    assert router_config(stack)["tiers"][0]["burst"] is False
    swaps = stack.router.updates
    stack.exporter.set(gpu(SMALL_WORKER, 95))
    eventually(lambda: router_config(stack)["tiers"][0]["burst"] is True, timeout=60, interval=0.5,
               what="burst on in the router's mounted config")
    assert stack.router.updates > swaps
    pid = stack.router.process.pid  # type: ignore[union-attr]

    def overflowed() -> bool:
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda i: ask(stack, f"Count to {i}.", model="auto",
                                                    **{"x-tiered-task": "chat"}), range(6)))
        return any(r.headers.get("x-tiered-tier") == objects.FRONTIER and "burst" in r.headers["x-tiered-reason"]
                   for r in responses)
    eventually(overflowed, timeout=60, interval=0.5, what="overflow sent to the burst target")
    assert stack.router.process.pid == pid  # type: ignore[union-attr]  # hot reload, no restart
    stack.exporter.set(gpu(SMALL_WORKER, 30))
    eventually(lambda: router_config(stack)["tiers"][0]["burst"] is False, timeout=60, interval=0.5,
               what="burst off in the router's mounted config")


def test_deleting_the_tier_removes_its_serve_app(stack: LocalStack) -> None:
    assert serve_app(stack, FRONTIER_APP) is not None
    stack.emulator.kubectl("delete", "itier", objects.FRONTIER)
    eventually(lambda: serve_app(stack, FRONTIER_APP) is None, timeout=60, interval=0.5,
               what="the frontier stand-in's Serve app gone")
    assert serve_app(stack, SMALL_APP) is not None


def test_a_vllm_tier_is_marked_not_runnable_here(stack: LocalStack) -> None:
    stack.emulator.kubectl("apply", "--validate=false", "-f", str(Path(EXAMPLES) / "tier-awq-h100.yaml"))

    def not_runnable() -> str | None:
        status, body = stack.emulator.api("GET", "/apis/ray.io/v1/namespaces/default/rayservices/triage")
        if status != 200:
            return None  # the operator has not created it yet
        apps = ((body.get("status") or {}).get("activeServiceStatus") or {}).get("applicationStatuses")
        message = str(((apps or {}).get("llm") or {}).get("message") or "")
        return message if "not runnable on this machine" in message else None
    eventually(not_runnable, timeout=30, what="the vLLM tier's RayService marked not runnable")
    assert not any(name.startswith("default--triage") for name in stack.ray.applications())
