"""The router's HTTP server (aiohttp): OpenAI-compatible endpoints, attribution, forwarding, accounting.

aiohttp's server was picked by measurement: a bare aiohttp pass-through did ~3,800 requests/s on one
core, Starlette on uvicorn with httpx 300-600. The request path stays lean: no middleware, the body is
parsed once with the standard `json` module and only the fields routing needs are checked; it is
re-serialised only when the upstream model name or stream options must change, and the client's SSE
stream is written chunk by chunk as it arrives.

Control data lives in `RouterState`: the current `Snapshot` (config + everything derived from it), the
breakers and the in-flight counts. A request reads `state.snapshot` once, so a reload (one attribute
assignment) never changes the config under a request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web

from tiered_router import auth, cost, forward
from tiered_router.breaker import Breakers
from tiered_router.config import AUTO_MODEL, RouterConfig, load_config
from tiered_router.metrics import RouterMetrics
from tiered_router.openapi import openapi_document
from tiered_router.policy import UNKNOWN_MODEL, LiveState, RequestFeatures, choose_tier, estimate_tokens

log = logging.getLogger("tiered.router")

UNKNOWN = "unknown"
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
SSE_TAIL_BYTES = 16384  # the usage event is small and comes last; keep only the end of each stream


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One config version and what is derived from it; never mutated, replaced as a whole on reload."""

    config: RouterConfig
    keys: dict[str, auth.Identity] | None
    targets: dict[str, forward.Target]
    prices: dict[str, cost.Price]
    baseline: cost.Price | None
    timeout: dict[str, float]
    models: bytes


def build_snapshot(config: RouterConfig) -> Snapshot:
    """Everything the request path needs from a config; raises ValueError (e.g. unreadable key file)."""
    keys = auth.load_keys(config.api_keys_file) if config.api_keys_file else None
    targets = {}
    for tier in config.tiers:
        headers = [("content-type", "application/json"), ("accept-encoding", "identity")]
        if tier.api_key_env:
            headers.append(("authorization", f"Bearer {os.environ.get(tier.api_key_env, '')}"))
        base = tier.base_url.rstrip("/")
        targets[tier.name] = forward.Target(
            httpx.URL(f"{base}/chat/completions"),
            httpx.URL(f"{base}/completions"),
            httpx.Headers(headers),
            tier.upstream_model,
        )
    prices = {t.name: cost.tier_price(t) for t in config.tiers}
    models = [
        {"id": name, "object": "model", "created": 0, "owned_by": "tiered"} for name in [*targets, AUTO_MODEL]
    ]
    return Snapshot(
        config,
        keys,
        targets,
        prices,
        prices.get(config.baseline or ""),
        forward.timeout_extension(config),
        json.dumps({"object": "list", "data": models}).encode(),
    )


