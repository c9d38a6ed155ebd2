"""The test bed itself: real kubectl and a real `kopf run` against `tiered cluster` (the API emulator)."""

from __future__ import annotations

import json
import textwrap
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from bed import EmulatorProcess, eventually, running_emulator, running_kopf
from tiered_operator.api.crds import inference_tier_crd

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures"
WIDGETS = "/apis/test.tiered.dev/v1/namespaces/default/widgets"
MERGE = "application/merge-patch+json"


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "test.tiered.dev/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def watch(emulator: EmulatorProcess, path: str, **params: str) -> list[dict[str, Any]]:
    """The events of a watch that the server ends by itself (timeoutSeconds)."""
    query = "&".join(f"{k}={v}" for k, v in {"watch": "true", **params}.items())
    with urllib.request.urlopen(f"{emulator.url}{path}?{query}", timeout=30) as response:
        return [json.loads(line) for line in response if line.strip()]


@pytest.fixture
def widgets(emulator: EmulatorProcess) -> EmulatorProcess:
    """The emulator with the Widget CRD applied as an object (which registers the resource)."""
    emulator.kubectl("apply", "-f", str(FIXTURES / "widgets.crd.yaml"))
    return emulator


def test_kubectl_apply_get_patch_scale_delete(widgets: EmulatorProcess) -> None:
    k = widgets.kubectl
    manifest = json.dumps(widget("w1", color="red", replicas=1))
    assert "widget.test.tiered.dev/w1 created" in k("apply", "-f", "-", input=manifest).stdout
    assert "unchanged" in k("apply", "-f", "-", input=manifest).stdout
    unknown = k("apply", "-f", "-", input=json.dumps(widget("w2", colour="red")), check=False)
    assert 'strict decoding error: unknown field "spec.colour"' in unknown.stderr  # kubectl's default

    k("patch", "wdg", "w1", "--type=merge", "-p", '{"spec": {"color": "blue"}}')
    k("patch", "wdg", "w1", "--subresource=status", "--type=merge",
      "-p", '{"status": {"conditions": [{"type": "Ready", "status": "True"}]}}')
    k("scale", "widget", "w1", "--replicas=3")
    header, row = k("get", "widgets").stdout.splitlines()
    assert header.split() == ["NAME", "COLOR", "REPLICAS", "READY", "AGE"]
    assert row.split()[:4] == ["w1", "blue", "3", "True"]
    assert k("get", "wdg", "w1", "-o", "jsonpath={.metadata.generation}").stdout == "3"

    # kubectl apply patches with the last-applied annotation: it changes only what the manifest says.
    k("apply", "-f", "-", input=json.dumps(widget("w1", color="green", replicas=3)))
    got = json.loads(k("get", "wdg", "w1", "-o", "json").stdout)
    assert got["spec"] == {"color": "green", "replicas": 3}
    assert got["status"]["conditions"][0]["status"] == "True"

    k("delete", "widget", "w1")  # waits for the deletion, through a watch with a field selector
    assert "NotFound" in k("get", "widget", "w1", check=False).stderr


def test_kubectl_create_generators_and_namespace_deletion(emulator: EmulatorProcess) -> None:
    k = emulator.kubectl  # these kubectl commands send protobuf bodies
    k("create", "namespace", "demo")
    k("-n", "demo", "create", "configmap", "settings", "--from-literal=mode=fast")
    k("-n", "demo", "create", "secret", "generic", "token", "--from-literal=key=s3cret")
    assert k("-n", "demo", "get", "cm", "settings", "-o", "jsonpath={.data.mode}").stdout == "fast"
    assert k("-n", "demo", "get", "secret", "token", "-o", "jsonpath={.data.key}").stdout == "czNjcmV0"
    k("delete", "namespace", "demo")
    assert "No resources found" in k("get", "configmaps,secrets", "-A").stderr


