"""The Ray Serve application of llama-cpp tiers: `tiered_serving.llama_cpp:build_app`, one `LlamaCppServer`.

The operator renders it into a RayService (core/render.py) with args `model_id`, `model_source`, `n_ctx`,
`n_threads` (and optionally `sha256`, `n_batch`); scaling goes through the application's
`deployments: [{name: LlamaCppServer, num_replicas}]` override, never through these args.

HTTP (OpenAI-compatible): `POST /v1/chat/completions`, `POST /v1/completions` (JSON or SSE with `stream`),
`GET /v1/models`. Any `model` name is accepted (a replica serves one model; the router rewrites `model`).

Each replica loads its model in the constructor, so Serve reports it RUNNING only once it can answer. A
model that cannot be served (missing file, sha256 mismatch, unreadable GGUF) does not crash the
constructor: the health check fails with the reason, so Serve retries the replica and ends the deployment
in DEPLOY_FAILED/UNHEALTHY with that message (the operator shows it in the tier's status), and any request
that reaches such a replica gets 503.

The engine is blocking and not thread-safe: one generation at a time per replica on one worker thread,
the others wait on an asyncio lock (their count is the `queue-depth` metric). Tokens go from that thread
to the event loop one by one, so a stream is written as it is generated. A client that goes away stops
its generation at the next token.

Owns the HTTP edge and the engine thread; validation, shaping and the generation loop are in the pure
modules `openai_api` and `generation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tiered_serving import openai_api as api
from tiered_serving.engine import LlamaEngine, Prompt, Sampling
from tiered_serving.generation import Delta, Finished, events
from tiered_serving.metrics import ServingMetrics
from tiered_serving.model_source import resolve, verify_sha256

DEPLOYMENT_NAME = "LlamaCppServer"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class LlamaCppArgs(BaseModel):
    """The application's args (serveConfigV2 `applications[].args`); unknown keys are refused at deploy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = Field(min_length=1, description="The model name answers carry (`model`).")
    model_source: str = Field(
        min_length=1, description="A GGUF file, a directory with one, file://…, or pkg://<package>/<file>."
    )
    n_ctx: int = Field(4096, ge=256, description="Context length in tokens (prompt + completion).")
    n_threads: int = Field(1, ge=1, description="CPU threads of the engine (the replica's CPUs).")
    n_batch: int = Field(512, ge=1, description="Prompt tokens evaluated per step.")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="Expected sha256 of the file.")


@dataclass(frozen=True)
class _Started:
    prompt_tokens: int


_DONE = object()


