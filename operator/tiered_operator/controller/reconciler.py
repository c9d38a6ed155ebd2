"""The operator's one reconcile loop: an in-memory store fed by watches, a work queue, one status writer.

kopf watches InferenceTiers, RoutingPolicies and RayServices and hands every event to `Controller.observe`,
which updates the store and queues the object it concerns (a RayService queues its owner tier; a tier
queues the policies of its namespace). Workers take one key at a time — never two workers on one object —
and run the level-based `reconcile_tier` / `reconcile_policy`: read the store, ask `core.reconcile` what the
child and the whole status should be, write the child if it differs, then `write_status` patches the keys
of the typed status that changed and posts the Events its condition flips deserve. Nothing else writes
status; the autoscaler records its decisions here and queues the objects.

Errors carry their retry intent: a spec that cannot be served, or a child the API server refuses (4xx), is
`Invalid` with the server's message and one Warning Event, and is not retried until the object changes;
an unexpected exception is `Degraded` with its message, one Warning Event, and is retried with backoff
(capped); a transient API error (5xx, timeouts, throttling) is retried with backoff and logged.
A periodic resync re-queues everything (readiness, drift) at no API cost: the store is the watch cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from tiered_operator.api import conditions as c
from tiered_operator.api.model import API_VERSION
from tiered_operator.api.status import PolicyStatus, TierStatus, parse_status, status_patch, timestamp
from tiered_operator.controller.metrics import OperatorMetrics
from tiered_operator.core.burst import BurstState
from tiered_operator.core.reconcile import (
    AutoscaleRecord,
    BurstRecord,
    ChildAction,
    DesiredTier,
    Event,
    Unservable,
    child_action,
    child_events,
    desired_tier,
    failed_status,
    object_action,
    parse_policy,
    parse_tiers,
    policy_status,
    status_events,
    tier_status,
)
from tiered_operator.core.router_config import RouterConfigRejected, router_config
from tiered_operator.core.router_objects import DEFAULT_ROUTER_IMAGE, render_router_objects, router_endpoint
from tiered_operator.core.scaling import ScalingState

log = logging.getLogger("tiered.operator")

Key = tuple[str, str, str]  # (kind plural, namespace, name)
TIERS, POLICIES, RAYSERVICES = "inferencetiers", "routingpolicies", "rayservices"
# What runs a policy's router, by kind: the plural the API serves it under.
ROUTER_KINDS = {"ServiceAccount": "serviceaccounts", "ConfigMap": "configmaps", "Deployment": "deployments",
                "Service": "services", "HTTPRoute": "httproutes", "Role": "roles", "RoleBinding": "rolebindings"}
STATUS_MODELS: dict[str, type[TierStatus] | type[PolicyStatus]] = {TIERS: TierStatus, POLICIES: PolicyStatus}
MAX_BACKOFF_SECONDS = 300.0
# An unexpected error this many times in a row on one generation: stop until the object changes.
MAX_ATTEMPTS = 8


class Writer(Protocol):
    async def create(self, plural: str, obj: Mapping[str, Any]) -> dict[str, Any] | None: ...

    async def patch(self, plural: str, api_version: str, namespace: str, name: str, patch: Mapping[str, Any],
                    *, status: bool = False) -> dict[str, Any]: ...

    async def event(self, involved: Mapping[str, Any], type: str, reason: str, message: str, now: str) -> None: ...


@dataclass
class TierLoop:
    """The autoscaler's memory of one tier (by uid)."""

    scaling: ScalingState = field(default_factory=ScalingState)
    next_tick: float = 0.0
    failures: int = 0
    record: AutoscaleRecord | None = None


@dataclass
class Retry:
    failures: int = 0
    not_before: float = 0.0
    # Set when retrying cannot help: the object's generation it failed on. A new generation clears it.
    given_up_at_generation: int | None = None


