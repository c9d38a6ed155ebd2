"""The Anthropic translation tables (`tiered_router.anthropic`): requests, answers, errors, stream events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from tiered_router import anthropic
from tiered_router.config import RouterConfig, TierApi

MARK = {"type": "ephemeral"}


def request(body: dict[str, Any], chat: bool = True, default: int = 1024) -> dict[str, Any]:
    return anthropic.messages_request(body, chat, "claude-x", default)


@pytest.mark.parametrize(
    ("openai_body", "expected"),
    [
        ({}, {"max_tokens": 1024}),
        ({"max_tokens": 50}, {"max_tokens": 50}),
        ({"max_tokens": 50, "max_completion_tokens": 70}, {"max_tokens": 70}),
        ({"max_tokens": 0}, {"max_tokens": 1024}),
        ({"temperature": 0.3, "top_p": 0.9}, {"max_tokens": 1024, "temperature": 0.3, "top_p": 0.9}),
        ({"stop": "END"}, {"max_tokens": 1024, "stop_sequences": ["END"]}),
        ({"stop": ["a", "b"]}, {"max_tokens": 1024, "stop_sequences": ["a", "b"]}),
        ({"stream": True, "stream_options": {"include_usage": True}}, {"max_tokens": 1024, "stream": True}),
        ({"user": "u1", "metadata": {"team": "x"}}, {"max_tokens": 1024, "metadata": {"user_id": "u1"}}),
        ({"n": 1, "seed": 3, "logprobs": True, "presence_penalty": 1}, {"max_tokens": 1024}),
    ],
)
def test_sampling_fields(openai_body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **openai_body})
    assert {k: v for k, v in out.items() if k not in ("model", "messages")} == expected
    assert out["model"] == "claude-x"


def test_roles_system_and_merging() -> None:
    out = request(
        {
            "messages": [
                {"role": "system", "content": "rule one"},
                {"role": "developer", "content": [{"type": "text", "text": "rule two", "cache_control": MARK}]},
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}]},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": "c", "cache_control": MARK},
                {"role": "user", "content": "d"},
            ]
        }
    )
    assert out["system"] == [
        {"type": "text", "text": "rule one"},
        {"type": "text", "text": "rule two", "cache_control": MARK},
    ]
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c", "cache_control": MARK}]},
        {"role": "user", "content": [{"type": "text", "text": "d"}]},
    ]


@pytest.mark.parametrize(
    ("part", "block"),
    [
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        ),
        (
            {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}, "cache_control": MARK},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}, "cache_control": MARK},
        ),
        (
            {"type": "document", "source": {"type": "text", "data": "doc"}},
            {"type": "document", "source": {"type": "text", "data": "doc"}},
        ),
    ],
)
def test_content_parts(part: dict[str, Any], block: dict[str, Any]) -> None:
    out = request({"messages": [{"role": "user", "content": [part]}]})
    assert out["messages"][0]["content"] == [block]


def test_tools_and_tool_turns() -> None:
    out = request(
        {
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "42"},
                {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "43"}]},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        }
    )
    assert out["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
                {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "43"}]},
            ],
        },
    ]
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object"}}]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = request({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": choice})
    assert out["tool_choice"] == expected


def test_text_completion_prompt_is_one_user_message() -> None:
    out = request({"prompt": "Once upon", "max_tokens": 9}, chat=False)
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Once upon"}]}]
    assert out["max_tokens"] == 9


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("something_new", "stop"),
        (None, None),
    ],
)
def test_finish_reasons(stop_reason: str | None, finish: str | None) -> None:
    assert anthropic.finish_reason(stop_reason) == finish


USAGE = {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "output_tokens": 5}


def test_usage_counts_cached_tokens_in_the_prompt() -> None:
    assert anthropic.openai_usage(USAGE) == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100},
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
    }
    assert anthropic.openai_usage({"input_tokens": 3, "output_tokens": 1})["prompt_tokens"] == 3


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [{"type": "text", "text": "Hello"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
    "stop_reason": "tool_use",
    "usage": USAGE,
}


def test_message_to_chat_completion() -> None:
    status, data = anthropic.reply(200, json.dumps(MESSAGE).encode(), True, 7)
    answer = json.loads(data)
    assert status == 200
    assert answer["object"] == "chat.completion" and answer["created"] == 7 and answer["id"] == "msg_1"
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello",
                "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]
    assert answer["usage"]["prompt_tokens"] == 130


def test_message_to_text_completion() -> None:
    message = {**MESSAGE, "content": [{"type": "text", "text": "Hi"}], "stop_reason": "max_tokens"}
    answer = json.loads(anthropic.reply(200, json.dumps(message).encode(), False, 0)[1])
    assert answer["object"] == "text_completion"
    assert answer["choices"] == [{"index": 0, "text": "Hi", "logprobs": None, "finish_reason": "length"}]


@pytest.mark.parametrize(
    ("status", "body", "expected_status", "message", "kind"),
    [
        (
            400,
            b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}',
            400,
            "bad",
            "invalid_request_error",
        ),
        (
            401,
            b'{"type":"error","error":{"type":"authentication_error","message":"key"}}',
            401,
            "key",
            "authentication_error",
        ),
        (
            429,
            b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}',
            429,
            "slow",
            "rate_limit_error",
        ),
        (502, b"<html>bad gateway</html>", 502, "upstream answered 502: <html>bad gateway</html>", "api_error"),
        (
            200,
            b'{"not": "a message"}',
            502,
            'the Anthropic upstream answered 200 without a message: {"not": "a message"}',
            "upstream_error",
        ),
    ],
)
def test_errors_keep_status_in_openai_shape(
    status: int, body: bytes, expected_status: int, message: str, kind: str
) -> None:
    got_status, data = anthropic.reply(status, body, True, 0)
    assert got_status == expected_status
    assert json.loads(data) == {"error": {"message": message, "type": kind, "param": None, "code": kind}}


def sse(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


STREAM = b"".join(
    [
        sse(
            "message_start",
            message={
                "id": "msg_s",
                "model": "claude-x",
                "usage": {"input_tokens": 4, "cache_read_input_tokens": 8, "output_tokens": 1},
            },
        ),
        sse("ping"),
        sse("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        sse("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hel"}),
        sse("content_block_delta", index=0, delta={"type": "text_delta", "text": "lo"}),
        sse("content_block_stop", index=0),
        sse("content_block_start", index=1, content_block={"type": "tool_use", "id": "t", "name": "f", "input": {}}),
        sse("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"a":'}),
        sse("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": "1}"}),
        sse("content_block_stop", index=1),
        sse("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 9}),
        sse("message_stop"),
    ]
)


def openai_events(data: bytes) -> list[Any]:
    events = [e for e in data.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def test_stream_events_to_chunks() -> None:
    translator = anthropic.StreamTranslator(chat=True, created=5)
    events = openai_events(translator.feed(STREAM))
    deltas = [e["choices"][0]["delta"] for e in events[:-2]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {"tool_calls": [{"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]},
        {},
    ]
    assert [e["choices"][0]["finish_reason"] for e in events[:-2]] == [None] * 6 + ["tool_calls"]
    assert all(e["id"] == "msg_s" and e["object"] == "chat.completion.chunk" and e["created"] == 5 for e in events[:-1])
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert (usage_chunk["usage"]["prompt_tokens"], usage_chunk["usage"]["completion_tokens"]) == (12, 9)
    assert events[-1] == "[DONE]"
    assert translator.done and translator.failed is None


def test_stream_split_anywhere_gives_the_same_chunks() -> None:
    whole = anthropic.StreamTranslator(chat=True, created=0).feed(STREAM)
    crlf = STREAM.replace(b"\n", b"\r\n")
    for data, size in ((STREAM, 1), (STREAM, 7), (crlf, 5)):
        translator = anthropic.StreamTranslator(chat=True, created=0)
        pieces = b"".join(translator.feed(data[i : i + size]) for i in range(0, len(data), size))
        assert pieces == whole


def test_text_completion_stream() -> None:
    events = openai_events(anthropic.StreamTranslator(chat=False, created=0).feed(STREAM))
    texts = [e["choices"][0]["text"] for e in events if isinstance(e, dict) and e["choices"]]
    assert "".join(texts) == "Hello"
    assert events[0]["object"] == "text_completion"


def test_error_event_becomes_an_openai_error_event() -> None:
    translator = anthropic.StreamTranslator(chat=True, created=0)
    data = translator.feed(sse("error", error={"type": "overloaded_error", "message": "Overloaded"}))
    assert openai_events(data) == [
        {"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": "overloaded_error"}}
    ]
    assert translator.failed == "overloaded_error"


def test_headers_carry_the_key_and_version() -> None:
    assert anthropic.headers("k") == [("anthropic-version", anthropic.ANTHROPIC_VERSION), ("x-api-key", "k")]
    assert anthropic.headers(None) == [("anthropic-version", anthropic.ANTHROPIC_VERSION)]


def tier_config(**tier: Any) -> dict[str, Any]:
    base = {"name": "c", "kind": "external", "baseURL": "https://api.anthropic.com/v1"}
    return {"tiers": [{**base, "pricing": {"inputPerMTok": 3, "outputPerMTok": 15}, **tier}], "default": "c"}


def test_config_api_defaults_to_openai_and_refuses_a_messages_endpoint() -> None:
    assert RouterConfig.model_validate(tier_config()).tiers[0].api is TierApi.OPENAI
    tier = RouterConfig.model_validate(tier_config(api="anthropic")).tiers[0]
    assert (tier.api, tier.default_max_tokens) == (TierApi.ANTHROPIC, 4096)
    with pytest.raises(ValidationError, match="names an endpoint"):
        RouterConfig.model_validate(tier_config(api="anthropic", baseURL="https://api.anthropic.com/v1/messages"))
    with pytest.raises(ValidationError, match="api"):
        RouterConfig.model_validate(tier_config(api="gemini"))


def test_tool_choice_without_tools_is_not_sent() -> None:
    assert "tool_choice" not in request({"messages": [{"role": "user", "content": "x"}], "tool_choice": "none"})
