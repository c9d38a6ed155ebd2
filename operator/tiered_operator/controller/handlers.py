"""kopf wiring: every decorator of the operator lives here, each delegating to the controller in a line.

Run with `tiered operator`. kopf watches tiers, policies and their children and hands each event to
`Controller.observe`; the controller's workers reconcile from that in-memory store, so a resync costs no
API reads, and a reconcile that finds nothing to change writes nothing. There are no kopf timers or change
handlers: they would add a finalizer and kopf's own bookkeeping writes to every tier.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

import kopf
from prometheus_client import start_http_server

from tiered_operator.api.model import GROUP, VERSION
from tiered_operator.controller.autoscale import autoscale_loop
from tiered_operator.controller.kube import Kube, rejected, transient
from tiered_operator.controller.leader import LeaderElection
from tiered_operator.controller.metrics import OperatorMetrics
from tiered_operator.controller.reconciler import POLICIES, RAYSERVICES, TIERS, Controller
from tiered_operator.controller.signals import PrometheusSignalSource
from tiered_operator.core.router_objects import DEFAULT_ROUTER_IMAGE

MANAGED = {"app.kubernetes.io/managed-by": "tiered"}
# How often every object is re-reconciled even without events (readiness, drift). Seconds.
RESYNC_SECONDS = float(os.environ.get("TIERED_RESYNC_SECONDS", "30"))
# How often autoscaled tiers are checked for being due (each ticks at its autoscaling.intervalSeconds).
AUTOSCALE_TICK_SECONDS = float(os.environ.get("TIERED_AUTOSCALE_TICK_SECONDS", "5"))
WORKERS = int(os.environ.get("TIERED_WORKERS", "8"))
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _lease_namespace() -> str:
    """Where the Lease lives: the operator's own namespace (the chart sets POD_NAMESPACE)."""
    if namespace := os.environ.get("POD_NAMESPACE"):
        return namespace
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False  # the controller posts its own Events (kopf's poster is per object)
    # kopf logs every event handled at INFO: at hundreds of objects that is most of the operator's CPU.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.batch_window = 0.01  # hand each event over almost at once; the queue merges bursts
    memo.kube = await Kube.connect()
    router_image = os.environ.get("TIERED_ROUTER_IMAGE") or DEFAULT_ROUTER_IMAGE
    metrics = OperatorMetrics()
    if port := os.environ.get("TIERED_METRICS_PORT"):
        start_http_server(int(port), addr=os.environ.get("TIERED_METRICS_HOST", "127.0.0.1"),
                          registry=metrics.registry)
    memo.controller = Controller(memo.kube, rejected=rejected, transient=transient, workers=WORKERS,
                                 resync_seconds=RESYNC_SECONDS, router_image=router_image, metrics=metrics)
    prometheus = os.environ.get("TIERED_PROMETHEUS_URL")
    signals = PrometheusSignalSource(prometheus) if prometheus else None
    memo.tasks = [asyncio.create_task(memo.controller.run(), name="reconcile workers"),
                  asyncio.create_task(autoscale_loop(memo.controller, signals, AUTOSCALE_TICK_SECONDS),
                                      name="autoscaler")]
    memo.election = None
    if os.environ.get("TIERED_LEADER_ELECTION", "true").lower() in ("1", "true", "yes"):
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        memo.election = LeaderElection(memo.kube, identity, _lease_namespace(),
                                       name=os.environ.get("TIERED_LEASE_NAME", "tiered-operator"),
                                       lease_seconds=float(os.environ.get("TIERED_LEASE_SECONDS", "15")))
        memo.election_task = asyncio.create_task(memo.election.run(memo.controller.lead), name="leader election")
        memo.tasks.append(memo.election_task)
    else:
        memo.controller.lead(True)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if memo.election is not None:
        memo.election_task.cancel()
        try:
            await memo.election.release()
        except Exception as error:  # it expires by itself
            logging.getLogger("tiered.leader").warning("cannot release the lease: %s", error)
    for task in memo.tasks:
        task.cancel()
    await asyncio.gather(*memo.tasks, return_exceptions=True)
    await memo.kube.close()


@kopf.on.event(GROUP, VERSION, TIERS)
def tier_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.observe(TIERS, type or "ADDED", body)


@kopf.on.event(GROUP, VERSION, POLICIES)
def policy_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.observe(POLICIES, type or "ADDED", body)


@kopf.on.event("ray.io", "v1", RAYSERVICES, labels=MANAGED)
def rayservice_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """KubeRay reported (readiness, health) or someone edited or deleted a child: its tier is queued."""
    memo.controller.observe(RAYSERVICES, type or "ADDED", body)


def _router_child_event(plural: str, resource: str | None = None) -> None:
    @kopf.on.event(resource or plural, labels=MANAGED, id=f"{plural}_event")
    def router_child_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """A router object changed or went: its policy is queued (drift repaired, a deleted one recreated)."""
        memo.controller.observe(plural, type or "ADDED", body)


for _plural in ("serviceaccounts", "configmaps", "deployments", "services"):
    _router_child_event(_plural)
_router_child_event("httproutes", "httproutes.gateway.networking.k8s.io")
# A policy with budgets: the Role and RoleBinding that let its router keep spend in a ConfigMap.
_router_child_event("roles", "roles.rbac.authorization.k8s.io")
_router_child_event("rolebindings", "rolebindings.rbac.authorization.k8s.io")


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("-n", "--namespace", action="append", default=None,
                        help="watch only these namespaces (repeatable); default: the whole cluster")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every event kopf handles")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve the operator's Prometheus metrics on this port (env TIERED_METRICS_PORT)")
    parser.add_argument("--metrics-host", default=None,
                        help="address for --metrics-port (default 127.0.0.1; 0.0.0.0 in a pod)")
    parser.add_argument("--no-leader-election", action="store_true",
                        help="reconcile without holding the Lease (one replica only; env TIERED_LEADER_ELECTION)")


def operator(args: argparse.Namespace) -> int:
    """`tiered operator`: run these handlers with kopf (standalone: leader election is ours, on a Lease)."""
    # The handlers read their settings from the environment (so that `kopf run -m` works the same).
    if args.metrics_port is not None:
        os.environ["TIERED_METRICS_PORT"] = str(args.metrics_port)
    if args.metrics_host is not None:
        os.environ["TIERED_METRICS_HOST"] = args.metrics_host
    if args.no_leader_election:
        os.environ["TIERED_LEADER_ELECTION"] = "false"
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("tiered").setLevel(logging.INFO)
    kopf.run(standalone=True, clusterwide=not args.namespace, namespaces=args.namespace or (),
             liveness_endpoint=args.liveness)
    return 0