class Controller:
    def __init__(self, writer: Writer, *, rejected: Callable[[BaseException], str | None],
                 transient: Callable[[BaseException], bool], workers: int = 8,
                 resync_seconds: float = 30.0, router_image: str = DEFAULT_ROUTER_IMAGE,
                 metrics: OperatorMetrics | None = None, clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.rejected = rejected  # the server's message when a write was refused for good, else None
        self.transient = transient  # whether an error may pass by itself (5xx, timeouts, throttling)
        self.workers = workers
        self.resync_seconds = resync_seconds
        self.router_image = router_image  # for policies that name none
        self.clock = clock
        self.objects: dict[Key, dict[str, Any]] = {}
        self.loops: dict[str, TierLoop] = {}  # by tier uid
        # By (namespace, policy): the burst evidence, and the last verdict that flipped (None: none yet).
        self.bursts: dict[tuple[str, str], tuple[BurstState, BurstRecord | None]] = {}
        self.retries: dict[Key, Retry] = {}
        self._rendered: dict[str, tuple[tuple[Any, ...], DesiredTier | Unservable]] = {}  # by tier uid
        self.metrics = metrics or OperatorMetrics()
        # Only the leader reconciles (set at once when there is no election); followers keep the store warm.
        self.leading = asyncio.Event()
        self.tiers_added = asyncio.Event()  # wakes the autoscaler for a new tier's first tick
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()

    # ---- store ------------------------------------------------------------------------------------

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((plural, namespace, name))

    def of_kind(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [body for (kind, ns, _), body in self.objects.items()
                if kind == plural and (namespace is None or ns == namespace)]

    def observe(self, plural: str, event_type: str, body: Mapping[str, Any]) -> None:
        """A watch event: keep the newest body, queue what it concerns."""
        meta = body["metadata"]
        before = self.objects.get((plural, meta["namespace"], meta["name"]))
        if event_type != "DELETED" and before is not None and \
                before["metadata"].get("resourceVersion") == meta.get("resourceVersion"):
            return  # our own write coming back: `_store` saw it already
        self._store(plural, event_type, body, own_write=False)

    def _store(self, plural: str, event_type: str, body: Mapping[str, Any], *, own_write: bool) -> None:
        """Keep `body` (or drop it), and queue the objects the change concerns."""
        meta = body["metadata"]
        key = (plural, meta["namespace"], meta["name"])
        before = self.objects.get(key)
        if event_type == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = dict(body)
        if plural not in (TIERS, POLICIES):  # a child: its owner decides (unless the owner just wrote it)
            owner_kind, owner_plural = ("InferenceTier", TIERS) if plural == RAYSERVICES else \
                ("RoutingPolicy", POLICIES)
            owner = next((ref["name"] for ref in meta.get("ownerReferences") or []
                          if ref.get("kind") == owner_kind), None)
            if owner and not own_write:
                self.enqueue((owner_plural, meta["namespace"], owner))
            return
        if plural == TIERS:
            if before is None and event_type != "DELETED":
                self.tiers_added.set()
            if event_type == "DELETED":
                self.loops.pop(meta.get("uid", ""), None)
                self._rendered.pop(meta.get("uid", ""), None)
            if before is None or event_type == "DELETED" or _status_summary(before) != _status_summary(body):
                for policy in self.of_kind(POLICIES, meta["namespace"]):
                    self.enqueue((POLICIES, meta["namespace"], policy["metadata"]["name"]))
        if event_type == "DELETED":
            self.retries.pop(key, None)
            return
        # Status-only changes (ours among them) need no pass of the object itself.
        if not own_write and (before is None or _generation(before) != _generation(body) or
                              before["metadata"].get("deletionTimestamp") != meta.get("deletionTimestamp")):
            self.enqueue(key)

    # ---- queue ------------------------------------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        if key in self._active:
            self._dirty.add(key)  # run again once the running pass ends: never two passes at once
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def lead(self, leading: bool) -> None:
        """Start or stop reconciling (leader election); a new leader first queues everything."""
        self.metrics.leader.set(1 if leading else 0)
        if leading:
            self.leading.set()
            self._enqueue_all()
        else:
            self.leading.clear()

    def _enqueue_all(self) -> None:
        for key in list(self.objects):
            if key[0] in (TIERS, POLICIES):
                self.enqueue(key)

    async def run(self) -> None:
        """Workers plus the resync and retry scheduler; runs until cancelled."""
        async with asyncio.TaskGroup() as group:
            for _ in range(self.workers):
                group.create_task(self._work())
            group.create_task(self._schedule())

    async def _schedule(self) -> None:
        next_resync = self.clock() + self.resync_seconds
        while True:
            await asyncio.sleep(min(1.0, self.resync_seconds))
            self.metrics.queue_depth.set(self._queue.qsize())
            if not self.leading.is_set():
                continue
            now = self.clock()
            for key, retry in list(self.retries.items()):
                if retry.given_up_at_generation is None and retry.failures and retry.not_before <= now:
                    self.enqueue(key)
            if now >= next_resync:
                next_resync = now + self.resync_seconds
                self._enqueue_all()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            await self.leading.wait()
            self._queued.discard(key)
            self._active.add(key)
            try:
                await self.reconcile(key)
            except Exception:  # reconcile reports its own errors; this is a bug in that reporting
                log.exception("%s %s/%s: unreported failure", *key)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.enqueue(key)

    # ---- reconcile --------------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        """One pass over one object, with its errors turned into conditions and retries."""
        body = self.objects.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        retry = self.retries.get(key)
        generation = _generation(body)
        if retry is not None and retry.given_up_at_generation is not None:
            if retry.given_up_at_generation == generation:
                return  # the same spec failed for good: wait for a change
            self.retries.pop(key)
        if retry is not None and retry.failures and self.clock() < retry.not_before:
            return  # backing off; the scheduler queues it when due
        self.metrics.reconciles.labels(key[0]).inc()
        passes: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            TIERS: self.reconcile_tier, POLICIES: self.reconcile_policy}
        try:
            await passes[key[0]](body)
        except Unservable as error:  # retrying cannot help: wait for the object to change
            self.retries.setdefault(key, Retry()).given_up_at_generation = _generation(body)
            await self._report(key, body, error.reason, str(error), invalid=True)
        except Exception as error:
            if self.transient(error):
                self._failed(key, body, give_up=False)
                log.warning("%s %s/%s: transient error, retrying: %s", key[0], key[1], key[2], error)
                return
            message = self.rejected(error)
            if message is not None:  # the API server refused our own status write: a bug, not the user's
                log.error("%s %s/%s: status refused by the API server: %s", key[0], key[1], key[2], message)
                self._failed(key, body, give_up=True)
                return
            log.exception("%s %s/%s: reconcile failed", key[0], key[1], key[2])
            self._failed(key, body, give_up=False)
            await self._report(key, body, c.RECONCILE_FAILED, f"reconcile failed: {error}", invalid=False)
        else:
            self.retries.pop(key, None)

    def _failed(self, key: Key, body: Mapping[str, Any], *, give_up: bool) -> None:
        retry = self.retries.setdefault(key, Retry())
        retry.failures += 1
        retry.not_before = self.clock() + min(MAX_BACKOFF_SECONDS, 2.0 ** min(retry.failures - 1, 9))
        if give_up or retry.failures >= MAX_ATTEMPTS:
            retry.given_up_at_generation = _generation(body)
        self.metrics.errors.labels(key[0], "no" if retry.given_up_at_generation is not None else "yes").inc()

    async def _report(self, key: Key, body: dict[str, Any], reason: str, message: str, *, invalid: bool) -> None:
        """A failed pass in status: Invalid (fix the spec) or Degraded (an error), with one Event."""
        existing = parse_status(STATUS_MODELS[key[0]], body.get("status"))
        status = failed_status(existing, _generation(body), reason, message, self._now(), invalid=invalid)
        try:
            await self.write_status(key[0], body, status)
        except Exception as error:  # the API is unwell too; a retry or the next change says it again
            log.warning("%s %s/%s: cannot report the failure: %s", key[0], key[1], key[2], error)

    async def reconcile_tier(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        existing = parse_status(TierStatus, body.get("status"))
        loop = self.loops.get(meta.get("uid", ""))
        record = loop.record if loop is not None else None
        now = self._now()
        desired = self._desired_tier(body, record)
        actual = self.get(RAYSERVICES, meta["namespace"], meta["name"])
        action = child_action(desired.child, actual)
        actual = await self._write_child(RAYSERVICES, desired.child.manifest, action) or actual
        if action.kind == "create" and actual is None:
            action = ChildAction("none")  # it exists already (409): the watch brings it, the next pass compares
        status = tier_status(desired, action, actual, existing, record, now)
        autoscaled = desired.tier.spec.autoscaling.enabled
        await self.write_status(TIERS, body, status, child_events(desired, action, autoscaled=autoscaled))

    def _desired_tier(self, body: dict[str, Any], record: AutoscaleRecord | None) -> DesiredTier:
        """`desired_tier`, computed once per generation and replica count (a resync re-renders nothing)."""
        meta = body["metadata"]
        replicas = record.replicas if record is not None else None
        inputs = (meta.get("generation"), replicas, ((body.get("status") or {}).get("replicas") or {}).get("desired"))
        cached = self._rendered.get(meta.get("uid", ""))
        if cached is not None and cached[0] == inputs:
            if isinstance(cached[1], Unservable):
                raise cached[1]
            return cached[1]
        try:
            desired: DesiredTier | Unservable = desired_tier(body, replicas)
        except Unservable as error:
            desired = error
        self._rendered[meta.get("uid", "")] = (inputs, desired)
        if isinstance(desired, Unservable):
            raise desired
        return desired

    async def _write_child(self, plural: str, manifest: dict[str, Any], action: ChildAction
                           ) -> dict[str, Any] | None:
        meta = manifest["metadata"]
        if action.kind == "none":
            return None
        self.metrics.writes.labels(plural).inc()
        try:
            if action.kind == "create":
                written = await self.writer.create(plural, manifest)
            else:
                written = await self.writer.patch(plural, manifest["apiVersion"], meta["namespace"], meta["name"],
                                                  action.patch)
        except Exception as error:
            if (message := self.rejected(error)) is None:
                raise
            raise Unservable(c.CHILD_REJECTED,
                             f"the API server refused {manifest['kind']} {meta['name']}: {message}") from None
        if written is not None:
            self._store(plural, "MODIFIED", written, own_write=True)
        return written

    async def reconcile_policy(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        existing = parse_status(PolicyStatus, body.get("status"))
        policy = parse_policy(body)
        bodies = self.of_kind(TIERS, meta["namespace"])
        burst = self.bursts.get((meta["namespace"], meta["name"]))
        bursting = burst[0].active if burst else bool(((body.get("status") or {}).get("burst") or {}).get("active"))
        try:
            config, _ = router_config(policy, parse_tiers(bodies), bursting=bursting)
        except RouterConfigRejected as error:
            raise Unservable(c.ROUTER_REJECTED, str(error)) from None
        events = []
        for child in render_router_objects(policy, config, default_image=self.router_image):
            plural = ROUTER_KINDS[child.kind]
            action = object_action(child, self.get(plural, meta["namespace"], child.name))
            await self._write_child(plural, child.body, action)
            if action.kind != "none":
                verb = "Created" if action.kind == "create" else "Updated"
                why = f" ({action.why})" if action.why else ""
                events.append(Event("Normal", f"Router{child.kind}{verb}", f"{verb} {child.kind} {child.name}{why}"))
        tiers = {tier["metadata"]["name"]: parse_status(TierStatus, tier.get("status")) for tier in bodies}
        status = policy_status(policy, tiers, existing, burst[1] if burst else None, self._now(),
                               endpoint=router_endpoint(policy))
        await self.write_status(POLICIES, body, status, events)

    # ---- the one status writer ----------------------------------------------------------------------

    async def write_status(self, plural: str, body: dict[str, Any], status: TierStatus | PolicyStatus,
                           events: list[Event] | None = None) -> None:
        """Patch the keys of `status` that differ from the object's, then post the Events of its flips."""
        meta = body["metadata"]
        raw = body.get("status") or {}
        patch = status_patch(raw, status)
        before = parse_status(STATUS_MODELS[plural], raw).conditions
        all_events = [*(events or ()), *status_events(before, status.conditions)]
        if patch:
            self.metrics.writes.labels(f"{plural}/status").inc()
            written = await self.writer.patch(plural, API_VERSION, meta["namespace"], meta["name"],
                                              {"status": patch}, status=True)
            # The watch brings this too; until then, the next pass must not start from the old status.
            if written and (plural, meta["namespace"], meta["name"]) in self.objects:
                self._store(plural, "MODIFIED", written, own_write=True)
        for event in all_events:
            await self.post_event(body, event)

    async def post_event(self, body: Mapping[str, Any], event: Event) -> None:
        level = logging.WARNING if event.type == "Warning" else logging.INFO
        meta = body["metadata"]
        log.log(level, "%s %s/%s: %s: %s", body.get("kind"), meta["namespace"], meta["name"], event.reason,
                event.message)
        try:
            await self.writer.event(body, event.type, event.reason, event.message, timestamp(self._now()))
        except Exception as error:  # an Event is best effort: never fail a reconcile for it
            log.warning("cannot post Event %s: %s", event.reason, error)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)


def _generation(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)


def _status_summary(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a policy reads of a tier: readiness and endpoint."""
    status = body.get("status") or {}
    ready = next((cond.get("status") for cond in status.get("conditions") or () if cond.get("type") == c.READY),
                 None)
    return ready, status.get("endpoint")

