"""Anthropic tiers end to end: the openai SDK → a real router process → a real fake Messages API process.

The fake (`tiered_devstack.fake_anthropic`) refuses what the real API refuses (no key, no version, no
`max_tokens`, a `system` role among the messages), so a wrong translation fails here as it would there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from router_bed import FakeUpstream, Router, router
from tiered_devstack import fake_upstream

pytestmark = pytest.mark.integration

KEY_ENV = "TIERED_TEST_ANTHROPIC_KEY"
PRICE_IN, PRICE_OUT = 3.0, 15.0  # USD per million tokens
PRICE_CACHED, PRICE_WRITE = 0.3, 3.75  # cache reads and writes


class FakeAnthropic:
    """A running `tiered_devstack.fake_anthropic` process and its control API."""

    def __init__(self, tmp: Path) -> None:
        self.process, self.url = fake_upstream.spawn(["-m", "tiered_devstack.fake_anthropic"], tmp / "anthropic.log")
        self.base_url = f"{self.url}/v1"
        self.control = httpx.Client(base_url=self.url, timeout=10)

    def mode(self, mode: str = "ok", **spec: Any) -> None:
        self.control.post("/_fake/mode", json={"mode": mode, **spec}).raise_for_status()

    def reset(self) -> None:
        self.control.post("/_fake/reset").raise_for_status()

    def last(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The last request's body and headers."""
        stats = self.control.get("/_fake/stats").json()
        return stats["bodies"][-1], stats["headers"][-1]

    def stop(self) -> None:
        self.control.close()
        fake_upstream.stop(self.process)


def config(fake: FakeAnthropic, local_base_url: str, **claude_pricing: float) -> dict[str, Any]:
    def tier(name: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "external",
            "api": "anthropic",
            "baseURL": fake.base_url,
            "model": "claude-fake",
            "apiKeyEnv": KEY_ENV,
            "pricing": {"inputPerMTok": PRICE_IN, "outputPerMTok": PRICE_OUT, **extra.pop("pricing", {})},
            **extra,
        }

    return {
        "tiers": [
            tier("claude", pricing=claude_pricing),
            tier("claude-short", defaultMaxTokens=3),
            {
                "name": "small",
                "kind": "local",
                "baseURL": local_base_url,
                "pricing": {"gpuHourUSD": 3.6, "tokensPerSecond": 1000},
                "fallback": ["claude"],
            },
        ],
        "default": "claude",
        "baseline": "claude",
        # An OpenAI-dialect local tier that escalates (and falls back) to the Anthropic one.
        "escalation": {"from": "small", "to": "claude", "minConfidence": 0.7},
        "retries": 1,
        "timeouts": {"connectSeconds": 1, "readSeconds": 5, "poolSeconds": 2},
        "breaker": {"failureThreshold": 100, "cooldownSeconds": 30},
    }


@pytest.fixture(scope="module")
def anthropic_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeAnthropic, Router, FakeUpstream]]:
    tmp = tmp_path_factory.mktemp("anthropic")
    fake = FakeAnthropic(tmp)
    local = FakeUpstream("small", tmp)
    os.environ[KEY_ENV] = "sk-ant-test"  # the router process inherits it; removed below
    try:
        with router(config(fake, local.base_url), tmp) as process:
            yield fake, process, local
    finally:
        os.environ.pop(KEY_ENV, None)
        local.stop()
        fake.stop()


@pytest.fixture
def bed(anthropic_bed: tuple[FakeAnthropic, Router, FakeUpstream]) -> tuple[FakeAnthropic, Router]:
    anthropic_bed[0].reset()
    anthropic_bed[2].reset()
    return anthropic_bed[0], anthropic_bed[1]


def client(process: Router) -> openai.OpenAI:
    return openai.OpenAI(base_url=process.base_url, api_key="none", max_retries=0, timeout=30)


SYSTEM = "You answer in one line."


def test_chat_is_translated_both_ways(bed: tuple[FakeAnthropic, Router]) -> None:
    fake, process = bed
    fake.mode("ok", cache_read=100, cache_write=20)
    reply = client(process).chat.completions.with_raw_response.create(
        model="claude",
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is six times seven?"},
            {"role": "assistant", "content": "Let me think."},
            {"role": "user", "content": "Well?"},
        ],
        temperature=0.2,
        metadata={"team": "research"},
        user="user-7",
    )
    assert reply.headers["x-tiered-tier"] == "claude"
    answer = reply.parse()
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == "The answer is forty two ."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "claude-fake"
    assert answer.usage is not None
    prompt_words = len(f"{SYSTEM} What is six times seven? Let me think. Well?".split())
    assert answer.usage.prompt_tokens == prompt_words + 100 + 20  # Anthropic's input_tokens exclude cached ones
    assert answer.usage.completion_tokens == 6
    assert answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 100

    body, headers = fake.last()
    assert body["system"] == [{"type": "text", "text": SYSTEM}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "What is six times seven?"}]
    assert body["max_tokens"] == 4096  # the tier's defaultMaxTokens: Anthropic requires one
    assert body["temperature"] == 0.2
    assert body["metadata"] == {"user_id": "user-7"}  # tiered's attribution (team) does not leave
    assert body["model"] == "claude-fake"
    assert headers["x-api-key"] == "set"
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers


