"""The response caches in a real router process in front of real fake-upstream processes (openai SDK).

Exact: hits and misses, scoped by team, privacy class, model and sampling parameters; errors and cut
streams are never stored; a streamed request is served from a stored answer as a stream; hits are
counted with the dollars they saved and are not charged. Semantic (the real int8 MiniLM encoder): hits on
paraphrases from tests/unit/data/cache_pairs.jsonl, none on their negations and reversals, none across
teams, and sampled requests are not served from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from router_bed import FakeUpstream, Router, base_config, fakes, router

pytestmark = pytest.mark.integration

PAIRS = [
    json.loads(line)
    for line in (Path(__file__).parents[1] / "unit" / "data" / "cache_pairs.jsonl").read_text().splitlines()
]
THRESHOLD = 0.85
"""The semantic threshold the router runs with here: 94% of the paraphrase pairs embed at least this close."""


def cache_config(up: dict[str, FakeUpstream], semantic: dict[str, Any] | None = None) -> dict[str, Any]:
    cache: dict[str, Any] = {"exact": {"ttlSeconds": 300}}
    if semantic is not None:
        cache["semantic"] = semantic
    return base_config(up, cache=cache)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Router, dict[str, FakeUpstream]]]:
    tmp = tmp_path_factory.mktemp("cache")
    with fakes(tmp, "small", "edge", "big") as up:
        semantic = {"threshold": THRESHOLD, "ttlSeconds": 300}
        with router(cache_config(up, semantic), tmp) as rt:
            yield rt, up


def client(rt: Router, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=rt.base_url, api_key="none", max_retries=0, timeout=30, default_headers=headers)


def ask(rt: Router, content: str, team: str = "a", **fields: Any) -> Any:
    fields.setdefault("model", "small")
    fields.setdefault("temperature", 0)
    return client(rt, **{"x-tiered-team": team}).chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": content}], **fields
    )


def test_an_exact_repeat_is_served_from_the_cache_and_not_charged(bed: tuple[Router, dict[str, FakeUpstream]]) -> None:
    rt, up = bed
    up["small"].mode("ok", usage={"prompt_tokens": 1000, "completion_tokens": 500})
    first = ask(rt, "exact: what is the answer?", team="exact")
    assert "x-tiered-cache" not in first.headers
    asked = up["small"].requests
    spent = rt.metric("tiered_router_cost_usd_total", team="exact")
    second = ask(rt, "exact: what is the answer?", team="exact")
    assert second.headers["x-tiered-cache"] == "exact"
    assert second.headers["x-tiered-tier"] == "small"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert up["small"].requests == asked  # the upstream was not asked again
    assert rt.metric("tiered_router_cost_usd_total", team="exact") == spent  # a hit is not spend
    assert rt.metric("tiered_router_cache_total", kind="exact", outcome="hit") >= 1
    # small: 3.6 $/GPU-h x 2 GPUs / (3600 s x 1000 tok/s) = 2e-6 $ per token; 1500 tokens saved
    saved = rt.metric("tiered_router_cache_saved_usd_total", kind="exact", team="exact")
    assert saved == pytest.approx(1500 * 2e-6)
    assert rt.metric("tiered_router_requests_total", team="exact", reason="cache_exact") == 1
    up["small"].mode("ok")


def test_the_exact_cache_is_scoped_by_team_privacy_model_and_parameters(
    bed: tuple[Router, dict[str, FakeUpstream]],
) -> None:
    rt, _ = bed
    ask(rt, "scoped question", team="scope-a")
    assert ask(rt, "scoped question", team="scope-a").headers.get("x-tiered-cache") == "exact"
    variants = [
        ask(rt, "scoped question", team="scope-b"),  # another team
        ask(rt, "scoped question", team="scope-a", extra_headers={"x-tiered-private": "1"}),  # private
        ask(rt, "scoped question", team="scope-a", model="edge"),  # another tier
        ask(rt, "scoped question", team="scope-a", temperature=0.3),  # other sampling
        ask(rt, "scoped question", team="scope-a", max_tokens=7),
        ask(rt, "how tall is a giraffe", team="scope-a"),  # other text
    ]
    assert [v.headers.get("x-tiered-cache") for v in variants] == [None] * len(variants)
    # Whitespace around a message and max_completion_tokens for max_tokens are the same request.
    assert ask(rt, "  scoped question\n", team="scope-a").headers.get("x-tiered-cache") == "exact"
    assert ask(rt, "scoped question", team="scope-a", max_completion_tokens=7).headers["x-tiered-cache"] == "exact"


def test_errors_are_not_cached(bed: tuple[Router, dict[str, FakeUpstream]]) -> None:
    rt, up = bed
    up["edge"].mode("fail", status=500, times=3)  # edge has no fallback: 1 try + 2 retries all fail
    with pytest.raises(openai.InternalServerError):
        ask(rt, "error question", team="errors", model="edge")
    up["edge"].mode("ok")
    asked = up["edge"].requests
    again = ask(rt, "error question", team="errors", model="edge")
    assert "x-tiered-cache" not in again.headers and up["edge"].requests == asked + 1
    assert ask(rt, "error question", team="errors", model="edge").headers["x-tiered-cache"] == "exact"


def test_a_streamed_request_is_served_from_the_cache_as_a_stream(bed: tuple[Router, dict[str, FakeUpstream]]) -> None:
    rt, up = bed
    usage = {"prompt_tokens": 12, "completion_tokens": 6}
    up["small"].mode("ok", usage=usage)
    ask(rt, "stream me", team="streams")  # stored from a JSON answer
    asked = up["small"].requests
    raw = ask(rt, "stream me", team="streams", stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-tiered-cache"] == "exact"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The answer is forty two ."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    # Stored from a stream, served as JSON and as a stream.
    streamed = ask(rt, "streamed first", team="streams", stream=True)
    assert "x-tiered-cache" not in streamed.headers
    assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    as_json = ask(rt, "streamed first", team="streams")
    assert as_json.headers["x-tiered-cache"] == "exact"
    assert as_json.parse().choices[0].message.content == "The answer is forty two ."
    assert up["small"].requests == asked + 1
    up["small"].mode("ok")


def test_a_cut_stream_is_not_cached(tmp_path: Path) -> None:
    # Its own fakes, because this test kills one.
    with fakes(tmp_path, "small", "edge", "big") as up, router(cache_config(up), tmp_path) as rt:
        up["small"].mode("hold")
        stream = iter(ask(rt, "cut me", stream=True).parse())
        assert next(stream).choices[0].delta.content == "The"
        up["small"].process.kill()
        with pytest.raises(openai.APIError, match="closed the connection mid-stream"):
            list(stream)
        again = ask(rt, "cut me", stream=True)  # small is gone: its fallback answers, not the cache
        assert "x-tiered-cache" not in again.headers and again.headers["x-tiered-tier"] == "edge"
        assert "".join(c.choices[0].delta.content or "" for c in again.parse() if c.choices)
        assert rt.metric("tiered_router_cache_total", kind="exact", outcome="hit") == 0


def pairs(kind: str, count: int) -> list[dict[str, str]]:
    chosen = [p for p in PAIRS if (p["kind"] == "paraphrase") == (kind == "paraphrase")]
    return chosen[:count]


def test_paraphrases_hit_the_semantic_cache(bed: tuple[Router, dict[str, FakeUpstream]]) -> None:
    rt, _ = bed
    hits = 0
    chosen = pairs("paraphrase", 20)
    for i, pair in enumerate(chosen):
        ask(rt, pair["a"], team=f"para-{i}")
        reply = ask(rt, pair["b"], team=f"para-{i}")
        if reply.headers.get("x-tiered-cache") == "semantic":
            hits += 1
            assert float(reply.headers["x-tiered-cache-similarity"]) >= THRESHOLD
            assert reply.parse().choices[0].message.content == "The answer is forty two ."
    assert hits >= 0.75 * len(chosen)
    assert rt.metric("tiered_router_cache_total", kind="semantic", outcome="hit") == hits


def test_negations_and_reversals_never_hit_the_semantic_cache(bed: tuple[Router, dict[str, FakeUpstream]]) -> None:
    rt, _ = bed
    guarded = rt.metric("tiered_router_cache_total", kind="semantic", outcome="guarded")
    chosen = pairs("different", 30)
    for i, pair in enumerate(chosen):  # a team per pair: "dangerous" may rightly hit "unsafe" of another pair
        ask(rt, pair["a"], team=f"negations-{i}")
        assert ask(rt, pair["b"], team=f"negations-{i}").headers.get("x-tiered-cache") is None, pair
    # Most of them embed above the threshold: the guard, not the threshold, refused them.
    assert rt.metric("tiered_router_cache_total", kind="semantic", outcome="guarded") - guarded >= len(chosen) // 2


def test_the_semantic_cache_never_crosses_teams_or_serves_sampled_requests(
    bed: tuple[Router, dict[str, FakeUpstream]],
) -> None:
    rt, _ = bed
    pair = pairs("paraphrase", 30)[-1]
    ask(rt, pair["a"], team="owner")
    assert ask(rt, pair["b"], team="owner").headers.get("x-tiered-cache") == "semantic"
    assert ask(rt, pair["b"], team="stranger").headers.get("x-tiered-cache") is None
    assert ask(rt, pair["a"] + " ", team="stranger2").headers.get("x-tiered-cache") is None
    sampled = pairs("paraphrase", 31)[-1]
    ask(rt, sampled["a"], team="owner", temperature=0.8)
    assert ask(rt, sampled["b"], team="owner", temperature=0.8).headers.get("x-tiered-cache") is None