def test_kubectl_apply_deployment_strategic_merge(emulator: EmulatorProcess) -> None:
    def deployment(image: str, env: list[dict[str, str]]) -> str:
        container = {"name": "app", "image": image, "ports": [{"containerPort": 80}], "env": env}
        return json.dumps({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                                    "template": {"metadata": {"labels": {"app": "web"}},
                                                 "spec": {"containers": [container]}}}})

    emulator.kubectl("apply", "-f", "-", input=deployment("web:1", [{"name": "A", "value": "1"}]))
    emulator.kubectl("apply", "-f", "-", input=deployment("web:2", [{"name": "B", "value": "2"}]))
    _, web = emulator.api("GET", "/apis/apps/v1/namespaces/default/deployments/web")
    container = web["spec"]["template"]["spec"]["containers"][0]
    assert container == {"name": "app", "image": "web:2", "ports": [{"containerPort": 80}],
                         "env": [{"name": "B", "value": "2"}]}
    emulator.kubectl("scale", "deployment", "web", "--replicas=2")
    assert emulator.api("GET", "/apis/apps/v1/namespaces/default/deployments/web")[1]["spec"]["replicas"] == 2


def test_finalizers_and_garbage_collection(widgets: EmulatorProcess) -> None:
    api = widgets.api
    _, owner = api("POST", WIDGETS, {**widget("owner"), "metadata": {"name": "owner", "finalizers": ["x/y"]}})
    uid = owner["metadata"]["uid"]
    ref = {"apiVersion": "test.tiered.dev/v1", "kind": "Widget", "name": "owner", "uid": uid}
    child = {"metadata": {"name": "child", "ownerReferences": [ref]}, "data": {}}
    assert api("POST", "/api/v1/namespaces/default/configmaps", child)[0] == 201

    status, deleting = api("DELETE", f"{WIDGETS}/owner")
    assert status == 200 and deleting["metadata"]["deletionTimestamp"]
    assert api("GET", f"{WIDGETS}/owner")[0] == 200  # held by its finalizer
    assert api("GET", "/api/v1/namespaces/default/configmaps/child")[0] == 200

    api("PATCH", f"{WIDGETS}/owner", {"metadata": {"finalizers": None}}, MERGE)
    assert api("GET", f"{WIDGETS}/owner")[0] == 404
    assert api("GET", "/api/v1/namespaces/default/configmaps/child")[0] == 404  # garbage-collected


def test_generation_and_status_subresource(widgets: EmulatorProcess) -> None:
    api = widgets.api
    status, created = api("POST", WIDGETS, {**widget("g", color="red"), "status": {"ignored": True}})
    assert status == 201 and created["metadata"]["generation"] == 1 and "status" not in created
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]

    _, obj = api("PATCH", f"{WIDGETS}/g/status", {"status": {"phase": "Up"}, "spec": {"color": "no"}}, MERGE)
    assert obj["status"] == {"phase": "Up"} and obj["spec"]["color"] == "red"
    assert obj["metadata"]["generation"] == 1

    labels_and_status = {"metadata": {"labels": {"a": "b"}}, "status": {"phase": "no"}}
    _, obj = api("PATCH", f"{WIDGETS}/g", labels_and_status, MERGE)
    assert obj["metadata"]["generation"] == 1 and obj["status"] == {"phase": "Up"}

    rv = obj["metadata"]["resourceVersion"]
    _, same = api("PATCH", f"{WIDGETS}/g", {"spec": {"color": "red"}}, MERGE)
    assert same["metadata"]["resourceVersion"] == rv  # a no-op write is no write

    _, obj = api("PUT", f"{WIDGETS}/g", {**obj, "spec": {"color": "blue"}})
    assert obj["metadata"]["generation"] == 2 and int(obj["metadata"]["resourceVersion"]) > int(rv)
    stale = {**obj, "metadata": {**obj["metadata"], "resourceVersion": rv}}
    assert api("PUT", f"{WIDGETS}/g", stale)[1]["reason"] == "Conflict"

    _, named = api("POST", WIDGETS, {**widget(""), "metadata": {"generateName": "gen-"}})
    assert named["metadata"]["name"].startswith("gen-") and named["metadata"]["namespace"] == "default"