def test_cache_control_arrives_where_the_client_put_it(bed: tuple[FakeAnthropic, Router]) -> None:
    fake, process = bed
    breakpoint_mark = {"type": "ephemeral"}
    long_context = "A long shared document. " * 20
    client(process).chat.completions.create(
        model="claude",
        messages=[
            {
                "role": "system",
                "content": [{"type": "text", "text": long_context, "cache_control": breakpoint_mark}],
            },
            {"role": "user", "content": "Summarise it.", "cache_control": breakpoint_mark},  # type: ignore[misc]
        ],
    )
    body, _ = fake.last()
    assert body["system"] == [{"type": "text", "text": long_context, "cache_control": breakpoint_mark}]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Summarise it.", "cache_control": breakpoint_mark}]}
    ]


def test_stream_is_translated_with_usage_and_finish_reason(bed: tuple[FakeAnthropic, Router]) -> None:
    fake, process = bed
    fake.mode("ok", cache_read=40)
    chunks = list(
        client(process).chat.completions.create(
            model="claude",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi there"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The answer is forty two ."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(f"{SYSTEM} hi there".split()) + 40, 6)
    body, _ = fake.last()
    assert body["stream"] is True and body["system"] == [{"type": "text", "text": SYSTEM}]


def test_stream_without_include_usage_has_no_usage_chunk(bed: tuple[FakeAnthropic, Router]) -> None:
    _, process = bed
    chunks = list(
        client(process).chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert chunks and all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The answer is forty two ."


def test_max_tokens_default_and_explicit_map_to_length(bed: tuple[FakeAnthropic, Router]) -> None:
    fake, process = bed
    short = client(process).chat.completions.create(model="claude-short", messages=[{"role": "user", "content": "hi"}])
    assert fake.last()[0]["max_tokens"] == 3
    assert (short.choices[0].message.content, short.choices[0].finish_reason) == ("The answer is", "length")
    explicit = client(process).chat.completions.create(
        model="claude-short", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=2
    )
    assert fake.last()[0]["max_tokens"] == 2
    assert explicit.choices[0].finish_reason == "length"


def test_stop_becomes_stop_sequences(bed: tuple[FakeAnthropic, Router]) -> None:
    fake, process = bed
    answer = client(process).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "hi"}], stop="forty"
    )
    assert fake.last()[0]["stop_sequences"] == ["forty"]
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == ("The answer is", "stop")


def test_tool_calls_both_ways(bed: tuple[FakeAnthropic, Router]) -> None:
    fake, process = bed
    tools: Any = [
        {
            "type": "function",
            "function": {"name": "lookup", "description": "Look up x.", "parameters": {"type": "object"}},
        }
    ]
    choice: Any = {"type": "function", "function": {"name": "lookup"}}
    answer = client(process).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "use the tool"}], tools=tools, tool_choice=choice
    )
    body, _ = fake.last()
    assert body["tools"] == [{"name": "lookup", "input_schema": {"type": "object"}, "description": "Look up x."}]
    assert body["tool_choice"] == {"type": "tool", "name": "lookup"}
    assert answer.choices[0].finish_reason == "tool_calls"
    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name, call.function.arguments) == ("toolu_fake1", "lookup", '{"x": 1}')  # type: ignore[union-attr]

    # The tool's result goes back as a user turn holding a tool_result block.
    client(process).chat.completions.create(
        model="claude",
        messages=[
            {"role": "user", "content": "use the tool"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "toolu_fake1", "content": "x is 1"},
        ],
        tools=tools,
    )
    body, _ = fake.last()
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_fake1", "name": "lookup", "input": {"x": 1}}],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_fake1", "content": "x is 1"}],
    }

    streamed = list(
        client(process).chat.completions.create(
            model="claude",
            messages=[{"role": "user", "content": "use the tool"}],
            tools=tools,
            tool_choice=choice,
            stream=True,
        )
    )
    deltas = [d for c in streamed if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id == "toolu_fake1" and deltas[0].function.name == "lookup"  # type: ignore[union-attr]
    assert "".join(d.function.arguments or "" for d in deltas) == '{"x": 1}'  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in streamed if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_text_completion_is_sent_as_one_user_message(bed: tuple[FakeAnthropic, Router]) -> None:
    fake, process = bed
    answer = client(process).completions.create(model="claude", prompt="Say it.", max_tokens=5)
    assert fake.last()[0]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Say it."}]}]
    assert answer.object == "text_completion"
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == ("The answer is forty two", "length")
    chunks = list(client(process).completions.create(model="claude", prompt="Say it.", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "The answer is forty two ."


def test_anthropic_errors_keep_their_status_in_openai_shape(bed: tuple[FakeAnthropic, Router]) -> None:
    fake, process = bed
    fake.mode("error", status=403, type="permission_error")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(process).chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert denied.value.status_code == 403
    assert denied.value.body == {
        "message": "the fake is told to fail",
        "type": "permission_error",
        "param": None,
        "code": "permission_error",
    }
    fake.mode("error", status=400, type="invalid_request_error")
    with pytest.raises(openai.BadRequestError, match="the fake is told to fail"):
        client(process).chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "hi"}], stream=True
        )


