"""`/v1/tiered/costs/history` read from a real Prometheus scraping a real router (`prometheusURL`), and the
in-memory ring answering when that Prometheus is unreachable.

The workload runs twice with a scrape between: a series' first sample is no increase to Prometheus, so
only the second pass is sure to show; `increase()` also extrapolates to its window's edges. The bounds
below are therefore loose; the exact numbers are the ring's (tests/integration/test_router_feedback.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from router_bed import FakeUpstream, Router, base_config, free_port_url, router
from tiered_devstack.prometheus import Prometheus, poll

pytestmark = pytest.mark.integration


KEYS = "keys:\n  - {key: sk-search, team: search}\n  - {key: sk-support, team: support}\n" \
       "  - {key: sk-admin, team: platform, admin: true}\n"
ADMIN = {"Authorization": "Bearer sk-admin"}


def workload(rt: Router) -> None:
    for i in range(6):
        team = ("search", "support")[i % 2]
        text = "Prove the Theorem" if i % 3 == 0 else f"hello {i}"
        reply = rt.http.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": text}]},
            headers={"Authorization": f"Bearer sk-{team}"},
        )
        assert reply.status_code == 200, reply.text


def sum_field(series: dict[str, Any], field: str) -> float:
    return sum(sum(values[field]) for values in series["tiers"].values())


@pytest.fixture(scope="module")
def bed(
    router_fakes: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Router, Prometheus]]:
    tmp = tmp_path_factory.mktemp("cost-history")
    keys = tmp / "keys.yaml"
    keys.write_text(KEYS)
    config = base_config(router_fakes, privacy={}, apiKeysFile=str(keys))
    with router(config, tmp) as rt, Prometheus(tmp, [], jobs={"router": [rt.url.removeprefix("http://")]}) as prom:
        # The router starts first (Prometheus needs its address), then learns Prometheus's by a reload.
        rt.apply({**config, "prometheusURL": prom.url})
        for _ in range(2):
            workload(rt)
            served = rt.metric("tiered_router_requests_total")
            poll(lambda served=served: True if _scraped(prom) == served else None, timeout=30,
                 what=f"Prometheus seeing all {served} requests")  # fmt: skip
        yield rt, prom


def _scraped(prom: Prometheus) -> float | None:
    result = httpx.get(f"{prom.url}/api/v1/query", params={"query": "sum(tiered_router_requests_total)"}).json()
    values = result["data"]["result"]
    return float(values[0]["value"][1]) if values else None


def test_history_comes_from_prometheus(bed: tuple[Router, Prometheus]) -> None:
    rt, _ = bed
    series = rt.http.get("/v1/tiered/costs/history?window=300&step=300", headers=ADMIN).json()
    assert series["source"] == "prometheus" and "prometheus_error" not in series
    totals = rt.http.get("/v1/tiered/costs", headers=ADMIN).json()["totals"]
    ring = rt.http.get("/v1/tiered/costs/history?window=300&step=300&source=memory", headers=ADMIN).json()
    assert ring["source"] == "memory"
    assert set(series["tiers"]) == set(ring["tiers"])
    # At least the second pass (half the traffic), at most twice everything (extrapolation).
    for field, total in (("cost_usd", totals["cost_usd"]), ("requests", totals["requests"]),
                         ("input_tokens", totals["input_tokens"])):  # fmt: skip
        assert total / 2 * 0.9 <= sum_field(series, field) <= 2 * total, field


def test_a_team_s_history_comes_from_the_ring(bed: tuple[Router, Prometheus]) -> None:
    rt, _ = bed
    headers = {"Authorization": "Bearer sk-search"}
    series = rt.http.get("/v1/tiered/costs/history?window=300&step=60", headers=headers).json()
    assert series["source"] == "memory" and series["team"] == "search"  # no team label on Prometheus's tokens
    totals = rt.http.get("/v1/tiered/costs", headers=headers).json()["totals"]
    assert sum_field(series, "requests") == totals["requests"]
    assert sum_field(series, "input_tokens") == totals["input_tokens"]


def test_an_unreachable_prometheus_falls_back_to_the_ring(bed: tuple[Router, Prometheus]) -> None:
    rt, prom = bed
    config = base_config_from(rt)
    rt.apply({**config, "prometheusURL": free_port_url().removesuffix("/v1")})
    try:
        series = rt.http.get("/v1/tiered/costs/history?window=300&step=60", headers=ADMIN).json()
        assert series["source"] == "memory" and series["prometheus_error"]
        totals = rt.http.get("/v1/tiered/costs", headers=ADMIN).json()["totals"]
        assert sum_field(series, "requests") == totals["requests"]
    finally:
        rt.apply({**config, "prometheusURL": prom.url})


def base_config_from(rt: Router) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(rt.config_path.read_text())
    config.pop("prometheusURL", None)
    return config