def test_patch_errors(widgets: EmulatorProcess) -> None:
    api = widgets.api
    api("POST", WIDGETS, widget("j", color="red"))
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
           {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}]
    status, error = api("PATCH", f"{WIDGETS}/j", ops, "application/json-patch+json")
    assert (status, error["kind"], error["reason"]) == (422, "Status", "Invalid")

    _, current = api("GET", f"{WIDGETS}/j")
    ops[0]["value"] = current["metadata"]["resourceVersion"]
    status, obj = api("PATCH", f"{WIDGETS}/j", ops, "application/json-patch+json")
    assert status == 200 and obj["metadata"]["finalizers"] == ["x/y"]

    smp = api("PATCH", f"{WIDGETS}/j", {"spec": {}}, "application/strategic-merge-patch+json")
    assert smp[0] == 415  # custom resources take no strategic merge patch


def test_lists_selectors_and_discovery(widgets: EmulatorProcess) -> None:
    api = widgets.api
    for name, tier in (("a", "gold"), ("b", "silver"), ("c", None)):
        labels = {"tier": tier} if tier else {}
        api("POST", WIDGETS, {**widget(name), "metadata": {"name": name, "labels": labels}})

    def names(query: str) -> list[str]:
        status, body = api("GET", f"{WIDGETS}?{query}")
        assert status == 200 and body["kind"] == "WidgetList" and body["apiVersion"] == "test.tiered.dev/v1"
        return [item["metadata"]["name"] for item in body["items"]]

    assert names("labelSelector=tier%3Dgold") == ["a"]
    assert names("labelSelector=tier%21%3Dgold") == ["b", "c"]
    assert names("labelSelector=tier+in+(gold,silver)") == ["a", "b"]
    assert names("labelSelector=tier") == ["a", "b"]
    assert names("labelSelector=%21tier") == ["c"]
    assert names("fieldSelector=metadata.name%3Db") == ["b"]
    assert names("fieldSelector=metadata.namespace%21%3Ddefault") == []

    _, namespaces = api("GET", "/api/v1/namespaces")
    assert namespaces["kind"] == "NamespaceList" and int(namespaces["metadata"]["resourceVersion"]) > 0
    assert api("GET", "/api")[1]["versions"] == ["v1"]
    resources = {r["name"] for r in api("GET", "/apis/test.tiered.dev/v1")[1]["resources"]}
    assert resources == {"widgets", "widgets/status", "widgets/scale"}
    assert api("PUT", WIDGETS, widget("a"))[0] == 405

    # Deleting the CRD deletes its objects and unregisters the resource.
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.test.tiered.dev"
    assert api("DELETE", crd)[0] == 200
    assert api("GET", WIDGETS)[0] == 404


def test_watch_resume_selectors_and_timeout(tmp_path: Path) -> None:
    with running_emulator(tmp_path, ["--crds", str(FIXTURES), "--bookmark-interval", "0.2"]) as emulator:
        api = emulator.api
        _, first = api("POST", WIDGETS, {**widget("w"), "metadata": {"name": "w", "labels": {"a": "1"}}})
        api("PATCH", f"{WIDGETS}/w", {"spec": {"color": "blue"}}, MERGE)
        api("PATCH", f"{WIDGETS}/w", {"metadata": {"labels": {"a": "2"}}}, MERGE)
        api("DELETE", f"{WIDGETS}/w")

        # Without a resourceVersion: the current objects as ADDED (none left), then live events until timeout.
        assert [e["type"] for e in watch(emulator, WIDGETS, timeoutSeconds="1")] == []

        # Resumed after the creation: everything after it, in order, nothing before.
        after = first["metadata"]["resourceVersion"]
        events = watch(emulator, WIDGETS, resourceVersion=after, timeoutSeconds="1")
        assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED", "DELETED"]
        rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert rvs == sorted(rvs) and rvs[0] > int(after)

        # A selector watch sees an object leaving the selection as DELETED.
        events = watch(emulator, WIDGETS, resourceVersion=after, labelSelector="a%3D1", timeoutSeconds="1")
        assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]

        api("POST", WIDGETS, widget("x"))
        events = watch(emulator, WIDGETS, allowWatchBookmarks="true", timeoutSeconds="2")
        assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "x"
        bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
        assert bookmarks and bookmarks[0]["object"]["metadata"]["resourceVersion"]