def test_overloaded_is_retried_then_answered(bed: tuple[FakeAnthropic, Router]) -> None:
    fake, process = bed
    fake.mode("error", status=529, type="overloaded_error", times=1)
    answer = client(process).chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "The answer is forty two ."
    fake.mode("error", status=529, type="overloaded_error")
    with pytest.raises(openai.APIStatusError) as exhausted:
        client(process).chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert exhausted.value.status_code == 502


def test_error_event_mid_stream_raises_in_the_sdk(bed: tuple[FakeAnthropic, Router]) -> None:
    fake, process = bed
    fake.mode("stream_error", type="overloaded_error")
    before = process.metric("tiered_router_requests_total", tier="claude", status="502")
    stream = client(process).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError, match="the fake is told to fail"):
        for chunk in stream:
            seen.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in seen if c.choices) == "The"
    assert process.metric("tiered_router_requests_total", tier="claude", status="502") == before + 1


def test_cost_is_priced_from_anthropic_usage(bed: tuple[FakeAnthropic, Router]) -> None:
    fake, process = bed
    fake.mode("ok", cache_read=1000, cache_write=200)
    before = process.http.get("/v1/tiered/costs").json()["totals"]
    client(process).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "one two three"}], extra_headers={"x-tiered-team": "t"}
    )
    list(
        client(process).chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "one two three"}], stream=True
        )
    )
    after = process.http.get("/v1/tiered/costs").json()["totals"]
    prompt, completion = 3 + 1000 + 200, 6
    assert after["requests"] - before["requests"] == 2
    assert after["input_tokens"] - before["input_tokens"] == 2 * prompt
    assert after["output_tokens"] - before["output_tokens"] == 2 * completion
    assert after["estimated_requests"] == before["estimated_requests"]
    expected = 2 * (prompt * PRICE_IN + completion * PRICE_OUT) / 1e6  # no cache rates set: the input price
    assert after["cost_usd"] - before["cost_usd"] == pytest.approx(expected)


def test_escalation_and_fallback_to_the_anthropic_tier(
    anthropic_bed: tuple[FakeAnthropic, Router, FakeUpstream],
) -> None:
    fake, process, local = anthropic_bed
    fake.reset()
    local.reset()
    local.control.post("/_fake/logprobs", json={"logprob": -2.3}).raise_for_status()  # confidence 0.1 < 0.7
    raw = client(process).chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    )
    assert (raw.headers["x-tiered-tier"], raw.headers["x-tiered-escalation"]) == ("claude", "escalated")
    answer = raw.parse()
    assert answer.object == "chat.completion" and answer.choices[0].message.content == "The answer is forty two ."
    body, _ = fake.last()
    assert body["system"] == [{"type": "text", "text": SYSTEM}] and "logprobs" not in body

    local.mode("fail", status=500)
    raw = client(process).chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert raw.headers["x-tiered-tier"] == "claude"  # small failed before the first byte: its fallback answered
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "The answer is forty two ."


def test_cached_tokens_are_priced_at_the_cache_rates(anthropic_bed: tuple[FakeAnthropic, Router, FakeUpstream]) -> None:
    fake, process, local = anthropic_bed
    fake.reset()
    process.apply(config(fake, local.base_url, cachedInputPerMTok=PRICE_CACHED, cacheWritePerMTok=PRICE_WRITE))
    try:
        fake.mode("ok", cache_read=1000, cache_write=200)
        headers = {"x-tiered-feature": "cache-rates"}
        messages: Any = [{"role": "user", "content": "one two three"}]
        client(process).chat.completions.create(model="claude", messages=messages, extra_headers=headers)
        stream = client(process).chat.completions.create(
            model="claude", messages=messages, stream=True, extra_headers=headers
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        rows = process.http.get("/v1/tiered/costs").json()["by_tier_team_feature"]
        [row] = [r for r in rows if r["feature"] == "cache-rates"]
    finally:
        process.apply(config(fake, local.base_url))
    assert row["requests"] == 2
    assert (row["input_tokens"], row["cached_input_tokens"], row["cache_write_tokens"]) == (2 * 1203, 2000, 400)
    one = (3 * PRICE_IN + 1000 * PRICE_CACHED + 200 * PRICE_WRITE + 6 * PRICE_OUT) / 1e6
    assert row["cost_usd"] == pytest.approx(2 * one)
