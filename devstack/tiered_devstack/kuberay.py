"""A local stand-in for KubeRay: RayServices in the emulator become applications of one local Ray Serve.

KubeRay gives every RayService its own RayCluster and Service; here all tiers share one Ray (`ray_serve`),
so each RayService's applications are renamed `<namespace>--<name>--<app>` and served under the route
prefix `/<namespace>/<name>` (plus the app's own prefix if it is not `/`): `tier_route()` is where the
stack's router finds a tier. On every pass the stand-in lists the RayServices, PUTs the whole Serve config
when it changed (a new RayService starts, a changed one updates in place the way KubeRay's in-place Serve
update does, a deleted one goes), reads Serve's status back and writes a KubeRay-shaped status into each
RayService (`activeServiceStatus.applicationStatuses` with deployment statuses, a `Ready` condition with
`lastTransitionTime`, `observedGeneration`), so the operator's readiness logic runs unchanged.

Applications this machine cannot run (Ray Serve LLM's vLLM engine needs `ray[llm]` and a GPU) are never
deployed: their application status says DEPLOY_FAILED with `NOT_RUNNABLE` in the message, which the
operator shows on the tier, instead of pretending they run.

Owns: that mapping (pure functions `placement`, `serve_applications`, `rayservice_status`) and the polling
thread. Must not: touch the RayService spec, the RayCluster config (there is no cluster), or other kinds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from tiered_devstack.cluster import MERGE, EmulatorProcess
from tiered_devstack.ray_serve import LocalRay

log = logging.getLogger("tiered.devstack.kuberay")

RAYSERVICES = "/apis/ray.io/v1/rayservices"
NOT_RUNNABLE_IMPORT_PREFIXES = ("ray.serve.llm:",)
NOT_RUNNABLE = ("not runnable on this machine: the local KubeRay stand-in has no GPU and no ray[llm] (vLLM); "
                "this application runs on a real cluster with KubeRay")
READY_REASON = "NonZeroServeEndpoints"  # KubeRay's reasons for the Ready condition
NOT_READY_REASON = "Initializing"
NOT_RUNNABLE_REASON = "NotRunnableHere"  # the stand-in's own: KubeRay has no such case
WAITING = "DEPLOYING"


def tier_route(namespace: str, name: str) -> str:
    """Route prefix of a RayService's (`/`-prefixed) application in the shared Serve."""
    return f"/{namespace}/{name}"


def serve_name(namespace: str, name: str, app: str) -> str:
    return f"{namespace}--{name}--{app}"


@dataclass(frozen=True)
class Placement:
    """One RayService as the shared Serve sees it."""

    namespace: str
    name: str
    generation: int
    applications: tuple[dict[str, Any], ...] = ()  # renamed and re-prefixed, ready to deploy
    app_names: Mapping[str, str] = field(default_factory=dict)  # the RayService's app name → Serve name
    not_runnable: Mapping[str, str] = field(default_factory=dict)  # app name → why
    invalid: str | None = None  # serveConfigV2 missing or unreadable


def placement(rayservice: Mapping[str, Any]) -> Placement:
    meta = rayservice.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name"))
    generation = int(meta.get("generation") or 1)
    try:
        config = yaml.safe_load((rayservice.get("spec") or {}).get("serveConfigV2") or "")
        apps = list((config or {}).get("applications") or [])
    except yaml.YAMLError as error:
        return Placement(namespace, name, generation, invalid=f"serveConfigV2 is not YAML: {error}")
    if not apps:
        return Placement(namespace, name, generation, invalid="serveConfigV2 has no applications")
    placed, names, not_runnable = [], {}, {}
    for app in apps:
        app_name = str(app.get("name") or "default")
        if str(app.get("import_path") or "").startswith(NOT_RUNNABLE_IMPORT_PREFIXES):
            not_runnable[app_name] = f"{NOT_RUNNABLE} ({app.get('import_path')})"
            continue
        prefix = str(app.get("route_prefix") or "/")
        route = tier_route(namespace, name) + ("" if prefix == "/" else prefix)
        names[app_name] = serve_name(namespace, name, app_name)
        placed.append({**app, "name": names[app_name], "route_prefix": route})
    return Placement(namespace, name, generation, tuple(placed), names, not_runnable)


def serve_applications(placements: Sequence[Placement]) -> list[dict[str, Any]]:
    """The whole Serve config's applications, in a stable order."""
    apps = [app for p in placements for app in p.applications]
    return sorted(apps, key=lambda app: str(app["name"]))


def _app_status(serve_app: Mapping[str, Any] | None, deploy_error: str | None) -> dict[str, Any]:
    if serve_app is None:
        if deploy_error:
            return {"status": "DEPLOY_FAILED", "message": deploy_error}
        return {"status": WAITING, "message": "submitted to the local Ray Serve"}
    deployments = {
        name: {"status": str(d.get("status") or ""), "message": str(d.get("message") or "")}
        for name, d in sorted((serve_app.get("deployments") or {}).items())
    }
    status: dict[str, Any] = {"status": str(serve_app.get("status") or WAITING),
                              "message": str(serve_app.get("message") or "")}
    if deployments:
        status["serveDeploymentStatuses"] = deployments
    return status


