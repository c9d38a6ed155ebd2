"""Anthropic tiers (`api: anthropic`): OpenAI requests into the Messages API and its answers back, pure.

The router speaks OpenAI to its clients. For a tier whose upstream speaks Anthropic's Messages API
(`POST <baseURL>/messages`, `x-api-key` and `anthropic-version` headers), this module translates:

- requests: chat messages (system and developer messages → `system` blocks; user, assistant and tool turns
  → content blocks, `cache_control` kept where the client put it), `max_tokens` (required there: the
  tier's `defaultMaxTokens` when the request has none), `temperature`, `top_p`, `stop` → `stop_sequences`,
  `stream`, `user` → `metadata.user_id`, tools and `tool_choice`. A text completion's `prompt` becomes one
  user message (the model answers it as a chat turn; it does not continue the text);
- answers: a `message` → `chat.completion` (or `text_completion`), `stop_reason` → `finish_reason`, usage
  (`prompt_tokens` = input + cache read + cache write tokens, as Anthropic's `input_tokens` leave the
  cached ones out);
- streams: Anthropic SSE events → `chat.completion.chunk` events, a usage-only chunk, `data: [DONE]`;
  an `error` event → an OpenAI-shaped SSE error (the openai SDK raises it);
- errors: Anthropic error JSON → OpenAI error JSON with the same status.

Must not: do I/O or import an HTTP framework; it sees JSON bodies and bytes, never a request.
"""

from __future__ import annotations

import json
import re
from typing import Any

ANTHROPIC_VERSION = "2023-06-01"
"""The `anthropic-version` header sent upstream (the Messages API's current version)."""
MESSAGES_PATH = "/messages"
"""Appended to an Anthropic tier's baseURL (`https://api.anthropic.com/v1` → `/v1/messages`)."""

