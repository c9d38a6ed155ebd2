"""The OpenAI wire format of the llama.cpp tier: request validation, response and chunk shaping, SSE framing.

Owns: the request models (`ChatRequest`, `CompletionRequest`) and the one place a bad request becomes an
OpenAI-shaped 400 naming the field (`param`); the shapes of `chat.completion`, `chat.completion.chunk` and
`text_completion` objects with `usage` and `logprobs` as OpenAI returns them; `data: …` / `data: [DONE]`.

Pure: plain functions over pydantic models and dicts. Must not import Ray, Starlette or llama_cpp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_STOP_SEQUENCES = 4
MAX_CHAT_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
SSE_DONE = b"data: [DONE]\n\n"


@dataclass
class ApiError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}` with `status`."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def not_loaded(reason: str) -> ApiError:
    return ApiError(503, f"the model is not loaded: {reason}", type="server_error", code="model_not_loaded")


# ---------------------------------------------------------------------------------------------- requests


class _Request(BaseModel):
    # Unknown fields (user, metadata, service_tier, ...) are accepted and ignored, as OpenAI-compatible
    # servers do: the router passes everything it does not read through untouched.
    # Strict: `"stream": "yes"` or `"max_tokens": "5"` is a 400, as OpenAI answers, not a silent coercion.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class StreamOptions(_Request):
    include_usage: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


Stop = Annotated[str, Field(min_length=1)]


class _Sampling(_Request):
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_CHAT_TOP_LOGPROBS)
    tools: list[Any] | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tools:
            raise ValueError("tools are not supported by the llama.cpp engine")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_count(self) -> int | None:
        """How many alternatives per token (0 = only the chosen token's), or None for no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: int = Field(16, ge=1)  # OpenAI's default for /v1/completions
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: Literal[False] = False
    suffix: None = None

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> int:
        return self.max_tokens

    def logprob_count(self) -> int | None:
        return self.logprobs


R = TypeVar("R", bound=_Request)

# Which field a validator error without a location concerns (model validators report at the root).
_ROOT_ERROR_PARAMS = {"top_logprobs needs": "top_logprobs", "tools are not": "tools"}


def parse_request(model: type[R], body: bytes) -> R:
    """The request, or an ApiError 400 naming the first bad field the way OpenAI does (`messages.0.role`)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _validation_error(error) from None


def _validation_error(error: ValidationError) -> ApiError:
    errors = error.errors(include_url=False)
    # Union members add their own type name to the location (`stop.constrained-str`, `stop.list[...]`):
    # drop them, and of one field's union errors report the member that matched the type (`too_long`),
    # not the members that did not (`string_type`).
    location = [str(part) for part in errors[0]["loc"] if not _is_type_tag(part)]
    same_field = [e for e in errors if [str(p) for p in e["loc"] if not _is_type_tag(p)][: len(location)] == location]
    first = next((e for e in same_field if not e["type"].endswith("_type")), errors[0])
    location = [str(part) for part in first["loc"] if not _is_type_tag(part)]
    message = first["msg"].removeprefix("Value error, ")
    param = ".".join(location) or next((p for s, p in _ROOT_ERROR_PARAMS.items() if message.startswith(s)), None)
    if first["type"] == "literal_error" and location and location[-1] in {"n", "echo", "suffix"}:
        message = f"{location[-1]} is not supported by the llama.cpp engine ({message})"
    return ApiError(400, f"{param or 'body'}: {message}" if param else message, param=param)


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "none"} or "[" in part or "-" in part)


# ---------------------------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and the most likely alternatives (all ≤ 0)."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def body(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


@dataclass(frozen=True)
class Identity:
    """What every object of one response carries: id, creation time (s) and the model name."""

    id: str
    created: int
    model: str


@dataclass
class Completed:
    """A finished generation, as the shaping functions need it."""

    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage
    logprobs: list[TokenLogprob] | None = field(default=None)


def _token_text(token: bytes) -> str:
    return token.decode("utf-8", errors="replace")


def chat_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """Chat shape: `{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal"}`."""
    return {
        "content": [
            {
                "token": _token_text(t.token),
                "logprob": t.logprob,
                "bytes": list(t.token),
                "top_logprobs": [
                    {"token": _token_text(alt), "logprob": lp, "bytes": list(alt)} for alt, lp in t.top
                ],
            }
            for t in tokens
        ],
        "refusal": None,
    }


def completion_logprobs(tokens: list[TokenLogprob], text_offset: int = 0) -> dict[str, Any]:
    """Legacy completions shape: parallel lists `tokens`, `token_logprobs`, `top_logprobs` (dicts), `text_offset`."""
    offsets: list[int] = []
    position = text_offset
    for t in tokens:
        offsets.append(position)
        position += len(_token_text(t.token))
    return {
        "tokens": [_token_text(t.token) for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{_token_text(alt): lp for alt, lp in t.top} for t in tokens],
        "text_offset": offsets,
    }


def chat_response(identity: Identity, done: Completed) -> dict[str, Any]:
    return {
        "id": identity.id,
        "object": "chat.completion",
        "created": identity.created,
        "model": identity.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": done.text},
                "logprobs": None if done.logprobs is None else chat_logprobs(done.logprobs),
                "finish_reason": done.finish_reason,
            }
        ],
        "usage": done.usage.body(),
    }


def completion_response(identity: Identity, done: Completed) -> dict[str, Any]:
    return {
        "id": identity.id,
        "object": "text_completion",
        "created": identity.created,
        "model": identity.model,
        "choices": [
            {
                "index": 0,
                "text": done.text,
                "logprobs": None if done.logprobs is None else completion_logprobs(done.logprobs),
                "finish_reason": done.finish_reason,
            }
        ],
        "usage": done.usage.body(),
    }


def chat_chunk(
    identity: Identity,
    delta: dict[str, str],
    *,
    logprobs: list[TokenLogprob] | None = None,
    finish_reason: str | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    """One `chat.completion.chunk`; with include_usage every chunk but the last carries `"usage": null`."""
    chunk: dict[str, Any] = {
        "id": identity.id,
        "object": "chat.completion.chunk",
        "created": identity.created,
        "model": identity.model,
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "logprobs": None if logprobs is None else chat_logprobs(logprobs),
                "finish_reason": finish_reason,
            }
        ],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def completion_chunk(
    identity: Identity,
    text: str,
    *,
    logprobs: list[TokenLogprob] | None = None,
    text_offset: int = 0,
    finish_reason: str | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": identity.id,
        "object": "text_completion",
        "created": identity.created,
        "model": identity.model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None if logprobs is None else completion_logprobs(logprobs, text_offset),
                "finish_reason": finish_reason,
            }
        ],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(identity: Identity, object_name: str, usage: Usage) -> dict[str, Any]:
    """The last chunk of a stream with `stream_options.include_usage`: no choices, the whole usage."""
    return {
        "id": identity.id,
        "object": object_name,
        "created": identity.created,
        "model": identity.model,
        "choices": [],
        "usage": usage.body(),
    }


def models_list(model_id: str, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "tiered"}],
    }


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event: `data: <compact JSON>` and a blank line."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def sse_error(error: ApiError) -> bytes:
    """A stream that fails after its first byte ends with the error as its last event (then `[DONE]`)."""
    return sse(error.body())
