"""The PromQL a tier's autoscaler runs, and how an instant-query result becomes one number."""

from __future__ import annotations

from typing import Any

import pytest
from tiered_operator.api.model import AutoscalingSpec
from tiered_operator.controller.signals import MetricsUnavailable, one_number, signal_query

SELECTOR = 'namespace="prod", pod=~"triage-[a-z0-9]{5}-.*worker.*"'


@pytest.mark.parametrize(
    ("spec", "expr", "freshness"),
    [
        (
            {},
            f"avg(DCGM_FI_DEV_GPU_UTIL{{{SELECTOR}}})",
            f"max(timestamp(DCGM_FI_DEV_GPU_UTIL{{{SELECTOR}}}))",
        ),
        (
            {"metric": "engine-active"},
            f"100 * avg(DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{SELECTOR}}})",
            f"max(timestamp(DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{SELECTOR}}}))",
        ),
        (
            {"metric": "queue-depth", "target": 4},
            f"avg(ray_vllm:num_requests_waiting{{{SELECTOR}}})",
            f"max(timestamp(ray_vllm:num_requests_waiting{{{SELECTOR}}}))",
        ),
        ({"query": "max(vllm:kv_cache_usage_perc) * 100"}, "max(vllm:kv_cache_usage_perc) * 100", None),
    ],
)
def test_signal_query(spec: dict[str, Any], expr: str, freshness: str | None) -> None:
    query = signal_query(AutoscalingSpec.model_validate({**spec, "staleAfterSeconds": 60}), "prod", "triage")
    assert (query.expr, query.freshness, query.stale_after) == (expr, freshness, 60)


@pytest.mark.parametrize(
    ("result", "number"),
    [
        ([{"metric": {}, "value": [1700000000.5, "71.25"]}], (71.25, 1700000000.5)),
        ([1700000000.5, "3"], (3.0, 1700000000.5)),  # a scalar result
    ],
)
def test_one_number(result: Any, number: tuple[float, float]) -> None:
    assert one_number(result, "q") == number


@pytest.mark.parametrize(
    ("result", "reason", "message"),
    [
        ([], "Empty", "no series matched: q"),
        ([{"metric": {"pod": "a"}, "value": [1, "1"]}] * 3, "Invalid", "3 series, expected one number: q"),
        ([{"metric": {}, "values": [[1, "1"]]}], "Invalid", "a range vector"),
        ([{"metric": {}, "value": [1, "NaN"]}], "Invalid", "value is nan"),
    ],
)
def test_not_one_number(result: Any, reason: str, message: str) -> None:
    with pytest.raises(MetricsUnavailable) as raised:
        one_number(result, "q")
    assert raised.value.reason == reason and message in str(raised.value)


def test_queue_depth_reads_the_engines_own_series() -> None:
    spec = AutoscalingSpec.model_validate({"metric": "queue-depth", "target": 4})
    assert signal_query(spec, "prod", "edge", "llama-cpp").expr.startswith("avg(ray_tiered_serving_queue_depth{")
    assert signal_query(spec, "prod", "triage", "vllm").expr.startswith("avg(ray_vllm:num_requests_waiting{")
