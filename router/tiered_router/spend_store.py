"""The durable spend store shared by a policy's router replicas: one ConfigMap, one data key per replica.

`ConfigMap tiered-spend-<policy>` holds, under each replica's pod name, that replica's settled spend per
budget and window (JSON `{"spend": {"team=a|monthly:2026-12": 1.25, ...}, "updated": "..."}`). Every
`syncSeconds` a replica reads the ConfigMap, sums the other replicas' keys into `SpendBook.others`, and
writes its own key with a JSON merge patch that names only that key, so replicas never overwrite each
other and no read-modify-write race can lose spend. A restarted replica with the same pod name adds its
stored totals back on its first sync; one with a new name finds its predecessor's key among the others.
Keys with no spend in a current window that nobody wrote for an hour (gone replicas') are deleted by
whichever replica sees them.

Why a ConfigMap: every cluster has one, it survives router restarts and rollouts, and it needs no new
component (a Redis would be one more thing to install, secure and keep up). Prometheus is not enough on its
own: its default retention (15 days) is shorter than a monthly window. The cost: enforcement across
replicas lags by at most one sync interval (a replica sees the others' settled spend as of their last sync),
and a replica that crashes loses at most one interval of its own spend.

The router reaches the API server with its in-cluster service account (the operator grants it get, create
and patch on this one ConfigMap), or with `budgetSettings.store.kubeconfig` / `$KUBECONFIG` elsewhere.

Owns: the Kubernetes I/O for spend and the budget metrics. Must not: decide anything about budgets
(`tiered_router.budgets` does) or import the HTTP handlers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tiered_router.budgets import Budgets, SpendStore, is_current

log = logging.getLogger("tiered.router.spend")

POD_NAME_ENV = "TIERED_POD_NAME"
"""The replica's name (the pod's, from the downward API); default: the host name."""
MERGE_PATCH = "application/merge-patch+json"
STALE_SECONDS = 3600.0
"""A key without spend in a current window and not written for this long is a gone replica's: deleted. A live
replica rewrites its key every sync, so it is never deleted under it."""
REQUEST_TIMEOUT = 5.0


def replica_name() -> str:
    return os.environ.get(POD_NAME_ENV) or socket.gethostname()


class BudgetMetrics:
    """The budget series, in the router's registry: decisions by budget and action, sync outcomes, and
    the spend per budget window (read at scrape time from the book)."""

    def __init__(self, registry: CollectorRegistry, books: Budgets) -> None:
        self.exceeded = Counter(
            "tiered_router_budget_exceeded",
            "Requests over a budget (budget: its scope, or `task`) by action: downgraded, rejected, alerted.",
            ["budget", "action"],
            registry=registry,
        )
        self.syncs = Counter(
            "tiered_router_spend_syncs",
            "Syncs with the shared spend ConfigMap by outcome: ok, error.",
            ["outcome"],
            registry=registry,
        )
        self.task_exceeded = Counter(
            "tiered_router_task_budget_exceeded",
            "Requests whose task (x-tiered-task-id) was over its budget, by action.",
            ["action"],
            registry=registry,
        )
        registry.register(_SpendCollector(books))


class _SpendCollector(Collector):
    def __init__(self, books: Budgets) -> None:
        self.books = books

    def collect(self) -> Iterator[GaugeMetricFamily]:
        spend = GaugeMetricFamily(
            "tiered_router_budget_spend_usd",
            "Spend per budget and window, all replicas (others as of the last sync), reservations included.",
            labels=["budget", "window"],
        )
        book = self.books.spend
        for key in sorted({*book.own, *book.others, *book.reserved}):
            budget, _, window = key.rpartition("|")
            spend.add_metric([budget, window], book.spent(key))
        yield spend


def _parse(value: str | None) -> dict[str, float]:
    try:
        data = json.loads(value or "{}").get("spend", {})
    except (ValueError, AttributeError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)} if isinstance(data, dict) else {}


def _updated(value: str | None) -> datetime | None:
    try:
        return datetime.strptime(json.loads(value or "{}")["updated"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


async def _api_client(store: SpendStore) -> Any:
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    if store.kubeconfig:
        await config.load_kube_config(config_file=store.kubeconfig, client_configuration=configuration)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


class SpendSync:
    """Keeps one replica's `SpendBook` in step with the ConfigMap; `store()` reads the current config."""

    def __init__(
        self,
        books: Budgets,
        store: Callable[[], SpendStore | None],
        metrics: BudgetMetrics,
        replica: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.books, self.store, self.metrics, self.clock = books, store, metrics, clock
        self.replica = replica or replica_name()
        self.loaded = False
        self._client: Any = None
        self._client_for: SpendStore | None = None

    async def _core(self, store: SpendStore) -> Any:
        from kubernetes_asyncio import client

        if self._client is None or self._client_for != store:
            await self.close()
            self._client, self._client_for = await _api_client(store), store
        return client.CoreV1Api(self._client)

    async def sync_once(self) -> bool:
        """Read the others' spend and write ours; False (logged, counted) when the API server failed."""
        store = self.store()
        if store is None:
            return True
        try:
            await self._sync(store)
        except Exception as error:  # the API server is unreachable or refused: enforce on what we know
            self.metrics.syncs.labels("error").inc()
            log.warning("spend sync with ConfigMap %s/%s failed: %s", store.namespace, store.config_map, error)
            return False
        self.metrics.syncs.labels("ok").inc()
        return True

    async def _sync(self, store: SpendStore) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        api = await self._core(store)
        now = self.clock()
        book = self.books.spend
        try:
            found = await api.read_namespaced_config_map(
                store.config_map, store.namespace, _request_timeout=REQUEST_TIMEOUT
            )
            data: dict[str, str] = dict(found.data or {})
        except ApiException as error:
            if error.status != 404:
                raise
            found, data = None, {}
        if not self.loaded:  # our own stored totals (a restart with the same name) add to what we spent since
            for key, usd in _parse(data.get(self.replica)).items():
                if is_current(key, now):
                    book.own[key] = book.own.get(key, 0.0) + usd
            self.loaded = True
        book.forget_old(now)
        others: dict[str, float] = {}
        ended = []
        for replica, value in data.items():
            if replica == self.replica:
                continue
            spend = {k: v for k, v in _parse(value).items() if is_current(k, now)}
            updated = _updated(value)
            if not spend and (updated is None or (now - updated).total_seconds() > STALE_SECONDS):
                ended.append(replica)  # a gone replica's old totals
            for key, usd in spend.items():
                others[key] = others.get(key, 0.0) + usd
        book.others = others
        mine = json.dumps({"spend": dict(sorted(book.own.items())), "updated": f"{now:%Y-%m-%dT%H:%M:%SZ}"})
        patch: dict[str, Any] = {"data": {self.replica: mine, **{r: None for r in ended}}}
        if found is None:
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": store.config_map, "namespace": store.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "tiered-router"}},
                "data": {self.replica: mine},
            }
            try:
                await api.create_namespaced_config_map(store.namespace, body, _request_timeout=REQUEST_TIMEOUT)
                return
            except ApiException as error:
                if error.status != 409:  # another replica created it first: patch ours in
                    raise
        await api.patch_namespaced_config_map(
            store.config_map, store.namespace, patch, _content_type=MERGE_PATCH, _request_timeout=REQUEST_TIMEOUT
        )

    async def run(self) -> None:
        """Sync every `syncSeconds` (the current config's) until cancelled."""
        while True:
            store = self.store()
            await asyncio.sleep(store.sync_seconds if store is not None else 1.0)
            await self.sync_once()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
