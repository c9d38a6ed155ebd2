"""The response caches' pure parts: keys and their scoping, the exact store (LRU by bytes, TTL), answers from
JSON and SSE and back, the negation/reversal guard on the pairs in data/cache_pairs.jsonl, the semantic index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiered_router.cache import (
    Answer,
    CacheSettings,
    ExactCache,
    ExactStore,
    Pending,
    ResponseCache,
    SemanticCache,
    SemanticIndex,
    answer_from_json,
    answer_from_sse,
    conflict,
    exact_key,
    sampled,
    sampling_params,
    semantic_eligible,
    semantic_scope,
    sse_from_answer,
)
from tiered_router.config import RouterConfig

PAIRS = [json.loads(line) for line in (Path(__file__).parent / "data" / "cache_pairs.jsonl").read_text().splitlines()]
PARAPHRASES = [p for p in PAIRS if p["kind"] == "paraphrase"]
DIFFERENT = [p for p in PAIRS if p["kind"] != "paraphrase"]


def chat(content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"model": "small", "messages": [{"role": "user", "content": content}], **fields}


def key(body: dict[str, Any], team: str = "a", private: bool = False, tier: str = "small:m") -> bytes:
    return exact_key(team, private, tier, body, True)


def test_the_exact_key_is_scoped_by_team_privacy_tier_parameters_and_messages() -> None:
    base = key(chat(temperature=0))
    assert key(chat(temperature=0)) == base
    assert key(chat(temperature=0), team="b") != base
    assert key(chat(temperature=0), private=True) != base
    assert key(chat(temperature=0), tier="big:m") != base
    assert key(chat(temperature=0.5)) != base
    assert key(chat(temperature=0, max_tokens=5)) != base
    assert key(chat("hello", temperature=0)) != base


def test_the_exact_key_ignores_what_does_not_change_the_answer() -> None:
    base = key(chat(temperature=0, max_tokens=5, stop="x"))
    assert key(chat(" hi \n", temperature=0.0, max_completion_tokens=5, stop=["x"])) == base
    unrelated = {"stream": True, "user": "u", "metadata": {"k": 1}}
    assert key({**chat(temperature=0, max_tokens=5, stop="x"), **unrelated}) == base
    parts = {"model": "small", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert key({**parts, "temperature": 0, "max_tokens": 5, "stop": "x"}) == base
    assert sampling_params({"temperature": 1, "seed": None, "model": "x"}) == {"temperature": 1.0}


def test_the_semantic_scope_leaves_out_only_the_last_user_text() -> None:
    def scope(body: dict[str, Any], team: str = "a") -> bytes:
        return semantic_scope(team, False, "small:m", body, True)

    assert scope(chat("one", temperature=0)) == scope(chat("two", temperature=0))
    assert scope(chat("one", temperature=0)) != scope(chat("one", temperature=0), team="b")
    assert scope(chat("one", temperature=0)) != scope(chat("one", temperature=0, max_tokens=3))
    with_system = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"}]}
    assert scope(with_system) != scope(chat("one"))


def test_sampled_requests_are_served_semantically_only_when_the_config_says() -> None:
    assert sampled({}) and sampled({"temperature": 0.7}) and not sampled({"temperature": 0})
    on = SemanticCache()
    assert not semantic_eligible(on, None, chat(temperature=0.7))
    assert semantic_eligible(SemanticCache(serve_sampled=True), None, chat(temperature=0.7))
    assert semantic_eligible(on, None, chat(temperature=0))
    assert not semantic_eligible(on, False, chat(temperature=0))
    assert semantic_eligible(SemanticCache(all_requests=False), True, chat(temperature=0))
    assert not semantic_eligible(SemanticCache(all_requests=False), None, chat(temperature=0))


def answer(size: int = 100, tier: str = "small") -> Answer:
    body = {"choices": [{"index": 0, "message": {"content": "x" * size}, "finish_reason": "stop"}]}
    return Answer(json.dumps(body).encode(), tier, 10, 5)


def test_the_exact_store_expires_and_evicts_least_recently_used_by_bytes() -> None:
    one = answer(400)
    store = ExactStore(ExactCache(ttl_seconds=10, max_bytes=3 * one.size, max_entry_bytes=1000))
    for name in (b"a", b"b", b"c"):
        assert store.put(name, one, now=0)
    assert store.get(b"a", now=1) is one  # a is now the most recently used
    store.put(b"d", one, now=1)
    assert store.get(b"b", now=1) is None and store.get(b"a", now=1) is one
    assert store.bytes == 3 * one.size
    assert store.get(b"a", now=10.5) is None  # stored at 0 with a ttl of 10
    assert not store.put(b"big", answer(2000), now=0)  # over maxEntryBytes
    store.configure(ExactCache(max_bytes=2 * one.size, max_entry_bytes=1000))
    assert store.bytes == 2 * one.size


def test_only_finished_json_answers_are_stored() -> None:
    assert answer_from_json(answer().body, "small", 1, 1) is not None
    unfinished = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": None}]}
    assert answer_from_json(json.dumps(unfinished).encode(), "small", 1, 1) is None
    assert answer_from_json(b'{"error": {"message": "no"}}', "small", 1, 1) is None
    assert answer_from_json(b"not json", "small", 1, 1) is None


def sse(*events: dict[str, Any], done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(content: str | None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content, **delta}, "finish_reason": finish}],
    }


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_a_whole_stream_becomes_one_answer_and_back() -> None:
    usage = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": USAGE}
    stream = sse(chunk("", role="assistant"), chunk("The"), chunk(" answer"), chunk(None, "stop"), usage)
    stored = answer_from_sse(stream, "small", True, 3, 2)
    assert stored is not None
    body = json.loads(stored.body)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "The answer"}
    assert body["choices"][0]["finish_reason"] == "stop" and body["usage"] == USAGE
    replay = sse_from_answer(stored, chat=True, include_usage=True)
    events = [json.loads(e[5:]) for e in replay.split(b"\n\n") if e.startswith(b"data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == "The answer"
    assert events[-1]["usage"] == USAGE and replay.endswith(b"data: [DONE]\n\n")
    without = sse_from_answer(stored, chat=True, include_usage=False)
    assert b'"usage"' not in without


def test_cut_erroneous_or_tool_streams_are_not_stored() -> None:
    assert answer_from_sse(sse(chunk("The"), chunk(None, "stop"), done=False), "s", True, 1, 1) is None
    assert answer_from_sse(sse(chunk("The")), "s", True, 1, 1) is None  # no finish_reason
    error = {"error": {"message": "upstream closed", "type": "upstream_error"}}
    assert answer_from_sse(sse(chunk("The"), error, chunk(None, "stop")), "s", True, 1, 1) is None
    tool = chunk(None, tool_calls=[{"index": 0, "function": {"name": "f"}}])
    assert answer_from_sse(sse(tool, chunk(None, "tool_calls")), "s", True, 1, 1) is None


def test_text_completion_streams_round_trip() -> None:
    events = [
        {"id": "t", "object": "text_completion", "choices": [{"index": 0, "text": "The", "finish_reason": None}]},
        {"id": "t", "object": "text_completion", "choices": [{"index": 0, "text": " end", "finish_reason": "length"}]},
    ]
    stored = answer_from_sse(sse(*events), "edge", False, 1, 2)
    assert stored is not None and json.loads(stored.body)["choices"][0]["text"] == "The end"
    assert b'"text": "The end"' in sse_from_answer(stored, chat=False, include_usage=False)


@pytest.mark.parametrize("pair", DIFFERENT, ids=lambda p: p["a"][:40])
def test_the_guard_refuses_every_negation_and_reversal_pair(pair: dict[str, str]) -> None:
    assert conflict(pair["a"], pair["b"]) is not None
    assert conflict(pair["b"], pair["a"]) is not None


def test_the_guard_lets_paraphrases_through() -> None:
    refused = [(p["a"], p["b"], conflict(p["a"], p["b"])) for p in PARAPHRASES if conflict(p["a"], p["b"])]
    assert len(PARAPHRASES) >= 60 and len(DIFFERENT) >= 60
    assert len(refused) <= len(PARAPHRASES) // 20, refused  # a false alarm costs one upstream call
    assert conflict("Is it safe?", "is it   SAFE?") is None


def unit(seed: int, dims: int = 384) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_the_semantic_index_hits_within_its_scope_only() -> None:
    index = SemanticIndex(SemanticCache(threshold=0.9, ttl_seconds=10))
    vector = unit(1)
    index.put(b"team-a", vector, "Is it safe to swim after eating?", answer(), now=0)
    near = vector + 0.05 * unit(2)
    near /= np.linalg.norm(near)
    hit = index.lookup(b"team-a", near, "Is swimming after eating safe?", now=1).hit
    assert hit is not None and hit.similarity > 0.9
    assert index.lookup(b"team-b", near, "Is swimming after eating safe?", now=1).hit is None
    assert index.lookup(b"team-a", unit(3), "Is swimming after eating safe?", now=1).hit is None
    refused = index.lookup(b"team-a", near, "Is it not safe to swim after eating?", now=1)
    assert refused.hit is None and refused.guarded == "negation"
    assert index.lookup(b"team-a", vector, "Is it safe to swim after eating?", now=11).hit is None  # expired
    assert len(index) == 0


def test_the_semantic_index_evicts_least_recently_used_and_reuses_rows() -> None:
    index = SemanticIndex(SemanticCache(threshold=0.99, max_entries=20))
    for i in range(50):
        index.put(b"s", unit(i), f"question {i}", answer(), now=0)
    assert len(index) == 20
    assert index.lookup(b"s", unit(0), "question 0", now=1).hit is None
    assert index.lookup(b"s", unit(49), "question 49", now=1).hit is not None
    assert index.scopes[b"s"].vectors.shape[0] <= 64  # freed rows are reused, not appended


def test_the_response_cache_follows_the_config() -> None:
    caches = ResponseCache()
    caches.configure(CacheSettings(exact=ExactCache()))
    assert caches.exact is not None and caches.semantic is None
    pending = Pending(exact_key=b"k")
    assert caches.store(pending, answer(), now=0) == [("exact", True)]
    caches.configure(CacheSettings(exact=ExactCache(ttl_seconds=5)))
    assert caches.exact.get(b"k", now=1) is not None  # kept across a reload
    caches.configure(CacheSettings())
    assert caches.exact is None


def test_router_config_accepts_the_cache_section() -> None:
    config = RouterConfig.model_validate(
        {
            "tiers": [{"name": "a", "baseURL": "http://x/v1", "pricing": {"gpuHourUSD": 1, "tokensPerSecond": 1}}],
            "default": "a",
            "rules": [{"match": {"taskTypes": ["faq"]}, "tier": "a", "semanticCache": True}],
            "cache": {"exact": {"ttlSeconds": 60, "maxBytes": 1 << 20}, "semantic": {"threshold": 0.9}},
        }
    )
    assert config.cache is not None and config.cache.exact is not None and config.cache.exact.ttl_seconds == 60
    assert config.cache.semantic is not None and config.cache.semantic.threshold == 0.9
    assert config.rules[0].semantic_cache is True
