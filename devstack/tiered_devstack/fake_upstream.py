"""A small, real OpenAI-compatible server used as a test and benchmark double. Not for production.

It answers `/v1/chat/completions` and `/v1/completions` (JSON or SSE, with `usage` and optional
`logprobs`) and `/v1/models`. A control API under `/_fake/` tells it how to misbehave, so tests can drive
the router through failures without timing tricks:

- `POST /_fake/mode` `{"mode": "ok"|"fail"|"429"|"stall"|"hold", "status": 500, "times": N,
  "usage": {"prompt_tokens": P, "completion_tokens": C} | null, "omit_usage": false, "chunks": 3,
  "cached_tokens": R, "cache_write_tokens": W, "usage_shape": "openai"|"anthropic"}`
  `fail` answers `status` (default 500), `429` answers 429, `stall` never answers (until the client gives
  up), `hold` streams the first chunk and then waits for `POST /_fake/release`. `times` limits how many
  requests the mode applies to before falling back to `ok` (omit for "until changed"). `cached_tokens` and
  `cache_write_tokens` (default 0) say how many of the P prompt tokens came from / went into a prompt
  cache: OpenAI's shape reports reads as `prompt_tokens_details.cached_tokens` (writes have no field
  there); `usage_shape: anthropic` answers Anthropic's usage object instead (`input_tokens` = P - R - W,
  `cache_read_input_tokens`, `cache_creation_input_tokens`, `output_tokens`), as a gateway passing it
  through would.
- `POST /_fake/logprobs` `{"logprob": -0.05, "top2": -3.0, "omit": false}` sets the logprobs answers carry
  when a request asks for them (chat `logprobs: true`, text completions `logprobs: N`): every token gets
  `logprob`; with `top_logprobs`/`logprobs` ≥ 2 the second alternative gets `top2`; `omit` answers
  without logprobs even when asked. `reset` restores these defaults.
- `GET /_fake/stats` → `{"requests": N, "bodies": [... last 50 request bodies ...]}`;
  `POST /_fake/reset` clears counters and mode.

`spawn()` and `stop()` start and stop such a process (this one or the router, both announce their URL)
for tests and `bench/router.py`.

Run: `python -m tiered_devstack.fake_upstream [--host 127.0.0.1] [--port 0] [--name NAME] [--fast]`; it
prints `listening on http://HOST:PORT` once ready (port 0 picks a free port). `--fast` (for benchmarks)
answers every request with the same small chat completion from a bare asyncio protocol, so the fake costs
a few microseconds per request and the thing measured is what sits in front of it; no control API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from aiohttp import web

REPLY_WORDS = ["The", "answer", "is", "forty", "two", "."]


class FakeState:
    def __init__(self, name: str) -> None:
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.mode = "ok"
        self.status = 500
        self.times: int | None = None
        self.usage: dict[str, int] | None = None
        self.omit_usage = False
        self.cached_tokens = 0
        self.cache_write_tokens = 0
        self.usage_shape = "openai"
        self.chunks = len(REPLY_WORDS)
        self.logprob = -0.05
        self.top2 = -3.0
        self.omit_logprobs = False
        self.requests = 0
        self.bodies: deque[Any] = deque(maxlen=50)
        self.release = asyncio.Event()

    def take_mode(self) -> str:
        """The mode for this request; counts down `times` so a failure can be limited to N requests."""
        if self.mode == "ok" or self.times is None:
            return self.mode
        if self.times <= 0:
            return "ok"
        self.times -= 1
        return self.mode


def _prompt_words(body: dict[str, Any]) -> int:
    if "messages" in body:
        text = " ".join(str(m.get("content") or "") for m in body["messages"] if isinstance(m, dict))
    else:
        text = str(body.get("prompt") or "")
    return len(text.split())


def _usage(state: FakeState, body: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
    usage = state.usage or {"prompt_tokens": _prompt_words(body), "completion_tokens": completion_tokens}
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    read, written = state.cached_tokens, state.cache_write_tokens
    if state.usage_shape == "anthropic":
        return {"input_tokens": prompt - read - written, "cache_read_input_tokens": read,
                "cache_creation_input_tokens": written, "output_tokens": completion}  # fmt: skip
    answer: dict[str, Any] = {**usage, "total_tokens": prompt + completion}
    if read:
        answer["prompt_tokens_details"] = {"cached_tokens": read}
    return answer


ALTERNATIVE = "perhaps"
"""The second-best token in `top_logprobs` (logprob `top2`)."""


def _alternatives(state: FakeState, word: str, count: int) -> list[tuple[str, float]]:
    return [(word, state.logprob), (ALTERNATIVE, state.top2)][:count]


def _logprobs(state: FakeState, words: list[str], count: int) -> dict[str, Any]:
    """Chat shape: `content[]` of {token, logprob, bytes, top_logprobs[]}."""
    return {
        "content": [
            {
                "token": w,
                "logprob": state.logprob,
                "bytes": list(w.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in _alternatives(state, w, count)
                ],
            }
            for w in words
        ],
        "refusal": None,
    }


def _completion_logprobs(state: FakeState, words: list[str], count: int) -> dict[str, Any]:
    """Text-completion shape: parallel `tokens`, `token_logprobs`, `top_logprobs` (dicts), `text_offset`."""
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    return {
        "tokens": pieces,
        "token_logprobs": [state.logprob for _ in pieces],
        "top_logprobs": [dict(_alternatives(state, p, count)) for p in pieces],
        "text_offset": offsets,
    }


def _asked_logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """Alternatives per token the request asks for, or None for no logprobs."""
    if chat:
        top = body.get("top_logprobs")
        return (top if isinstance(top, int) else 0) if body.get("logprobs") is True else None
    value = body.get("logprobs")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def completions(request: web.Request) -> web.StreamResponse:
    state: FakeState = request.app["state"]
    state.requests += 1
    try:
        body = json.loads(await request.read())
    except ValueError:
        return web.json_response({"error": {"message": "bad json", "type": "invalid_request_error"}}, status=400)
    state.bodies.append(body)
    mode = state.take_mode()
    if mode == "fail":
        return web.json_response({"error": {"message": "fake failure", "type": "server_error"}}, status=state.status)
    if mode == "429":
        return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}}, status=429)
    if mode == "stall":
        await asyncio.sleep(3600)
    chat = request.path.endswith("/chat/completions")
    words = REPLY_WORDS[: state.chunks]
    model = body.get("model", state.name)
    created = int(time.time())
    count = None if state.omit_logprobs else _asked_logprobs(body, chat)
    if not body.get("stream"):
        usage = None if state.omit_usage else _usage(state, body, len(words))
        text = " ".join(words)
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": text},
                "logprobs": None if count is None else _logprobs(state, words, count),
            }
        else:
            logprobs = None if count is None else _completion_logprobs(state, words, count)
            choice = {"index": 0, "finish_reason": "stop", "text": text, "logprobs": logprobs}
        payload = {
            "id": "fake-1",
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
        }
        if usage is not None:
            payload["usage"] = usage
        return web.json_response(payload, headers={"x-fake-upstream": state.name})

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-fake-upstream": state.name})
    await response.prepare(request)
    kind = "chat.completion.chunk" if chat else "text_completion"
    for i, word in enumerate(words):
        delta = word if i == 0 else " " + word
        finish = "stop" if i == len(words) - 1 else None  # on the last chunk, as OpenAI and vLLM send it
        if chat:
            choice = {
                "index": 0,
                "delta": {"content": delta},
                "finish_reason": finish,
                "logprobs": None if count is None else _logprobs(state, [word], count),
            }
        else:
            choice = {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}
        chunk = {"id": "fake-1", "object": kind, "created": created, "model": model, "choices": [choice]}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if i == 0 and mode == "hold":
            await state.release.wait()
    options = body.get("stream_options") or {}
    if options.get("include_usage") and not state.omit_usage:
        chunk = {
            "id": "fake-1",
            "object": kind,
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(state, body, len(words)),
        }
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    name = request.app["state"].name
    return web.json_response({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "fake"}]})


async def set_mode(request: web.Request) -> web.Response:
    state: FakeState = request.app["state"]
    spec = await request.json()
    state.mode = spec.get("mode", "ok")
    state.status = int(spec.get("status", 500))
    state.times = spec.get("times")
    state.usage = spec.get("usage")
    state.omit_usage = bool(spec.get("omit_usage", False))
    state.cached_tokens = int(spec.get("cached_tokens", 0))
    state.cache_write_tokens = int(spec.get("cache_write_tokens", 0))
    state.usage_shape = str(spec.get("usage_shape", "openai"))
    state.chunks = int(spec.get("chunks", len(REPLY_WORDS)))
    state.release = asyncio.Event()
    return web.json_response({"ok": True})


async def set_logprobs(request: web.Request) -> web.Response:
    state: FakeState = request.app["state"]
    spec = await request.json()
    state.logprob = float(spec.get("logprob", -0.05))
    state.top2 = float(spec.get("top2", -3.0))
    state.omit_logprobs = bool(spec.get("omit", False))
    return web.json_response({"ok": True})


async def release(request: web.Request) -> web.Response:
    request.app["state"].release.set()
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    state: FakeState = request.app["state"]
    return web.json_response({"requests": state.requests, "bodies": list(state.bodies)})


async def reset(request: web.Request) -> web.Response:
    request.app["state"].reset()
    return web.json_response({"ok": True})


def build_app(name: str = "fake") -> web.Application:
    app = web.Application()
    app["state"] = FakeState(name)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/_fake/mode", set_mode)
    app.router.add_post("/_fake/logprobs", set_logprobs)
    app.router.add_post("/_fake/release", release)
    app.router.add_get("/_fake/stats", stats)
    app.router.add_post("/_fake/reset", reset)
    return app


FAST_BODY = json.dumps(
    {
        "id": "fake-1",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()
FAST_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(FAST_BODY)).encode()
    + b"\r\n\r\n"
    + FAST_BODY
)


class FastProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1 that reads each request (headers + Content-Length body) and sends FAST_RESPONSE."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(FAST_RESPONSE)


async def serve_fast(sock: socket.socket, announce: Any) -> None:
    server = await asyncio.get_running_loop().create_server(FastProtocol, sock=sock)
    announce()
    async with server:
        await server.serve_forever()


def spawn(
    args: list[str], log: Path, core: int | None = None, startup: float = 30.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Run `python ARGS` (stderr to `log`, optionally pinned to one CPU core) until it prints
    `listening on URL`; returns the process and the URL, or stops it and raises RuntimeError with its log."""
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=None if core is None else (lambda: os.sched_setaffinity(0, {core})),
        )
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + startup
    while time.monotonic() < deadline and process.poll() is None:
        seen += process.stdout.read() or b""
        for line in seen.decode(errors="replace").splitlines():
            if line.startswith("listening on "):
                return process, line.split()[-1]
        time.sleep(0.02)
    stop(process)
    raise RuntimeError(f"{args} did not start: {seen!r}\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill if it has not exited within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--fast", action="store_true", help="canned responses only, for benchmarks")
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]

    def announce(*_: Any) -> None:
        print(f"listening on http://{host}:{port}", flush=True)

    if args.fast:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_fast(sock, announce))
        return 0
    web.run_app(build_app(args.name), sock=sock, print=announce, access_log=None, shutdown_timeout=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
