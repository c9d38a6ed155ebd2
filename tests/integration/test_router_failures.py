"""Failure handling with real processes: fallback on 5xx/429/stall, the breaker, privacy, burst overflow."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import openai
import pytest
from router_bed import FakeUpstream, Router, base_config, router

pytestmark = pytest.mark.integration


def client(rt: Router) -> openai.OpenAI:
    return openai.OpenAI(base_url=rt.base_url, api_key="none", max_retries=0, timeout=30)


def ask(rt: Router, model: str = "auto", content: str = "hello", **kwargs: object) -> tuple[str, str]:
    raw = client(rt).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs
    )
    return raw.headers["x-tiered-tier"], raw.headers["x-tiered-reason"]


@pytest.mark.parametrize(("mode", "cause"), [("fail", "500"), ("429", "429"), ("stall", "timeout")])
def test_falls_back_along_the_chain(
    router_reset: Router, router_fakes: dict[str, FakeUpstream], mode: str, cause: str
) -> None:
    router_fakes["small"].mode(mode, times=1)
    assert ask(router_reset) == ("edge", "default")
    assert router_reset.metric("tiered_router_fallbacks_total", from_tier="small", to_tier="edge", cause=cause) >= 1


def test_breaker_opens_skips_the_tier_then_closes(router_fakes: dict[str, FakeUpstream], tmp_path: Path) -> None:
    for fake in router_fakes.values():
        fake.reset()
    config = base_config(router_fakes, breaker={"failureThreshold": 2, "cooldownSeconds": 1})
    with router(config, tmp_path) as rt:
        router_fakes["small"].mode("fail", status=500)
        for _ in range(4):
            assert ask(rt) == ("edge", "default")
        assert router_fakes["small"].requests == 2  # after two failures the open breaker keeps it out
        assert rt.metric("tiered_router_breaker_state", tier="small") == 2
        router_fakes["small"].mode("ok")
        # After the cooldown the breaker is half-open; the first success closes it (bounded wait).
        deadline = time.monotonic() + 10
        while ask(rt)[0] != "small":
            assert time.monotonic() < deadline, "breaker never let traffic back to the tier"
            time.sleep(0.1)
        assert rt.metric("tiered_router_breaker_state", tier="small") == 0


def test_all_breakers_open_503_but_still_ready(router_fakes: dict[str, FakeUpstream], tmp_path: Path) -> None:
    for fake in router_fakes.values():
        fake.reset()
        fake.mode("fail", status=502)
    config = base_config(router_fakes, breaker={"failureThreshold": 1, "cooldownSeconds": 60})
    try:
        with router(config, tmp_path) as rt:
            with pytest.raises(openai.InternalServerError):
                ask(rt)
            with pytest.raises(openai.APIStatusError) as caught:
                ask(rt)
            assert caught.value.status_code == 503
            assert int(caught.value.response.headers["retry-after"]) >= 1
            # Readiness ignores upstream health: leaving the Service would turn this 503 into refused connections.
            assert rt.http.get("/readyz").status_code == 200
    finally:
        for fake in router_fakes.values():
            fake.reset()


def test_private_traffic_never_reaches_the_external_tier(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    big = router_fakes["big"]
    assert ask(router_reset, model="big", extra_headers={"x-tiered-private": "true"}) == ("small", "private")
    assert ask(router_reset, content="a theorem", extra_headers={"x-tiered-team": "legal"}) == (
        "small",
        "private",
    )
    # Local tiers failing: the chain small → edge → big loses big for private requests.
    router_fakes["small"].mode("fail", times=1)
    assert ask(router_reset, extra_headers={"x-tiered-private": "1"}) == ("edge", "default")
    router_fakes["small"].mode("fail")
    router_fakes["edge"].mode("fail")
    with pytest.raises(openai.InternalServerError):
        ask(router_reset, extra_headers={"x-tiered-private": "yes"})
    assert big.requests == 0
    # The same request without the private mark does reach the external tier.
    assert ask(router_reset)[0] == "big"


def test_overflow_goes_to_burst_target_and_private_requests_queue(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    config = base_config(router_fakes, privacy={"privateTeams": ["legal"], "queueLimit": 4, "queueTimeoutSeconds": 20})
    config["tiers"][0].update(concurrency=1, burst=True, burstTarget="big")
    router_reset.apply(config)
    small = router_fakes["small"]
    small.mode("hold")  # streams send one chunk, then stay in flight until released
    held = client(router_reset).chat.completions.create(
        model="small", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    first = next(iter(held))
    assert first.choices[0].delta.content
    assert router_reset.metric("tiered_router_in_flight", tier="small") == 1

    assert ask(router_reset) == ("big", "burst")  # over budget, not private: overflow
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        private = pool.submit(ask, router_reset, extra_headers={"x-tiered-private": "1"})
        router_reset.wait_metric("tiered_router_queued", 1, tier="small")
        assert not private.done()
        small.release()
        list(held)
        assert private.result(timeout=20) == ("small", "default")
    assert router_fakes["big"].requests == 1


def test_private_queue_full_503(router_reset: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    config = base_config(router_fakes, privacy={"privateTeams": ["legal"], "queueLimit": 0})
    config["tiers"][0].update(concurrency=1, burst=True, burstTarget="big")
    router_reset.apply(config)
    router_fakes["small"].mode("hold")
    held = client(router_reset).chat.completions.create(
        model="small", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    next(iter(held))
    with pytest.raises(openai.APIStatusError) as caught:
        ask(router_reset, extra_headers={"x-tiered-team": "legal"})
    assert caught.value.status_code == 503
    assert caught.value.code == "private_queue_full"
    assert caught.value.response.headers["retry-after"] == "1"
    router_fakes["small"].release()
    list(held)
    assert router_fakes["big"].requests == 0
