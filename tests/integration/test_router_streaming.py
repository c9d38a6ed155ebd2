"""Streaming through the router with the openai SDK: chunks pass through as they arrive, usage is priced."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from router_bed import FakeUpstream, Router, base_config, fakes, router

pytestmark = pytest.mark.integration


def client(router: Router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key="none", max_retries=0, timeout=30)


def test_first_chunk_arrives_before_the_upstream_finishes(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    # The fake sends one chunk and then holds the stream open until released: a buffering router would
    # never deliver that chunk, and this test would time out instead of reading it.
    router_fakes["small"].mode("hold")
    raw = client(router_reset).chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert raw.headers["x-tiered-tier"] == "small"
    stream = raw.parse()
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices[0].delta.content == "The"
    router_fakes["small"].release()
    rest = list(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    assert text == " answer is forty two ."
    assert all(c.choices and c.usage is None for c in rest)  # no usage chunk: this client did not ask for one
    assert router_reset.metric("tiered_router_time_to_first_token_seconds_count", tier="small") >= 1


def test_stream_asks_upstream_for_usage_and_prices_it(
    router_reset: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    router_fakes["edge"].mode("ok", usage={"prompt_tokens": 1000, "completion_tokens": 500})
    chunks = list(client(router_reset).completions.create(model="edge", prompt="hi", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert router_fakes["edge"].stats()["bodies"][0]["stream_options"] == {"include_usage": True}
    assert router_reset.metric("tiered_router_tokens_total", tier="edge", direction="input") == 1000
    assert router_reset.metric("tiered_router_tokens_total", tier="edge", direction="output") == 500
    assert router_reset.metric("tiered_router_estimated_usage_total", tier="edge") == 0


def test_stream_without_usage_is_estimated(router_reset: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    router_fakes["edge"].mode("ok", omit_usage=True)
    before = router_reset.metric("tiered_router_estimated_usage_total", tier="edge")
    chunks = list(
        client(router_reset).chat.completions.create(
            model="edge", messages=[{"role": "user", "content": "x" * 40}], stream=True, logprobs=True
        )
    )
    assert chunks[0].choices[0].logprobs is not None
    assert router_reset.metric("tiered_router_estimated_usage_total", tier="edge") == before + 1
    row = next(
        r for r in router_reset.http.get("/v1/tiered/costs").json()["by_tier_team_feature"] if r["tier"] == "edge"
    )
    assert row["estimated_requests"] >= 1


def test_stream_falls_back_before_the_first_byte(router_reset: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    router_fakes["small"].mode("fail", status=503, times=1)
    raw = client(router_reset).chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert raw.headers["x-tiered-tier"] == "edge"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)


def test_upstream_dying_mid_stream_ends_the_stream_with_an_error_event(tmp_path: Path) -> None:
    # Its own fake, because this test kills it.
    with fakes(tmp_path, "small", "edge", "big") as up, router(base_config(up), tmp_path) as rt:
        up["small"].mode("hold")
        stream = iter(
            client(rt).chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}], stream=True)
        )
        assert next(stream).choices[0].delta.content == "The"
        up["small"].process.kill()
        with pytest.raises(openai.APIError, match="closed the connection mid-stream"):
            list(stream)
        assert rt.metric("tiered_router_requests_total", tier="small", status="502") == 1