def test_watch_started_during_writes_misses_nothing(widgets: EmulatorProcess) -> None:
    names = [f"w{i}" for i in range(150)]
    started = threading.Event()

    def write() -> None:
        for i, name in enumerate(names):
            widgets.api("POST", WIDGETS, widget(name))
            if i == 30:
                started.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert started.wait(30)
        seen: list[str] = []
        with urllib.request.urlopen(f"{widgets.url}{WIDGETS}?watch=true&timeoutSeconds=30", timeout=40) as stream:
            for line in stream:
                seen.append(json.loads(line)["object"]["metadata"]["name"])
                if len(seen) == len(names):
                    break
        assert sorted(seen) == sorted(names)  # each exactly once: as a current object or as a live event
    finally:
        writer.join()


def test_request_counters_and_faults(widgets: EmulatorProcess) -> None:
    widgets.kubectl("apply", "-f", "-", input=json.dumps(widget("c")))
    widgets.reset_requests()
    widgets.kubectl("get", "widgets")
    widgets.api("GET", f"{WIDGETS}/c")
    assert widgets.writes() == 0
    assert widgets.requests()["get", "widgets", ""] == 1 and widgets.requests()["list", "widgets", ""] == 1
    widgets.api("PATCH", f"{WIDGETS}/c/status", {"status": {"x": 1}}, MERGE)
    assert widgets.requests()["patch", "widgets", "status"] == 1 and widgets.writes() == 1

    # Injected failures: the next `count` matching requests fail (verb/resource/subresource: None = any).
    widgets.api("POST", "/_emulator/faults", {"verb": "patch", "resource": "widgets", "code": 503, "count": 2})
    assert "ServiceUnavailable" in widgets.kubectl("label", "wdg", "c", "a=b", check=False).stderr
    assert widgets.api("PATCH", f"{WIDGETS}/c", {}, MERGE)[0] == 503
    assert widgets.api("PATCH", f"{WIDGETS}/c", {}, MERGE)[0] == 200  # used up
    widgets.api("POST", "/_emulator/faults", {"code": 500, "count": 100})
    widgets.api("DELETE", "/_emulator/faults")
    assert widgets.api("GET", f"{WIDGETS}/c")[0] == 200


def test_crd_validation_rejects_invalid_objects(emulator: EmulatorProcess) -> None:
    tier = {"apiVersion": "tiered.dev/v1alpha1", "kind": "InferenceTier", "metadata": {"name": "bad"},
            "spec": {"model": {"id": "m"}, "replicas": {"min": 3, "max": 1}}}
    status, error = emulator.api("POST", "/apis/tiered.dev/v1alpha1/namespaces/default/inferencetiers", tier)
    assert (status, error["reason"]) == (422, "Invalid")
    assert error["message"].startswith('InferenceTier.tiered.dev "bad" is invalid: ')
    assert error["details"]["causes"]


