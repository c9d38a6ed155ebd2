"""tiered_serving.openai_api: request validation (OpenAI-shaped 400 naming the field) and response shapes."""

from __future__ import annotations

import json

import pytest
from tiered_serving import openai_api as api

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def chat(**changes: object) -> bytes:
    return json.dumps({**CHAT, **changes}).encode()


def test_a_minimal_chat_request_takes_openai_defaults() -> None:
    request = api.parse_request(api.ChatRequest, chat())
    assert (request.temperature, request.top_p, request.stream) == (1.0, 1.0, False)
    assert request.token_limit() is None
    assert request.logprob_count() is None
    assert request.stop_sequences() == ()


def test_unknown_fields_pass_as_openai_compatible_servers_do() -> None:
    request = api.parse_request(api.ChatRequest, chat(user="u1", metadata={"team": "a"}, service_tier="auto"))
    assert request.messages[0].text() == "hi"


def test_content_parts_are_joined_into_text() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    request = api.parse_request(api.ChatRequest, chat(messages=[{"role": "user", "content": parts}]))
    assert request.messages[0].text() == "ab"


@pytest.mark.parametrize(
    ("changes", "param", "says"),
    [
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "'system'"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"stop": [""]}, "stop.0", "at least 1 character"),
        ({"n": 2}, "n", "not supported"),
        ({"top_logprobs": 3}, "top_logprobs", "needs logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
        ({"stream": "yes"}, "stream", "boolean"),
        ({"tools": [{"type": "function"}]}, "tools", "not supported"),
    ],
)
def test_a_bad_field_is_a_400_naming_it(changes: dict[str, object], param: str, says: str) -> None:
    with pytest.raises(api.ApiError) as caught:
        api.parse_request(api.ChatRequest, chat(**changes))
    error = caught.value
    assert (error.status, error.param, error.type) == (400, param, "invalid_request_error")
    assert says in error.message
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "says"), [(b"{not json", "not valid JSON"), (b"[1]", "JSON object"), (b"\xff", "not valid JSON")]
)
def test_a_body_that_is_not_a_json_object_is_a_400(body: bytes, says: str) -> None:
    with pytest.raises(api.ApiError) as caught:
        api.parse_request(api.ChatRequest, body)
    assert caught.value.status == 400 and says in caught.value.message


def test_completion_requests() -> None:
    request = api.parse_request(api.CompletionRequest, b'{"prompt": ["one"], "logprobs": 2, "stop": "x"}')
    assert (request.prompt_text(), request.token_limit(), request.logprob_count()) == ("one", 16, 2)
    assert request.stop_sequences() == ("x",)
    for body, param in [
        (b'{"prompt": ["a", "b"]}', "prompt"),
        (b'{"prompt": "a", "logprobs": 6}', "logprobs"),
        (b'{"prompt": "a", "echo": true}', "echo"),
        (b'{}', "prompt"),
    ]:
        with pytest.raises(api.ApiError) as caught:
            api.parse_request(api.CompletionRequest, body)
        assert caught.value.param == param, body


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert api.parse_request(api.ChatRequest, chat(max_tokens=9, max_completion_tokens=5)).token_limit() == 5


TOKENS = [
    api.TokenLogprob(b"Hel", -0.25, ((b"Hel", -0.25), (b"He", -2.0))),
    api.TokenLogprob(b"lo", -0.5, ((b"lo", -0.5),)),
]
IDENTITY = api.Identity("chatcmpl-1", 1700000000, "smol")


def test_chat_logprobs_have_openai_chat_shape() -> None:
    shaped = api.chat_logprobs(TOKENS)
    assert shaped["refusal"] is None
    first = shaped["content"][0]
    assert first == {
        "token": "Hel",
        "logprob": -0.25,
        "bytes": [72, 101, 108],
        "top_logprobs": [
            {"token": "Hel", "logprob": -0.25, "bytes": [72, 101, 108]},
            {"token": "He", "logprob": -2.0, "bytes": [72, 101]},
        ],
    }


def test_completion_logprobs_have_the_legacy_parallel_lists_with_offsets() -> None:
    assert api.completion_logprobs(TOKENS, text_offset=4) == {
        "tokens": ["Hel", "lo"],
        "token_logprobs": [-0.25, -0.5],
        "top_logprobs": [{"Hel": -0.25, "He": -2.0}, {"lo": -0.5}],
        "text_offset": [4, 7],
    }


def test_a_partial_utf8_token_is_shown_with_replacement_but_keeps_its_bytes() -> None:
    shaped = api.chat_logprobs([api.TokenLogprob("é".encode()[:1], -1.0)])
    assert shaped["content"][0]["bytes"] == [0xC3]
    assert shaped["content"][0]["token"] == "\ufffd"


def test_responses_carry_usage_and_finish_reason() -> None:
    done = api.Completed("Hello", "length", api.Usage(3, 2), TOKENS)
    chat_body = api.chat_response(IDENTITY, done)
    assert chat_body["object"] == "chat.completion"
    assert chat_body["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert chat_body["choices"][0]["finish_reason"] == "length"
    assert chat_body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    completion_body = api.completion_response(IDENTITY, api.Completed("Hello", "stop", api.Usage(3, 2)))
    assert completion_body["object"] == "text_completion"
    assert completion_body["choices"][0]["logprobs"] is None


def test_stream_chunks_say_usage_null_until_the_usage_chunk() -> None:
    chunk = api.chat_chunk(IDENTITY, {"content": "x"}, include_usage=True)
    assert chunk["usage"] is None and chunk["object"] == "chat.completion.chunk"
    assert "usage" not in api.chat_chunk(IDENTITY, {"content": "x"})
    last = api.usage_chunk(IDENTITY, "chat.completion.chunk", api.Usage(1, 2))
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 3


def test_sse_framing() -> None:
    assert api.sse({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert api.SSE_DONE == b"data: [DONE]\n\n"
    error = api.not_loaded("sha256 mismatch")
    assert error.status == 503
    assert json.loads(api.sse_error(error)[len(b"data: ") :])["error"]["code"] == "model_not_loaded"
