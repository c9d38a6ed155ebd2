"""A small, real server speaking Anthropic's Messages API, as a test double for `api: anthropic` tiers.

`POST /v1/messages` checks what the real API checks first (an `x-api-key`, an `anthropic-version`, a
positive `max_tokens`, messages alternating `user`/`assistant` with no `system` role among them, content
as a string or blocks) and answers 400 `invalid_request_error` in Anthropic's error shape otherwise. It
replies "The answer is forty two ." one word per token, cut at `max_tokens` (`stop_reason: max_tokens`)
or at a word in `stop_sequences` (`stop_sequence`); with `tools` and `tool_choice` naming a tool it calls
that tool (`tool_use`). Streams are Anthropic SSE (`message_start`, `ping`, `content_block_*`,
`message_delta`, `message_stop`). Usage counts the prompt's words as `input_tokens`, plus the
configured `cache_read_input_tokens` / `cache_creation_input_tokens`.

Control API (under `/_fake/`):
- `POST /_fake/mode` `{"mode": "ok"|"error"|"stream_error", "status": 529, "type": "overloaded_error",
  "times": N, "cache_read": R, "cache_write": W}`: `error` answers `status` with an Anthropic error body;
  `stream_error` starts a stream, sends one text delta, then an `error` event. `times` bounds the error
  modes (omit for "until changed").
- `GET /_fake/stats` → `{"requests": N, "bodies": [...], "headers": [...]}` (last 50; `x-api-key` shown
  only as `set`); `POST /_fake/reset`.

Run: `python -m tiered_devstack.fake_anthropic [--host 127.0.0.1] [--port 0]`; it prints
`listening on http://HOST:PORT` once ready; start it with `tiered_devstack.fake_upstream.spawn`.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections import deque
from typing import Any

from aiohttp import web

REPLY_WORDS = ["The", "answer", "is", "forty", "two", "."]
ROLES = ("user", "assistant")


class FakeState:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.mode = "ok"
        self.status = 529
        self.error_type = "overloaded_error"
        self.times: int | None = None
        self.cache_read = 0
        self.cache_write = 0
        self.requests = 0
        self.bodies: deque[Any] = deque(maxlen=50)
        self.headers: deque[dict[str, str]] = deque(maxlen=50)

    def take_mode(self) -> str:
        if self.mode == "ok" or self.times is None:
            return self.mode
        if self.times <= 0:
            return "ok"
        self.times -= 1
        return self.mode


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def invalid(message: str) -> web.Response:
    return web.json_response(error_body("invalid_request_error", message), status=400)


def problem(body: Any, headers: Any) -> str | None:
    """Why the real API would refuse this request with a 400, or None."""
    if not isinstance(body, dict):
        return "body: expected an object"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if not (isinstance(content, str) and content) and not (isinstance(content, list) and content):
            return f"messages.{i}: all messages must have non-empty content"
        if isinstance(content, list) and any(not isinstance(b, dict) or "type" not in b for b in content):
            return f"messages.{i}.content: every block needs a type"
    if messages[0]["role"] != "user":
        return "messages: the first message must use the user role"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a string or a list of text blocks"
    return None


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(text_of(b.get("text") or b.get("content") or "") for b in content if isinstance(b, dict))
    return ""


def prompt_words(body: dict[str, Any]) -> int:
    text = text_of(body.get("system") or "") + " " + " ".join(text_of(m.get("content")) for m in body["messages"])
    return len(text.split())


def answer(body: dict[str, Any]) -> tuple[list[str], str, str | None, dict[str, Any] | None]:
    """(words, stop_reason, stop_sequence, tool call) for a request."""
    choice = body.get("tool_choice") or {}
    tools = body.get("tools") or []
    if choice.get("type") == "tool" and any(t.get("name") == choice.get("name") for t in tools):
        return (
            [],
            "tool_use",
            None,
            {"type": "tool_use", "id": "toolu_fake1", "name": choice["name"], "input": {"x": 1}},
        )
    words: list[str] = []
    for word in REPLY_WORDS:
        if word in (body.get("stop_sequences") or []):
            return words, "stop_sequence", word, None
        if len(words) == body["max_tokens"]:
            return words, "max_tokens", None, None
        words.append(word)
    return words, "end_turn", None, None


def usage(state: FakeState, body: dict[str, Any], output: int) -> dict[str, int]:
    return {
        "input_tokens": prompt_words(body),
        "cache_creation_input_tokens": state.cache_write,
        "cache_read_input_tokens": state.cache_read,
        "output_tokens": output,
    }


async def messages(request: web.Request) -> web.StreamResponse:
    state: FakeState = request.app["state"]
    state.requests += 1
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        return invalid("body: invalid JSON")
    state.bodies.append(body)
    seen = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith(("x-", "anthropic-", "author"))}
    if "x-api-key" in seen:
        seen["x-api-key"] = "set"
    state.headers.append(seen)
    if not request.headers.get("x-api-key"):
        return web.json_response(error_body("authentication_error", "x-api-key header is required"), status=401)
    if not request.headers.get("anthropic-version"):
        return invalid("anthropic-version: header is required")
    reason = problem(body, request.headers)
    if reason is not None:
        return invalid(reason)
    mode = state.take_mode()
    if mode == "error":
        return web.json_response(error_body(state.error_type, "the fake is told to fail"), status=state.status)
    words, stop_reason, stop_sequence, tool = answer(body)
    model = body.get("model")
    message_id = f"msg_fake{state.requests}"
    if not body.get("stream"):
        text = " ".join(words)
        content: list[dict[str, Any]] = [tool] if tool else [{"type": "text", "text": text}]
        return web.json_response(
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": stop_sequence,
                "usage": usage(state, body, len(words) or 3),
            }
        )
    return await stream(request, state, body, message_id, words, stop_reason, stop_sequence, tool, mode)


async def stream(
    request: web.Request,
    state: FakeState,
    body: dict[str, Any],
    message_id: str,
    words: list[str],
    stop_reason: str,
    stop_sequence: str | None,
    tool: dict[str, Any] | None,
    mode: str,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)

    async def send(kind: str, data: dict[str, Any]) -> None:
        await response.write(f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode())

    start_usage = {**usage(state, body, 1)}
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    await send("message_start", {"message": message})
    await send("ping", {})
    if tool is not None:
        await send("content_block_start", {"index": 0, "content_block": {**tool, "input": {}}})
        for piece in ('{"x"', ": 1}"):
            await send(
                "content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}}
            )
    else:
        await send("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        for i, word in enumerate(words):
            text = word if i == 0 else " " + word
            await send("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
            if mode == "stream_error":
                await send("error", {"error": {"type": state.error_type, "message": "the fake is told to fail"}})
                await response.write_eof()
                return response
    await send("content_block_stop", {"index": 0})
    output = len(words) or 3
    await send(
        "message_delta",
        {"delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": {"output_tokens": output}},
    )
    await send("message_stop", {})
    await response.write_eof()
    return response


async def set_mode(request: web.Request) -> web.Response:
    state: FakeState = request.app["state"]
    spec = await request.json()
    state.mode = spec.get("mode", "ok")
    state.status = int(spec.get("status", 529))
    state.error_type = str(spec.get("type", "overloaded_error"))
    state.times = spec.get("times")
    state.cache_read = int(spec.get("cache_read", 0))
    state.cache_write = int(spec.get("cache_write", 0))
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    state: FakeState = request.app["state"]
    return web.json_response({"requests": state.requests, "bodies": list(state.bodies), "headers": list(state.headers)})


async def reset(request: web.Request) -> web.Response:
    request.app["state"].reset()
    return web.json_response({"ok": True})


def build_app() -> web.Application:
    app = web.Application()
    app["state"] = FakeState()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/_fake/mode", set_mode)
    app.router.add_get("/_fake/stats", stats)
    app.router.add_post("/_fake/reset", reset)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]

    def announce(*_: Any) -> None:
        print(f"listening on http://{host}:{port}", flush=True)

    web.run_app(build_app(), sock=sock, print=announce, access_log=None, shutdown_timeout=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