class LlamaCppServer:
    def __init__(self, args: LlamaCppArgs) -> None:
        self.args = args
        self.created = int(time.time())
        self.metrics = ServingMetrics(args.model_id)
        self.engine: LlamaEngine | None = None
        self.load_error: str | None = None
        try:
            path = resolve(args.model_source)
            if args.sha256:
                verify_sha256(path, args.sha256)
            self.engine = LlamaEngine(path, n_ctx=args.n_ctx, n_threads=args.n_threads, n_batch=args.n_batch)
        except Exception as error:  # any reason the model cannot be served is reported, not crashed on
            self.load_error = f"cannot serve {args.model_id!r}: {error}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-cpp")
        self._lock = asyncio.Lock()
        self._waiting = 0

    def check_health(self) -> None:
        """Serve's periodic health check: fails for as long as the model is not loaded."""
        self.metrics.refresh()
        if self.load_error is not None:
            raise RuntimeError(self.load_error)

    async def __call__(self, request: Request) -> Response:
        path = _route(request)
        endpoint = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completion,
        }.get((request.method, path))
        try:
            if endpoint is not None:
                response = await endpoint(await request.body())
            elif (request.method, path) == ("GET", "/v1/models"):
                response = JSONResponse(api.models_list(self.args.model_id, self.created))
            elif path in {"/v1/chat/completions", "/v1/completions", "/v1/models"}:
                raise api.ApiError(405, f"{request.method} is not allowed on {path}", code="method_not_allowed")
            else:
                raise api.ApiError(404, f"no such endpoint: {request.method} {path}", code="not_found")
        except api.ApiError as error:
            response = JSONResponse(error.body(), status_code=error.status)
        except Exception as error:  # an engine failure is still answered the OpenAI way (5xx: the router retries)
            failure = _engine_failure(error)
            response = JSONResponse(failure.body(), status_code=failure.status)
        self.metrics.answered(path, response.status_code)
        return response

    # ------------------------------------------------------------------------------------------ endpoints

    async def _chat(self, body: bytes) -> Response:
        request = api.parse_request(api.ChatRequest, body)
        engine = self._engine()
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        identity = api.Identity(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), self.args.model_id)
        stream = self._generate(
            lambda: engine.chat_prompt(messages), request, request.token_limit(), "messages"
        )
        if request.stream:
            return await self._streamed(stream, _ChatStream(identity, request.include_usage()))
        done = await _collected(stream, request.logprob_count() is not None)
        return JSONResponse(api.chat_response(identity, done))

    async def _completion(self, body: bytes) -> Response:
        request = api.parse_request(api.CompletionRequest, body)
        engine = self._engine()
        text = request.prompt_text()
        identity = api.Identity(f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time()), self.args.model_id)
        stream = self._generate(lambda: engine.completion_prompt(text), request, request.token_limit(), "prompt")
        if request.stream:
            return await self._streamed(stream, _CompletionStream(identity, request.include_usage()))
        done = await _collected(stream, request.logprob_count() is not None)
        return JSONResponse(api.completion_response(identity, done))

    def _engine(self) -> LlamaEngine:
        if self.engine is None:
            raise api.not_loaded(self.load_error or "loading")
        return self.engine

    async def _streamed(self, stream: AsyncGenerator[list[Any], None], shape: _Shape) -> Response:
        """SSE; errors found before the first token (context too long, template refusal) are still a 4xx.
        Events that are ready together go out as one write (one message through Serve), each its own `data:`."""
        started, *first = await anext(stream)  # raises ApiError before any byte is sent

        async def body() -> AsyncIterator[bytes]:
            try:
                yield shape.opening(started) + b"".join(shape.event(item) for item in first)
                async for batch in stream:
                    yield b"".join(shape.event(item) for item in batch)
                if shape.include_usage and shape.usage is not None:
                    yield api.sse(api.usage_chunk(shape.identity, shape.object_name, shape.usage))
                yield api.SSE_DONE
            except api.ApiError as error:
                yield api.sse_error(error)
            except Exception as error:  # after the first byte the status is sent: end with an error event
                yield api.sse_error(_engine_failure(error))
            finally:
                await stream.aclose()

        return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)

    # ------------------------------------------------------------------------------------- engine thread

    async def _generate(
        self,
        prepare: Callable[[], Prompt],
        request: api.ChatRequest | api.CompletionRequest,
        token_limit: int | None,
        prompt_param: str,
    ) -> AsyncGenerator[list[_Started | Delta | Finished], None]:
        """`_Started`, then the generation's events, produced on the engine thread one at a time and handed on
        in batches of what is ready together (one event each while the consumer keeps up)."""
        arrived = time.monotonic()
        engine = self._engine()
        stops = request.stop_sequences()
        sampling = Sampling(
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
        )
        logprobs = request.logprob_count()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def push(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> None:
            try:
                prompt = prepare()
                room = engine.n_ctx - len(prompt.tokens)
                if room <= 0:
                    raise api.ApiError(
                        400,
                        f"{prompt_param}: the prompt has {len(prompt.tokens)} tokens; this model's context is "
                        f"{engine.n_ctx}",
                        param=prompt_param,
                        code="context_length_exceeded",
                    )
                push(_Started(len(prompt.tokens)))
                limit = room if token_limit is None else min(room, token_limit)
                with contextlib.closing(engine.steps(prompt, sampling, logprobs)) as steps:
                    for event in events(steps, stops + prompt.stops, limit):
                        push(event)
                        if cancelled.is_set():
                            break
            except BaseException as error:
                push(error)
            finally:
                push(_DONE)

        self._waiting += 1
        self.metrics.waiting(self._waiting)
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
            self.metrics.waiting(self._waiting)
        self.metrics.generation_started()
        future = loop.run_in_executor(self._executor, run)
        future.add_done_callback(lambda _: self._lock.release())
        prompt_tokens = completion_tokens = 0
        first_at: float | None = None
        try:
            done = False
            while not done:
                arrived_together = [await queue.get()]
                while not queue.empty():
                    arrived_together.append(queue.get_nowait())
                ready: list[_Started | Delta | Finished] = []
                for item in arrived_together:
                    if item is _DONE:
                        done = True
                        break
                    if isinstance(item, BaseException):
                        if ready:
                            yield ready
                        raise item
                    if isinstance(item, _Started):
                        prompt_tokens = item.prompt_tokens
                    elif isinstance(item, Delta) and first_at is None:
                        first_at = time.monotonic()
                        self.metrics.first_token(first_at - arrived)
                    elif isinstance(item, Finished):
                        completion_tokens = item.completion_tokens
                    ready.append(item)
                if ready:
                    yield ready
        finally:
            cancelled.set()
            decode = time.monotonic() - first_at if first_at is not None else 0.0
            self.metrics.generation_finished(prompt_tokens, completion_tokens, decode)


async def _collected(stream: AsyncIterator[list[_Started | Delta | Finished]], with_logprobs: bool) -> api.Completed:
    text: list[str] = []
    tokens: list[api.TokenLogprob] = []
    prompt_tokens = 0
    async for batch in stream:
        for item in batch:
            if isinstance(item, _Started):
                prompt_tokens = item.prompt_tokens
            elif isinstance(item, Delta):
                text.append(item.text)
                tokens.extend(item.tokens)
            else:
                usage = api.Usage(prompt_tokens, item.completion_tokens)
                return api.Completed("".join(text), item.finish_reason, usage, tokens if with_logprobs else None)
    raise api.ApiError(500, "the generation ended without finishing", type="server_error")


class _Shape:
    """How one endpoint's stream looks: its opening chunk, one chunk per event, and the usage it saw."""

    object_name = ""

    def __init__(self, identity: api.Identity, include_usage: bool) -> None:
        self.identity = identity
        self.include_usage = include_usage
        self.prompt_tokens = 0
        self.usage: api.Usage | None = None

    def opening(self, started: _Started) -> bytes:
        self.prompt_tokens = started.prompt_tokens
        return b""

    def event(self, item: Delta | Finished) -> bytes:
        raise NotImplementedError

    def _finished(self, item: Finished) -> None:
        self.usage = api.Usage(self.prompt_tokens, item.completion_tokens)


class _ChatStream(_Shape):
    object_name = "chat.completion.chunk"

    def opening(self, started: _Started) -> bytes:
        super().opening(started)
        delta = {"role": "assistant", "content": ""}
        return api.sse(api.chat_chunk(self.identity, delta, include_usage=self.include_usage))

    def event(self, item: Delta | Finished) -> bytes:
        if isinstance(item, Finished):
            self._finished(item)
            return api.sse(
                api.chat_chunk(self.identity, {}, finish_reason=item.finish_reason, include_usage=self.include_usage)
            )
        return api.sse(
            api.chat_chunk(
                self.identity,
                {"content": item.text},
                logprobs=item.tokens or None,
                include_usage=self.include_usage,
            )
        )


class _CompletionStream(_Shape):
    object_name = "text_completion"

    def __init__(self, identity: api.Identity, include_usage: bool) -> None:
        super().__init__(identity, include_usage)
        self.offset = 0

    def event(self, item: Delta | Finished) -> bytes:
        if isinstance(item, Finished):
            self._finished(item)
            return api.sse(
                api.completion_chunk(
                    self.identity, "", finish_reason=item.finish_reason, include_usage=self.include_usage
                )
            )
        chunk = api.completion_chunk(
            self.identity,
            item.text,
            logprobs=item.tokens or None,
            text_offset=self.offset,
            include_usage=self.include_usage,
        )
        self.offset += len(item.text)
        return api.sse(chunk)


def _engine_failure(error: Exception) -> api.ApiError:
    return api.ApiError(500, f"the engine failed: {type(error).__name__}: {error}", type="server_error")


def _route(request: Request) -> str:
    """The path below the application's route prefix, without a trailing slash."""
    path = request.url.path
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return "/" + path.strip("/")


LlamaCppDeployment = serve.deployment(name=DEPLOYMENT_NAME)(LlamaCppServer)


def build_app(args: dict[str, Any] | LlamaCppArgs) -> Application:
    """Ray Serve's application builder (`import_path: tiered_serving.llama_cpp:build_app`): Serve passes the
    config's `args` as a dict (postponed annotations hide the model from its own conversion), checked here."""
    return LlamaCppDeployment.bind(LlamaCppArgs.model_validate(args))