def test_a_crd_kube_apiserver_cannot_decode_is_refused(emulator: EmulatorProcess, tmp_path: Path) -> None:
    crd = inference_tier_crd()
    crd["metadata"]["name"] = "gadgets.example.com"
    crd["spec"].update(group="example.com", names={"plural": "gadgets", "singular": "gadget", "kind": "Gadget",
                                                   "listKind": "GadgetList"})
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
        "type": "object", "properties": {"size": {"type": "number", "exclusiveMinimum": 0}}}
    path = tmp_path / "gadgets.yaml"
    path.write_text(json.dumps(crd))
    result = emulator.kubectl("apply", "--validate=false", "-f", str(path), check=False)
    assert result.returncode != 0
    assert "cannot unmarshal number into Go struct field JSONSchemaProps" in result.stderr
    assert "exclusiveMinimum of type bool" in result.stderr


async def test_validator_hook_and_rayservice_fallback_in_process() -> None:
    import aiohttp
    import kmock
    from tiered_devstack.emulator import Emulator, load_crds

    def validate(crd: dict[str, Any], new: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
        return [] if new["spec"].get("color") == "blue" else ["spec.color: Unsupported value: only blue"]

    emulator = Emulator(crds=load_crds([FIXTURES]), validator=validate)
    async with emulator, kmock.Server(emulator) as server, aiohttp.ClientSession(server.url) as session:
        async with session.post(WIDGETS, json=widget("v", color="red")) as response:
            assert response.status == 422
            assert "only blue" in (await response.json())["message"]
        async with session.post(WIDGETS, json=widget("v", color="blue")) as response:
            assert response.status == 201
        async with session.get("/apis/ray.io/v1") as response:  # declared minimally without KubeRay's CRD
            assert [r["name"] for r in (await response.json())["resources"]] == ["rayservices", "rayservices/status"]


OPERATOR = '''
import kopf
from kubernetes_asyncio import client, config


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
    settings.watching.server_timeout = 10
    settings.posting.enabled = False
    await config.load_kube_config()
    memo.api = client.ApiClient()


@kopf.on.create("test.tiered.dev", "widgets")
@kopf.on.update("test.tiered.dev", "widgets")
async def reconcile(spec, name, namespace, memo, **_):
    child = {"metadata": {"name": f"{name}-child"}, "data": {"color": spec.get("color", "")}}
    kopf.adopt(child)
    api = client.CoreV1Api(memo.api)
    try:
        await api.create_namespaced_config_map(namespace, child)
    except client.ApiException as error:
        if error.status != 409:
            raise
        await api.patch_namespaced_config_map(f"{name}-child", namespace, child)
    return {"child": f"{name}-child"}


@kopf.on.delete("test.tiered.dev", "widgets")
async def delete(name, **_):
    pass  # only here so that kopf puts a finalizer on each widget
'''


def test_kopf_operator_smoke(widgets: EmulatorProcess, tmp_path: Path) -> None:
    operator = tmp_path / "operator.py"
    operator.write_text(textwrap.dedent(OPERATOR))
    log = tmp_path / "kopf.log"
    with running_kopf(widgets, ["--verbose", str(operator)], log):
        k, api = widgets.kubectl, widgets.api
        k("apply", "-f", "-", input=json.dumps(widget("smoke", color="red")))
        child_path = "/api/v1/namespaces/default/configmaps/smoke-child"

        def child_color() -> str | None:
            status, child = api("GET", child_path)
            return child["data"]["color"] if status == 200 else None

        assert eventually(child_color, what="the child ConfigMap") == "red"
        _, child = api("GET", child_path)
        _, owner = api("GET", f"{WIDGETS}/smoke")
        assert child["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
        assert owner["metadata"]["finalizers"]

        k("patch", "widget", "smoke", "--type=merge", "-p", '{"spec": {"color": "blue"}}')
        eventually(lambda: child_color() == "blue", what="the child to follow the update")

        k("delete", "widget", "smoke", "--timeout=30s")  # kopf removes its finalizer, then it is gone
        eventually(lambda: api("GET", child_path)[0] == 404, what="garbage collection of the child")
        assert "Traceback" not in log.read_text()