def _serving(serve_app: Mapping[str, Any] | None) -> bool:
    """Every deployment of the app has a RUNNING replica (it answers, e.g. during an in-place update)."""
    deployments = list(((serve_app or {}).get("deployments") or {}).values())
    return bool(deployments) and all(
        any(replica.get("state") == "RUNNING" for replica in d.get("replicas") or ()) for d in deployments)


def rayservice_status(
    placed: Placement, serve_apps: Mapping[str, Mapping[str, Any]], previous: Mapping[str, Any] | None,
    now: datetime, deploy_error: str | None = None,
) -> dict[str, Any]:
    """The status KubeRay would write, from what Serve reports; `lastTransitionTime` moves only on a flip."""
    apps: dict[str, Any] = {}
    for app_name, message in placed.not_runnable.items():
        apps[app_name] = {"status": "DEPLOY_FAILED", "message": message}
    for app_name, serve_app_name in placed.app_names.items():
        apps[app_name] = _app_status(serve_apps.get(serve_app_name), deploy_error)
    if placed.invalid:
        ready, reason, message = False, NOT_READY_REASON, placed.invalid
    elif placed.not_runnable:
        ready, reason, message = False, NOT_RUNNABLE_REASON, "; ".join(sorted(placed.not_runnable.values()))
    else:
        waiting = sorted(name for name, app in apps.items() if app["status"] != "RUNNING")
        was_ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (previous or {}).get("conditions") or ())
        # Like KubeRay, once serving, the RayService stays Ready while it has serve endpoints: an in-place
        # update (a replica count or args change) shows DEPLOYING in the app status, not a Ready flip.
        updating = was_ready and all(
            apps[name]["status"] not in ("DEPLOY_FAILED", "UNHEALTHY")
            and _serving(serve_apps.get(placed.app_names[name])) for name in waiting)
        ready = not waiting or updating
        reason = READY_REASON if ready else NOT_READY_REASON
        waits = ", ".join(f"{n} ({apps[n]['status']})" for n in waiting)
        message = ("Serve applications running on the local Ray" if not waiting else
                   f"serving while updating {waits}" if ready else f"waiting for {waits}")
    old = next((c for c in (previous or {}).get("conditions") or () if c.get("type") == "Ready"), None)
    flag = "True" if ready else "False"
    since = old["lastTransitionTime"] if old and old.get("status") == flag and old.get("lastTransitionTime") \
        else now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "observedGeneration": placed.generation,
        "numServeEndpoints": 1 if ready else 0,
        "activeServiceStatus": {"rayClusterName": f"{placed.name}-local", "applicationStatuses": apps},
        "conditions": [{"type": "Ready", "status": flag, "reason": reason, "message": message,
                        "lastTransitionTime": since, "observedGeneration": placed.generation}],
    }


def _status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch from `old` to `new`: application names that went away are nulled."""
    old_apps = ((old or {}).get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    patch: dict[str, Any] = json.loads(json.dumps(new))
    for gone in set(old_apps) - set(new["activeServiceStatus"]["applicationStatuses"]):
        patch["activeServiceStatus"]["applicationStatuses"][gone] = None
    return patch


def _same_status(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    return all((old or {}).get(key) == value for key, value in new.items())


class KubeRayStandIn:
    """Polls the emulator's RayServices every `interval` seconds and keeps the local Serve in step."""

    def __init__(self, emulator: EmulatorProcess, ray: LocalRay, interval: float = 0.5) -> None:
        self.emulator, self.ray, self.interval = emulator, ray, interval
        self.deployed: list[dict[str, Any]] | None = None
        self.deploy_error: str | None = None
        self.passes = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kuberay-stand-in", daemon=True)

    def sync_once(self) -> None:
        status, body = self.emulator.api("GET", RAYSERVICES)
        if status != 200:
            raise RuntimeError(f"listing RayServices: {status} {body}")
        items = list(body.get("items") or [])
        placements = [placement(item) for item in items]
        wanted = serve_applications(placements)
        if wanted != self.deployed:
            try:
                self.ray.deploy(wanted)
                self.deploy_error = None
            except Exception as error:
                self.deploy_error = f"the local Ray Serve refused the config: {error}"
            self.deployed = wanted
        serve_apps = self.ray.applications()
        now = datetime.now(UTC)
        for item, placed in zip(items, placements, strict=True):
            old = item.get("status")
            new = rayservice_status(placed, serve_apps, old, now, self.deploy_error)
            if not _same_status(old, new):
                path = f"/apis/ray.io/v1/namespaces/{placed.namespace}/rayservices/{placed.name}/status"
                self.emulator.api("PATCH", path, {"status": _status_patch(old, new)}, content_type=MERGE)
        self.passes += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
                self.last_error = None
            except Exception as error:
                if repr(error) != self.last_error:
                    log.warning("KubeRay stand-in pass failed: %r", error)
                self.last_error = repr(error)
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@contextlib.contextmanager
def running_kuberay(emulator: EmulatorProcess, ray: LocalRay, interval: float = 0.5) -> Iterator[KubeRayStandIn]:
    stand_in = KubeRayStandIn(emulator, ray, interval)
    stand_in.start()
    try:
        yield stand_in
    finally:
        stand_in.stop()
