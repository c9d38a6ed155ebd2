"""Cost arithmetic through real processes, and config hot reload under traffic."""

from __future__ import annotations

import asyncio

import openai
import pytest
import yaml
from router_bed import FakeUpstream, Router, base_config

pytestmark = pytest.mark.integration

USAGE = {"prompt_tokens": 1000, "completion_tokens": 500}
# Per token: small = 3.6 $/GPU-h x 2 GPUs / (3600 s x 1000 tok/s) = 2e-6; edge = 0.36 / (3600 x 100) = 1e-6;
# big (baseline) = 5 $/M input, 30 $/M output.
EXPECTED = {
    "small": 1500 * 2e-6,
    "edge": 1500 * 1e-6,
    "big": 1000 * 5e-6 + 500 * 30e-6,
}
BASELINE = 1000 * 5e-6 + 500 * 30e-6


def test_exact_cost_and_baseline_per_tier(router_reset: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    sdk = openai.OpenAI(base_url=router_reset.base_url, api_key="none", max_retries=0)
    for fake in router_fakes.values():
        fake.mode("ok", usage=USAGE)
    before = router_reset.http.get("/v1/tiered/costs").json()["totals"]
    for tier in EXPECTED:
        sdk.chat.completions.create(
            model=tier,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-tiered-team": "cost-test", "x-tiered-feature": tier},
        )
    for tier, expected in EXPECTED.items():
        labels = {"tier": tier, "team": "cost-test", "feature": tier}
        assert router_reset.metric("tiered_router_cost_usd_total", **labels) == pytest.approx(expected, rel=1e-12)
        assert router_reset.metric("tiered_router_baseline_cost_usd_total", **labels) == pytest.approx(
            BASELINE, rel=1e-12
        )
    rows = {
        r["tier"]: r
        for r in router_reset.http.get("/v1/tiered/costs").json()["by_tier_team_feature"]
        if r["team"] == "cost-test"
    }
    assert rows["small"]["input_tokens"] == 1000 and rows["small"]["output_tokens"] == 500
    assert rows["small"]["savings_usd"] == pytest.approx(BASELINE - EXPECTED["small"], rel=1e-12)
    assert rows["big"]["savings_usd"] == pytest.approx(0.0, abs=1e-15)
    after = router_reset.http.get("/v1/tiered/costs").json()["totals"]
    assert after["cost_usd"] - before["cost_usd"] == pytest.approx(sum(EXPECTED.values()), rel=1e-9)


def test_response_without_usage_is_estimated_and_marked(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    router_fakes["edge"].mode("ok", omit_usage=True)
    sdk = openai.OpenAI(base_url=router_reset.base_url, api_key="none", max_retries=0)
    sdk.chat.completions.create(
        model="edge",
        messages=[{"role": "user", "content": "x" * 400}],
        extra_headers={"x-tiered-team": "estimate"},
    )
    row = next(
        r for r in router_reset.http.get("/v1/tiered/costs").json()["by_tier_team_feature"] if r["team"] == "estimate"
    )
    # 400 prompt characters → 100 tokens; "The answer is forty two ." (25 characters) → 7 tokens.
    assert (row["input_tokens"], row["output_tokens"], row["estimated_requests"]) == (100, 7, 1)


async def test_hot_reload_during_traffic_drops_nothing(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    sdk = openai.AsyncOpenAI(base_url=router_reset.base_url, api_key="none", max_retries=0, timeout=30)
    served: dict[str, int] = {}
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def worker() -> None:
        for i in range(400):  # bounded in count; also stops when the reloads are done
            if stop.is_set():
                return
            try:
                raw = await sdk.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": "hi"}], stream=i % 3 == 0
                )
                if i % 3 == 0:
                    async for _ in raw.parse():
                        pass
                tier = raw.headers["x-tiered-tier"]
                served[tier] = served.get(tier, 0) + 1
            except Exception as error:
                failures.append(error)

    workers = [asyncio.create_task(worker()) for _ in range(6)]
    reload_errors = router_reset.metric("tiered_router_config_reload_errors_total")
    for default in ("edge", "small", "edge", "small", "edge"):
        await asyncio.to_thread(router_reset.apply, base_config(router_fakes, default=default))
        await asyncio.sleep(0.2)
    # A bad config is rejected with a logged reason; the last good one (default edge) stays.
    await asyncio.to_thread(router_reset.write, yaml.safe_dump(base_config(router_fakes, default="nowhere")))
    await asyncio.to_thread(router_reset.wait_metric, "tiered_router_config_reload_errors_total", reload_errors + 1)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*workers), 60)
    await sdk.close()
    assert failures == []
    assert served.get("small", 0) > 0 and served.get("edge", 0) > 0
    assert "default names unknown tier 'nowhere'" in router_reset.log.read_text()
    assert router_reset.http.get("/openapi.json").status_code == 200
    tier = (
        openai.OpenAI(base_url=router_reset.base_url, api_key="none")
        .chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        .headers["x-tiered-tier"]
    )
    assert tier == "edge"


def test_in_flight_stream_finishes_on_the_old_config(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    router_fakes["small"].mode("hold", usage=USAGE)
    sdk = openai.OpenAI(base_url=router_reset.base_url, api_key="none", max_retries=0, timeout=30)
    stream = iter(
        sdk.chat.completions.create(
            model="small",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-tiered-team": "old-config"},
        )
    )
    next(stream)
    config = base_config(router_fakes)
    config["tiers"][0]["pricing"]["gpuHourUSD"] = 36.0  # ten times the price
    router_reset.apply(config)
    router_fakes["small"].release()
    assert len(list(stream)) > 1
    # Priced with the snapshot the request started with.
    assert router_reset.metric("tiered_router_cost_usd_total", team="old-config") == pytest.approx(
        EXPECTED["small"], rel=1e-12
    )