def _file_signature(path: str | None) -> tuple[int, int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)  # follows symlinks: a ConfigMap update swaps the `..data` link
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class RouterState:
    """Control data: the current snapshot, breakers, in-flight counts, metrics and the cost ledger."""

    def __init__(self, config_path: str, transport: Any = None, reload_interval: float = 1.0) -> None:
        self.config_path = config_path
        self.reload_interval = reload_interval
        config = load_config(config_path)
        self.snapshot = build_snapshot(config)
        self._signatures = self._current_signatures()
        self.metrics = RouterMetrics()
        self.breakers = Breakers()
        self.flight = forward.InFlight()
        self.ledger = cost.CostLedger()
        self.metrics.watch(self._live_sample)
        self.upstream = forward.Upstream(
            transport or forward.make_transport(config.max_connections),
            self.breakers,
            self.flight,
            self.metrics,
        )
        self._announce()

    def _live_sample(self) -> list[tuple[str, int, int, int]]:
        now = time.monotonic()
        return [
            (tier, self.flight.count.get(tier, 0), self.flight.queued(tier), self.breakers.state(tier, now))
            for tier in self.snapshot.targets
        ]

    def _current_signatures(self) -> tuple[Any, Any]:
        return _file_signature(self.config_path), _file_signature(self.snapshot.config.api_keys_file)

    def _announce(self) -> None:
        config = self.snapshot.config
        log.info(
            "config loaded: tiers %s, default %s, %d rules",
            [t.name for t in config.tiers],
            config.default,
            len(config.rules),
        )
        if self.snapshot.keys is None:
            log.warning(
                "NO API KEYS CONFIGURED: the router is OPEN, any caller is served and may claim "
                "any team; set apiKeysFile to require keys"
            )

    def reload_if_changed(self) -> bool:
        """Load the config (and key file) again if either changed; keep the last good one on error."""
        signatures = self._current_signatures()
        if signatures == self._signatures:
            return False
        self._signatures = signatures
        try:
            snapshot = build_snapshot(load_config(self.config_path))
        except ValueError as error:
            self.metrics.reload_errors.inc()
            log.error("config reload rejected, keeping the last good config: %s", error)
            return False
        self.snapshot = snapshot  # the atomic swap: requests in flight keep the snapshot they read
        self._signatures = self._current_signatures()
        self.metrics.reloads.inc()
        self._announce()
        return True

    async def watch_files(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            self.reload_if_changed()


def error_response(
    status: int, message: str, kind: str, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json", headers=headers
    )


class BadRequest(Exception):
    pass


def _prompt_text(body: dict[str, Any], chat: bool) -> str:
    """The prompt's text, checking only the shape routing relies on (the upstream validates the rest)."""
    parts: list[str] = []
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("`messages` must be a non-empty array")
        for message in messages:
            if not isinstance(message, dict):
                raise BadRequest("each message must be an object")
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            parts.append(prompt)
        elif isinstance(prompt, list):
            parts.extend(p for p in prompt if isinstance(p, str))
        else:
            raise BadRequest("`prompt` must be a string or an array")
    return "\n".join(parts)


def _label(value: Any) -> str | None:
    # Team and feature become metric labels: bound their length (cardinality is the operator's call).
    return value[:64] if isinstance(value, str) and value else None


class Handlers:
    def __init__(self, state: RouterState) -> None:
        self.state = state

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    def _reject(
        self,
        status: int,
        message: str,
        kind: str,
        code: str,
        team: str = UNKNOWN,
        feature: str = UNKNOWN,
        tier: str = "none",
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self.state.metrics.requests.labels(tier, team, feature, code, str(status)).inc()
        return error_response(status, message, kind, code, headers)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        started = time.perf_counter()
        state = self.state
        snap = state.snapshot
        config = snap.config
        headers = request.headers

        identity = None
        if snap.keys is not None:
            identity = auth.identify(snap.keys, headers.get("Authorization"))
            if identity is None:
                return self._reject(
                    401, "missing or invalid API key", "authentication_error", "invalid_api_key"
                )

        if (request.content_length or 0) > config.max_body_bytes:
            return self._reject(
                413,
                f"request body over {config.max_body_bytes} bytes",
                "invalid_request_error",
                "body_too_large",
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(
                413,
                f"request body over {config.max_body_bytes} bytes",
                "invalid_request_error",
                "body_too_large",
            )
        if len(raw) > config.max_body_bytes:
            return self._reject(
                413,
                f"request body over {config.max_body_bytes} bytes",
                "invalid_request_error",
                "body_too_large",
            )
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            model = body.get("model")
            if not isinstance(model, str):
                raise BadRequest("`model` must be a string")
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise BadRequest("`stream` must be a boolean")
            metadata = body.get("metadata", {})
            if not isinstance(metadata, dict):
                raise BadRequest("`metadata` must be an object")
            text = _prompt_text(body, chat)
        except (ValueError, BadRequest) as error:
            message = str(error) if isinstance(error, BadRequest) else f"malformed JSON: {error}"
            return self._reject(400, message, "invalid_request_error", "bad_request")

        if identity is not None:
            team = identity.team
            feature = (
                _label(headers.get("x-tiered-feature"))
                or _label(metadata.get("feature"))
                or identity.feature
                or UNKNOWN
            )
        else:
            team = _label(headers.get("x-tiered-team")) or _label(metadata.get("team")) or UNKNOWN
            feature = _label(headers.get("x-tiered-feature")) or _label(metadata.get("feature")) or UNKNOWN
        task = headers.get("x-tiered-task") or metadata.get("task")
        privacy = config.privacy
        private = (
            team in privacy.private_teams
            or headers.get(privacy.private_header, "").strip().lower() in TRUE_VALUES
        )

        features = RequestFeatures(
            model=model,
            prompt_tokens=estimate_tokens(len(text)),
            task=task if isinstance(task, str) else None,
            text=text,
            private=private,
        )
        decision = choose_tier(
            features, config, LiveState(state.flight.count, state.breakers.open_until, time.monotonic())
        )
        if decision.tier is None:
            if decision.reason == UNKNOWN_MODEL:
                return self._reject(
                    404,
                    f"model {model!r} does not exist; use a tier name or {AUTO_MODEL!r}",
                    "invalid_request_error",
                    "model_not_found",
                    team,
                    feature,
                )
            return self._reject(
                503,
                "no tier can take this request now",
                "service_unavailable",
                decision.reason,
                team,
                feature,
                headers={"Retry-After": str(decision.retry_after)},
            )
        if decision.queue:
            tier = config.tier(decision.tier)
            ok = await state.flight.wait_for_slot(
                decision.tier, privacy.queue_limit, privacy.queue_timeout_seconds
            )
            if not ok:
                return self._reject(
                    503,
                    f"tier {tier.name!r} is at its concurrency budget and private requests cannot overflow",
                    "service_unavailable",
                    "private-queue-full",
                    team,
                    feature,
                    tier.name,
                    headers={"Retry-After": "1"},
                )

        def payload_for(target: forward.Target) -> bytes:
            changes = body.get("model") != target.model
            if stream and not (body.get("stream_options") or {}).get("include_usage"):
                # Ask for usage in the stream so streamed tokens are priced from real counts.
                body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
                changes = True
            if not changes:
                return raw
            body["model"] = target.model
            return json.dumps(body).encode()

        try:
            tier_name, response, sent = await state.upstream.open(
                config, snap.targets, decision.chain, chat, payload_for, snap.timeout
            )
        except forward.Exhausted as error:
            return self._reject(
                error.status,
                error.message,
                "upstream_error" if error.status == 502 else "service_unavailable",
                "upstream_exhausted",
                team,
                feature,
                decision.tier,
                headers={"Retry-After": str(error.retry_after)},
            )
        before_upstream = sent - started
        out_headers = {"x-tiered-tier": tier_name, "x-tiered-reason": decision.reason}
        content_type = response.headers.get("content-type", "application/json")
        try:
            if stream and response.status_code == 200 and content_type.startswith("text/event-stream"):
                return await self._stream(
                    request,
                    response,
                    snap,
                    tier_name,
                    decision.reason,
                    team,
                    feature,
                    text,
                    started,
                    before_upstream,
                    out_headers,
                )
            try:
                data = b"".join([chunk async for chunk in response.aiter_raw()])  # no decoding: identity
            except forward.UPSTREAM_ERRORS as error:
                return self._reject(
                    502,
                    f"upstream {tier_name!r} failed mid-response: {error!r}",
                    "upstream_error",
                    "upstream_read",
                    team,
                    feature,
                    tier_name,
                    headers={"Retry-After": "1"},
                )
            finished = time.perf_counter()
            status = response.status_code
            if status == 200:
                usage = cost.usage_from_json(data) or _estimate_json(text, data)
                self._account(snap, tier_name, team, feature, usage)
            state.metrics.requests.labels(tier_name, team, feature, decision.reason, str(status)).inc()
            state.metrics.upstream_latency.labels(tier_name).observe(finished - sent)
            reply = web.Response(body=data, status=status, headers=out_headers)
            reply.content_type = content_type.split(";")[0]
            state.metrics.overhead.observe(before_upstream + time.perf_counter() - finished)
            return reply
        finally:
            await response.aclose()
            state.flight.leave(tier_name)

    async def _stream(
        self,
        request: web.Request,
        response: Any,
        snap: Snapshot,
        tier: str,
        reason: str,
        team: str,
        feature: str,
        text: str,
        started: float,
        before_upstream: float,
        out_headers: dict[str, str],
    ) -> web.StreamResponse:
        metrics = self.state.metrics
        reply = web.StreamResponse(
            headers={**out_headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await reply.prepare(request)
        tail = b""
        events = 0
        first = True
        status = "200"
        upstream_started = time.perf_counter()
        try:
            async for chunk in response.aiter_raw():
                if first:
                    metrics.ttft.labels(tier).observe(time.perf_counter() - started)
                    first = False
                try:
                    await reply.write(chunk)
                except ConnectionError:
                    status = "499"  # the client went away: stop reading, closing the upstream stream
                    break
                events += chunk.count(b"data:")
                tail = (tail + chunk)[-SSE_TAIL_BYTES:]
        except forward.UPSTREAM_ERRORS as error:
            # Too late to retry: tell the client in the stream (the openai SDK raises on an error event).
            status = "502"
            message = {
                "error": {
                    "message": f"upstream {tier!r} failed mid-stream: {error!r}",
                    "type": "upstream_error",
                    "param": None,
                    "code": "upstream_stream",
                }
            }
            with contextlib.suppress(ConnectionError, RuntimeError):  # the client may be gone too
                await reply.write(b"data: " + json.dumps(message).encode() + b"\n\n")
        finally:
            upstream_time = time.perf_counter() - upstream_started
        usage = cost.usage_from_sse(tail)
        if usage is None:  # one streamed event is about one token; drop the role and [DONE] events
            usage = cost.Usage(estimate_tokens(len(text)), max(0, events - 2), estimated=True)
        self._account(snap, tier, team, feature, usage)
        metrics.requests.labels(tier, team, feature, reason, status).inc()
        metrics.upstream_latency.labels(tier).observe(upstream_time)
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client went away: nothing to tell
            await reply.write_eof()
        metrics.overhead.observe(before_upstream)
        return reply

    def _account(self, snap: Snapshot, tier: str, team: str, feature: str, usage: cost.Usage) -> None:
        metrics = self.state.metrics
        spent = snap.prices[tier].cost(usage.input_tokens, usage.output_tokens)
        baseline = snap.baseline.cost(usage.input_tokens, usage.output_tokens) if snap.baseline else spent
        metrics.tokens.labels(tier, "input").inc(usage.input_tokens)
        metrics.tokens.labels(tier, "output").inc(usage.output_tokens)
        metrics.cost.labels(tier, team, feature).inc(spent)
        metrics.baseline_cost.labels(tier, team, feature).inc(baseline)
        if usage.estimated:
            metrics.estimated.labels(tier).inc()
        self.state.ledger.add((tier, team, feature), usage, spent, baseline)

    def _authorized(self, request: web.Request) -> bool:
        keys = self.state.snapshot.keys
        return keys is None or auth.identify(keys, request.headers.get("Authorization")) is not None

    async def models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(
                401, "missing or invalid API key", "authentication_error", "invalid_api_key"
            )
        return web.Response(body=self.state.snapshot.models, content_type="application/json")

    async def costs(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(
                401, "missing or invalid API key", "authentication_error", "invalid_api_key"
            )
        summary = self.state.ledger.summary(self.state.snapshot.config.baseline)
        return web.json_response(summary)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        tiers = list(self.state.snapshot.targets)
        if all(self.state.breakers.open_until.get(t, 0.0) > now for t in tiers):
            return web.json_response(
                {"status": "unavailable", "reason": "every tier's breaker is open"}, status=503
            )
        return web.json_response({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(
            body=generate_latest(self.state.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.state.snapshot.config))


def _estimate_json(text: str, data: bytes) -> cost.Usage:
    """Usage for a response without `usage`: a quarter of the characters on each side."""
    try:
        choices = json.loads(data).get("choices") or []
        out = sum(len((c.get("message") or {}).get("content") or c.get("text") or "") for c in choices)
    except (ValueError, AttributeError, TypeError):
        out = len(data)
    return cost.Usage(estimate_tokens(len(text)), estimate_tokens(out), estimated=True)


def build_app(state: RouterState) -> web.Application:
    # The client may send more than maxBodyBytes (checked per request, reloadable); this is a hard cap.
    app = web.Application(client_max_size=64 << 20)
    handlers = Handlers(state)
    app.router.add_post("/v1/chat/completions", handlers.chat)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_get("/v1/tiered/costs", handlers.costs)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/openapi.json", handlers.openapi)

    async def lifespan(app: web.Application) -> Any:
        watcher = asyncio.create_task(state.watch_files())
        yield
        watcher.cancel()
        await state.upstream.transport.aclose()

    app.cleanup_ctx.append(lifespan)
    return app