SYSTEM_ROLES = frozenset({"system", "developer"})

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic `stop_reason` → OpenAI `finish_reason` (an unknown reason maps to `stop`)."""

TOOL_CHOICES: dict[str, dict[str, str]] = {
    "auto": {"type": "auto"},
    "required": {"type": "any"},
    "none": {"type": "none"},
}
"""OpenAI `tool_choice` strings → Anthropic `tool_choice` objects."""

_DATA_URL = re.compile(r"^data:(?P<media>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


def headers(api_key: str | None) -> list[tuple[str, str]]:
    """The headers an Anthropic tier needs besides the content type (instead of `Authorization: Bearer`)."""
    out = [("anthropic-version", ANTHROPIC_VERSION)]
    if api_key is not None:
        out.append(("x-api-key", api_key))
    return out


# Requests


def messages_request(body: dict[str, Any], chat: bool, model: str, default_max_tokens: int) -> dict[str, Any]:
    """The Messages API request for an OpenAI chat (`chat`) or text completion request `body`."""
    if chat:
        system, messages = _conversation(body.get("messages"))
    else:
        system, messages = [], [{"role": "user", "content": _blocks(_prompt(body.get("prompt")))}]
    out: dict[str, Any] = {"model": model}
    if system:
        out["system"] = system
    out["messages"] = messages
    out["max_tokens"] = _max_tokens(body, default_max_tokens)
    for key in ("temperature", "top_p"):
        if isinstance(body.get(key), int | float):
            out[key] = body[key]
    sequences = _stop_sequences(body.get("stop"))
    if sequences:
        out["stop_sequences"] = sequences
    if body.get("stream") is True:
        out["stream"] = True
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    tools = [_tool(t) for t in body.get("tools") or [] if isinstance(t, dict)]
    if tools:
        out["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and tools:  # the Messages API refuses a tool_choice without tools
        out["tool_choice"] = choice
    return out


def _max_tokens(body: dict[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _stop_sequences(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop if isinstance(s, str)] if isinstance(stop, list) else []


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list):  # a batch of one prompt (or token ids, which cannot be translated)
        return "".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


def _conversation(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages): system and developer turns leave the list; consecutive turns of one role
    merge into one (the Messages API alternates user and assistant; tool results are user turns)."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        blocks = _blocks(message.get("content"))
        if role in SYSTEM_ROLES:
            system.extend(_with_cache_control(blocks, message))
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(message)]
        elif role == "assistant":
            blocks += [_tool_use(call) for call in message.get("tool_calls") or [] if isinstance(call, dict)]
        else:
            role = "user"
        blocks = _with_cache_control(blocks, message)
        if not blocks:
            continue  # e.g. an empty assistant turn: the Messages API refuses empty content
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return system, out


def _with_cache_control(blocks: list[dict[str, Any]], message: dict[str, Any]) -> list[dict[str, Any]]:
    """A message-level `cache_control` (as LiteLLM accepts it) marks the message's last block, which is
    where Anthropic puts a cache breakpoint."""
    mark = message.get("cache_control")
    if isinstance(mark, dict) and blocks:
        blocks[-1] = {**blocks[-1], "cache_control": mark}
    return blocks


def _blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI message content (a string or content parts) → Anthropic content blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        return []
    blocks = []
    for part in content:
        if isinstance(part, str):
            part = {"type": "text", "text": part}
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            if not part.get("text"):
                continue
            block: dict[str, Any] = {"type": "text", "text": part["text"]}
        elif kind == "image_url":
            block = _image(part.get("image_url"))
        else:
            block = dict(part)  # e.g. an Anthropic `document` block sent as is: the upstream judges it
        if "cache_control" in part:
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _image(image: Any) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    url = url if isinstance(url, str) else ""
    inline = _DATA_URL.match(url)
    if inline:
        return {"type": "image", "source": {"type": "base64", "media_type": inline["media"], "data": inline["data"]}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        arguments = {}
    return {
        "type": "tool_use",
        "id": call.get("id"),
        "name": function.get("name"),
        "input": arguments if isinstance(arguments, dict) else {},
    }


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    return {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id"),
        "content": content if isinstance(content, str) else _blocks(content),
    }


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    out = {"name": function.get("name"), "input_schema": function.get("parameters") or {"type": "object"}}
    if function.get("description"):
        out["description"] = function["description"]
    if "cache_control" in tool:
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None = None
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        out = dict(TOOL_CHOICES[choice])
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    if parallel is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


# Answers


def _count(value: dict[str, Any], key: str) -> int:
    n = value.get(key)
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


def openai_usage(value: dict[str, Any]) -> dict[str, Any]:
    """Anthropic usage → OpenAI usage, as LiteLLM writes it: `prompt_tokens` includes the cache reads
    (also in `prompt_tokens_details.cached_tokens`) and writes, whose counts stay next to it under their
    Anthropic names (`tiered_router.cost` prices them at the tier's cached-read and cache-write rates)."""
    read, written = _count(value, "cache_read_input_tokens"), _count(value, "cache_creation_input_tokens")
    prompt, completion = _count(value, "input_tokens") + read + written, _count(value, "output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
    }


def finish_reason(stop_reason: Any) -> str | None:
    if not isinstance(stop_reason, str):
        return None
    return FINISH_REASONS.get(stop_reason, "stop")


def completion(message: dict[str, Any], chat: bool, created: int) -> dict[str, Any]:
    """An Anthropic `message` → an OpenAI `chat.completion` (or `text_completion` when not `chat`)."""
    content = [b for b in message.get("content") or [] if isinstance(b, dict)]
    text = "".join(b.get("text") or "" for b in content if b.get("type") == "text")
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input") or {})},
        }
        for b in content
        if b.get("type") == "tool_use"
    ]
    finish = finish_reason(message.get("stop_reason"))
    choice: dict[str, Any]
    if chat:
        reply: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            reply["tool_calls"] = calls
        choice = {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    answer: dict[str, Any] = {
        "id": message.get("id"),
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": message.get("model"),
        "choices": [choice],
    }
    if isinstance(message.get("usage"), dict):
        answer["usage"] = openai_usage(message["usage"])
    return answer


def openai_error(status: int, data: bytes) -> dict[str, Any]:
    """An Anthropic error body (`{"type": "error", "error": {"type", "message"}}`) → OpenAI's error shape;
    a body that is not one (a proxy's HTML page) becomes the message, cut short."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type")
        return _error(error["message"], kind if isinstance(kind, str) else "api_error")
    text = data[:500].decode("utf-8", "replace").strip()
    return _error(f"upstream answered {status}: {text or 'no body'}", "api_error")


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


def reply(status: int, data: bytes, chat: bool, created: int) -> tuple[int, bytes]:
    """An Anthropic JSON reply → (status, OpenAI JSON body). A 200 that is not a message becomes a 502
    (the client would not understand it either)."""
    if status != 200:
        return status, json.dumps(openai_error(status, data)).encode()
    try:
        message = json.loads(data)
    except ValueError:
        message = None
    if not isinstance(message, dict) or message.get("type") != "message":
        text = data[:200].decode("utf-8", "replace")
        body = _error(f"the Anthropic upstream answered 200 without a message: {text}", "upstream_error")
        return 502, json.dumps(body).encode()
    return 200, json.dumps(completion(message, chat, created)).encode()


# Streams

_EVENT_END = re.compile(rb"\r?\n\r?\n")


class StreamTranslator:
    """Anthropic SSE in (`feed` whatever bytes arrive), OpenAI SSE out: whole events only, in order.

    OpenAI chunks: a first one with the assistant role, one per text or tool-argument delta, one with
    `finish_reason`, a usage-only chunk (`choices: []`; the router removes it for clients that did not ask)
    and `data: [DONE]` at `message_stop`. `failed` holds the error type after an `error` event.
    """

    def __init__(self, chat: bool, created: int) -> None:
        self.chat, self.created = chat, created
        self.id: str | None = None
        self.model: str | None = None
        self.usage_counts: dict[str, Any] = {}
        self.tools: dict[int, int] = {}
        """Anthropic content block index → OpenAI tool call index."""
        self.failed: str | None = None
        self.done = False
        self._buffer = b""

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = []
        while (end := _EVENT_END.search(self._buffer)) is not None:
            event, self._buffer = self._buffer[: end.start()], self._buffer[end.end() :]
            out.append(self.event(event))
        return b"".join(out)

    def event(self, raw: bytes) -> bytes:
        """One Anthropic SSE event (its `event:` and `data:` lines) → OpenAI SSE bytes (maybe none)."""
        data = b"\n".join(line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:"))
        try:
            value = json.loads(data) if data else None
        except ValueError:
            value = None
        if not isinstance(value, dict):
            return b""
        kind = value.get("type")
        if kind == "message_start":
            message = value.get("message") or {}
            self.id, self.model = message.get("id"), message.get("model")
            self._count(message.get("usage"))
            return self._chunk({"role": "assistant", "content": ""}) if self.chat else b""
        if kind == "content_block_start":
            return self._block_start(value.get("index"), value.get("content_block") or {})
        if kind == "content_block_delta":
            return self._delta(value.get("index"), value.get("delta") or {})
        if kind == "message_delta":
            self._count(value.get("usage"))
            stop = (value.get("delta") or {}).get("stop_reason")
            return self._chunk({}, finish_reason(stop)) if stop is not None else b""
        if kind == "message_stop":
            self.done = True
            usage_chunk = {**self._envelope(), "choices": [], "usage": openai_usage(self.usage_counts)}
            return _sse(usage_chunk) + b"data: [DONE]\n\n"
        if kind == "error":
            error = value.get("error") or {}
            self.failed = str(error.get("type") or "api_error")
            return _sse(_error(str(error.get("message") or "the upstream stream failed"), self.failed))
        return b""  # ping, content_block_stop, and event types added later

    def _count(self, counts: Any) -> None:
        # message_start carries the input counts, message_delta the (cumulative) output count.
        if isinstance(counts, dict):
            self.usage_counts.update({k: v for k, v in counts.items() if isinstance(v, int)})

    def _block_start(self, index: Any, block: dict[str, Any]) -> bytes:
        if block.get("type") == "tool_use" and self.chat and isinstance(index, int):
            self.tools[index] = len(self.tools)
            call = {
                "index": self.tools[index],
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if block.get("type") == "text" and block.get("text"):
            return self._text(block["text"])
        return b""

    def _delta(self, index: Any, delta: dict[str, Any]) -> bytes:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self._text(delta["text"])
        if kind == "input_json_delta" and index in self.tools:
            call = {"index": self.tools[index], "function": {"arguments": delta.get("partial_json") or ""}}
            return self._chunk({"tool_calls": [call]})
        return b""  # thinking and signature deltas have no OpenAI chat counterpart

    def _text(self, text: str) -> bytes:
        return self._chunk({"content": text}) if self.chat else self._chunk({}, text=text)

    def _envelope(self) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, text: str = "") -> bytes:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return _sse({**self._envelope(), "choices": [choice]})


def _sse(value: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(value).encode() + b"\n\n"
