"""Reading a tier's scaling signal from Prometheus: the only I/O of autoscaling, kept thin.

`signal_query` turns a tier's ``autoscaling`` spec into PromQL (pure); a `SignalSource` runs it and returns
one `Sample` or raises `MetricsUnavailable` with a reason the operator copies into its
``MetricsAvailable=False`` condition. Decisions are not made here (see `scaling` and `burst`).

Exceptions::

    MetricsUnavailable(reason)
      reason: Unreachable   connection refused, timeout, DNS (no retries here: the caller backs off)
              QueryFailed   Prometheus answered non-200 (bad PromQL, overload)
              Empty         the query matched no series (no worker pods, wrong labels)
              Invalid       several series, NaN, a range vector: not "one number"
              Stale         the newest sample is older than ``staleAfterSeconds``

Built-in signals share one scale per metric: ``gpu-utilization`` and ``engine-active`` are percent (0-100;
DCGM reports engine-active as a 0-1 ratio, so it is multiplied by 100); ``queue-depth`` is waiting
requests per engine replica. For built-in signals the sample's timestamp is the newest scrape of the
underlying series (``timestamp()``), so a frozen exporter is detected; for a custom ``query`` it is the
evaluation time Prometheus reports (Prometheus itself hides series not scraped for 5 minutes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from tiered_operator.api.model import AutoscalingSpec
from tiered_operator.core.scaling import Sample

Metric = Literal["gpu-utilization", "engine-active", "queue-depth"]
UnavailableReason = Literal["Unreachable", "QueryFailed", "Empty", "Invalid", "Stale"]

# metric → (series name, factor bringing it to the documented scale); queue depth is the engine's own
SERIES: dict[str, tuple[str, float]] = {
    "gpu-utilization": ("DCGM_FI_DEV_GPU_UTIL", 1),
    "engine-active": ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", 100),
    "queue-depth": ("ray_vllm:num_requests_waiting", 1),
}
QUEUE_DEPTH_BY_ENGINE = {"vllm": "ray_vllm:num_requests_waiting", "llama-cpp": "ray_tiered_serving_queue_depth"}


def _series(metric: Metric, engine: str) -> tuple[str, float]:
    if metric == "queue-depth":
        return QUEUE_DEPTH_BY_ENGINE[engine], 1
    return SERIES[metric]


class MetricsUnavailable(Exception):
    """No usable sample; ``reason`` is a CamelCase condition reason, the message says what happened."""

    def __init__(self, reason: UnavailableReason, message: str) -> None:
        super().__init__(message)
        self.reason: UnavailableReason = reason


@dataclass(frozen=True)
class SignalQuery:
    expr: str
    """PromQL returning one number on the signal's scale."""
    freshness: str | None
    """PromQL returning the unix time of the newest underlying sample, when known."""
    stale_after: float
    """Samples older than this many seconds raise MetricsUnavailable('Stale')."""


def worker_selector(namespace: str, rayservice_name: str) -> str:
    """Label selector for the worker pods of a RayService. KubeRay names its RayCluster
    ``<rayservice>-<5 random chars>`` and worker pods ``<raycluster>-<group>-worker-<hash>`` (older
    releases ``<raycluster>-worker-<group>-<hash>``); the head pod is left out."""
    return f'namespace="{namespace}", pod=~"{rayservice_name}-[a-z0-9]{{5}}-.*worker.*"'


def default_query(metric: Metric, namespace: str, rayservice_name: str, engine: str = "vllm") -> str:
    """PromQL averaging a built-in metric over a RayService's worker pods."""
    series, factor = _series(metric, engine)
    average = f"avg({series}{{{worker_selector(namespace, rayservice_name)}}})"
    return average if factor == 1 else f"{factor:g} * {average}"


def signal_query(spec: AutoscalingSpec, namespace: str, rayservice_name: str, engine: str = "vllm") -> SignalQuery:
    """The query a tier's autoscaler runs: its custom ``query`` if set, else the built-in metric (queue depth
    from the tier's engine: vLLM's or the llama.cpp app's)."""
    if spec.query:
        return SignalQuery(expr=spec.query, freshness=None, stale_after=spec.stale_after_seconds)
    series, _ = _series(spec.metric, engine)
    return SignalQuery(
        expr=default_query(spec.metric, namespace, rayservice_name, engine),
        freshness=f"max(timestamp({series}{{{worker_selector(namespace, rayservice_name)}}}))",
        stale_after=spec.stale_after_seconds,
    )


class SignalSource(Protocol):
    def read(self, query: SignalQuery, now: float | None = None) -> Sample:
        """The current value of ``query``; raises MetricsUnavailable."""
        ...


def one_number(result: Any, expr: str) -> tuple[float, float]:
    """(value, evaluation timestamp) from an instant-query result that must hold exactly one number."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        raw = result  # scalar result: [timestamp, "value"]
    elif not result:
        raise MetricsUnavailable("Empty", f"no series matched: {expr}")
    elif len(result) > 1:
        raise MetricsUnavailable("Invalid", f"{len(result)} series, expected one number: {expr}")
    elif "value" not in result[0]:
        raise MetricsUnavailable("Invalid", f"a range vector, expected one number: {expr}")
    else:
        raw = result[0]["value"]
    timestamp, value = float(raw[0]), float(raw[1])
    if not math.isfinite(value):
        raise MetricsUnavailable("Invalid", f"value is {value}: {expr}")
    return value, timestamp


class PrometheusSignalSource:
    """A SignalSource over Prometheus' HTTP API (prometheus-api-client). Build one at start-up and share it.
    It blocks (requests): from an event loop, ``await asyncio.to_thread(source.read, query)``.

    No retries inside: the operator's timer owns the backoff, so an outage shows within one interval."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self._client = PrometheusConnect(url=url, disable_ssl=True, retry=Retry(total=0), timeout=timeout)

    def _query(self, expr: str) -> Any:
        try:
            return self._client.custom_query(expr)
        except requests.RequestException as error:
            raise MetricsUnavailable("Unreachable", f"Prometheus at {self.url}: {error}") from error
        except PrometheusApiClientException as error:
            raise MetricsUnavailable("QueryFailed", f"Prometheus at {self.url}: {error}") from error

    def read(self, query: SignalQuery, now: float | None = None) -> Sample:
        now = time.time() if now is None else now
        value, timestamp = one_number(self._query(query.expr), query.expr)
        if query.freshness:
            # its value is the newest scrape's time
            timestamp = one_number(self._query(query.freshness), query.freshness)[0]
        age = now - timestamp
        if age > query.stale_after:
            raise MetricsUnavailable(
                "Stale", f"newest sample is {age:.0f} s old (staleAfterSeconds {query.stale_after:g})"
            )
        return Sample(value=value, timestamp=timestamp)
