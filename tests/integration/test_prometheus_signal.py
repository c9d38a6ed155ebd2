"""PrometheusSignalSource against a real Prometheus scraping a real exporter of DCGM-named series.

The exporter's values are set by the test; every assertion polls until Prometheus has scraped them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiered_devstack.dcgm_exporter import ENGINE_ACTIVE, DcgmExporter, Series, gpu
from tiered_devstack.prometheus import Prometheus, poll
from tiered_operator.api.model import AutoscalingSpec
from tiered_operator.controller.signals import MetricsUnavailable, PrometheusSignalSource, SignalQuery, signal_query
from tiered_operator.core.scaling import Sample

pytestmark = pytest.mark.integration

NS = "prod"
WORKERS = ["triage-x7k2p-gpu-group-worker-abcde", "triage-x7k2p-gpu-group-worker-fghij"]
OTHERS = [  # none of these is a worker of RayService "triage" in namespace "prod"
    gpu("triage-x7k2p-head-zzzzz", 1, namespace=NS),  # the head pod
    gpu("triage-big-q9w8e-gpu-group-worker-aaaaa", 2, namespace=NS),  # another RayService
    gpu(WORKERS[0], 3, namespace="staging"),  # another namespace
    gpu("router-7d9f8-worker-bbbbb", 4, namespace=NS),
]


Stack = tuple[DcgmExporter, PrometheusSignalSource]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("prometheus")
    with DcgmExporter(workdir) as exporter, Prometheus(workdir, [exporter.address]) as prometheus:
        yield exporter, PrometheusSignalSource(prometheus.url, timeout=5)


def query(**spec: object) -> SignalQuery:
    return signal_query(AutoscalingSpec.model_validate(spec), NS, "triage")


def read_value(source: PrometheusSignalSource, q: SignalQuery, expected: float) -> Sample:
    def check() -> Sample | None:
        sample = source.read(q)
        return sample if sample.value == pytest.approx(expected) else None

    return poll(check, what=f"{q.expr} == {expected}")


def unavailable(source: PrometheusSignalSource, q: SignalQuery, reason: str) -> MetricsUnavailable:
    def check() -> MetricsUnavailable | None:
        try:
            source.read(q)
        except MetricsUnavailable as error:
            return error if error.reason == reason else None
        return None

    return poll(check, what=f"MetricsUnavailable({reason}) from {q.expr}")


def test_default_query_averages_the_worker_pods_only(stack: Stack) -> None:
    exporter, source = stack
    exporter.set(gpu(WORKERS[0], 90, namespace=NS), gpu(WORKERS[1], 60, namespace=NS), *OTHERS)
    sample = read_value(source, query(), 75)
    assert abs(sample.timestamp - time.time()) < 60  # a scrape time, not a constant


def test_engine_active_is_scaled_to_percent(stack: Stack) -> None:
    exporter, source = stack
    exporter.set(
        gpu(WORKERS[0], 0.5, namespace=NS, metric=ENGINE_ACTIVE),
        gpu(WORKERS[1], 0.7, namespace=NS, metric=ENGINE_ACTIVE),
        gpu(WORKERS[0], 100, namespace=NS),  # plain utilization pinned at 100: not what is read
    )
    read_value(source, query(metric="engine-active"), 60)


def test_custom_promql(stack: Stack) -> None:
    exporter, source = stack
    exporter.set(gpu(WORKERS[0], 40, namespace=NS), gpu(WORKERS[1], 80, namespace=NS))
    read_value(source, query(query=f'max(DCGM_FI_DEV_GPU_UTIL{{namespace="{NS}"}})'), 80)
    read_value(source, query(query="scalar(count(DCGM_FI_DEV_GPU_UTIL)) * 10"), 20)
    error = unavailable(source, query(query="DCGM_FI_DEV_GPU_UTIL"), "Invalid")
    assert "2 series" in str(error)
    assert unavailable(source, query(query="DCGM_FI_DEV_GPU_UTIL{)"), "QueryFailed")


def test_no_matching_series_is_empty(stack: Stack) -> None:
    exporter, source = stack
    exporter.set(*OTHERS)
    error = unavailable(source, query(), "Empty")
    assert 'namespace="prod"' in str(error)


def test_a_frozen_exporter_becomes_stale(stack: Stack) -> None:
    exporter, source = stack
    frozen_at = time.time()
    series = gpu(WORKERS[0], 55, namespace=NS)
    exporter.set(Series(series.name, series.labels, series.value, timestamp=frozen_at))
    lenient = SignalQuery(query().expr, query().freshness, stale_after=3600)
    sample = read_value(source, lenient, 55)
    assert sample.timestamp == pytest.approx(frozen_at, abs=0.01)  # the scrape's own time, not "now"
    strict = SignalQuery(lenient.expr, lenient.freshness, stale_after=1)
    assert "s old" in str(unavailable(source, strict, "Stale"))


def test_exporter_gone_then_prometheus_gone(tmp_path: Path) -> None:
    with DcgmExporter(tmp_path) as exporter, Prometheus(tmp_path, [exporter.address]) as prometheus:
        source = PrometheusSignalSource(prometheus.url, timeout=2)
        exporter.set(gpu(WORKERS[0], 77, namespace=NS))
        read_value(source, query(), 77)
        exporter.stop()  # scrapes fail → Prometheus marks the series stale → no series
        unavailable(source, query(), "Empty")
        prometheus.stop()
        with pytest.raises(MetricsUnavailable) as raised:
            source.read(query())
        assert raised.value.reason == "Unreachable" and prometheus.url in str(raised.value)
