"""The router's HTTP server (aiohttp): OpenAI-compatible endpoints, attribution, forwarding, accounting.

aiohttp's server was picked by measurement: a bare aiohttp pass-through did ~3,800 requests/s on one
core, Starlette on uvicorn with httpx 300-600. The request path stays lean: no middleware, the body is
parsed once with the standard `json` module and only the fields routing needs are checked; it is
re-serialised only when the upstream model name or stream options must change, and the client's SSE
stream is written chunk by chunk as it arrives.

Control data lives in `tiered_router.state.RouterState`: the current `Snapshot` (config + everything
derived from it), the breakers and the in-flight counts. A handler reads `state.snapshot` once, so a
reload (one attribute assignment) never changes the config under a request in flight. Handlers change
control data only through `forward` (in-flight counts, breaker outcomes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx
from aiohttp import web

from tiered_router import anthropic, auth, budgets, cache, cost, discipline, escalation, forward, reporting
from tiered_router.attribution import ATTRIBUTION_KEYS, TASK_ID_HEADER, UNKNOWN, attribute, label, task_id
from tiered_router.config import AUTO_MODEL, TierApi, TierKind, normalise_task
from tiered_router.openapi import openapi_document
from tiered_router.policy import (
    NO_SIGNALS,
    UNKNOWN_MODEL,
    Decision,
    LiveState,
    RequestFeatures,
    choose_tier,
    estimate_tokens,
    rule_name,
    trace_rules,
)
from tiered_router.scoring import explain_signals, route_signals
from tiered_router.state import RouterState, Snapshot

log = logging.getLogger("tiered.router")

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
SSE_TAIL_BYTES = 16384  # the usage event is small and comes last; keep only the end of each stream
SSE_HOLD_BYTES = 65536  # partial events held back while filtering: never more than this (then passed on)


def error_response(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json", headers=headers)


def sse_error(message: str, kind: str, code: str) -> bytes:
    """An OpenAI-shaped error as one SSE data event: how a stream that cannot finish ends (the SDK raises it)."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _uncancel() -> None:
    """Consume the shutdown cut's cancellation so the handler can still write its error reply."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


REQUEST_ID_HEADER = "x-tiered-request-id"

ESCALATION_REASON = "escalation"
"""The metrics `reason` of a second call to the escalation `to` tier."""

SHUTTING_DOWN = "the router is shutting down and its deadline for requests in flight passed; retry"


class Reject(Exception):
    """Stop handling a request and answer with an OpenAI-shaped error; `code` is also the metrics reason."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        code: str,
        tier: str = "none",
        retry_after: int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.tier = status, message, kind, code, tier
        self.param = param
        self.headers = {"Retry-After": str(retry_after)} if retry_after is not None else None


def _bad_request(message: str, param: str | None) -> Reject:
    return Reject(400, message, "invalid_request_error", "bad_request", param=param)


UNAUTHORIZED = ("missing or invalid API key", "authentication_error", "invalid_api_key")


@dataclass(slots=True)
class Call:
    """One completion request, parsed once: what routing, forwarding and accounting need."""

    chat: bool
    raw: bytes = b""
    body: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    wants_usage: bool = False
    """The client asked for the stream's usage chunk (`stream_options.include_usage`)."""
    text: str = ""
    """Every message's text (prompt tokens are estimated from it)."""
    team: str = UNKNOWN
    feature: str = UNKNOWN
    reason: str = ""
    notes: dict[str, str] = field(default_factory=dict)
    """Response headers saying what the router changed in the request (token discipline)."""
    route_score: float | None = None
    """The first classifier rule's score (x-tiered-route-score), when `model: auto` was scored."""
    started: float = 0.0
    """perf_counter() when the handler started; `sent` when the answering attempt was sent upstream."""
    sent: float = 0.0
    private: bool = False
    probe: forward.Target | None = None
    """The escalation `from` tier's target: its answer's confidence is checked (`Handlers._escalate`)."""
    probe_fields: dict[str, Any] = field(default_factory=dict)
    """Logprob fields added to the body sent to `probe` (the client did not ask for them)."""
    api_key: str | None = None
    """The `name` of the caller's API key (what a budget's `apiKey` names)."""
    hold: budgets.Hold | None = None
    """What budgets reserved for this request (settled per answer, released when it ends)."""
    budget: str = ""
    """`x-tiered-budget`: `downgraded` or `over-task-budget`, when a budget changed or flagged the request."""
    request_id: str = ""
    """Sent back as `x-tiered-request-id`; feedback names a request (and so its task) by it."""
    task_id: str | None = None
    user: str = UNKNOWN
    """The OpenAI `user` field, label-bounded: the dashboard's cost per end user."""
    cache_hit: bool = False
    """Answered from the router's cache: counted in the cache-hit rate."""
    tenant: str = UNKNOWN
    """The caller's team as claimed (not label-bounded): what cache entries are scoped by."""
    pending_cache: cache.Pending | None = None
    """Where a cache miss stores its answer (exact key, semantic scope and vector)."""

    def payload_for(self, target: forward.Target) -> bytes:
        """The body for one tier: the client's bytes unless the model name, stream options, logprobs for a
        confidence check or (for an external tier) tiered's attribution in `metadata` must change."""
        if target.api is TierApi.ANTHROPIC:  # translated: none of tiered's metadata is sent
            translated = anthropic.messages_request(self.body, self.chat, target.model, target.default_max_tokens)
            return json.dumps(translated).encode()
        body = self.body
        changed = body.get("model") != target.model
        if target is self.probe and self.probe_fields:
            body, changed = {**body, **self.probe_fields}, True  # a copy: other tiers get the client's fields
        if self.stream and not (body.get("stream_options") or {}).get("include_usage"):
            # Ask for usage in the stream so streamed tokens are priced from real counts.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            changed = True
        metadata = body.get("metadata")
        if target.external and metadata and not ATTRIBUTION_KEYS.isdisjoint(metadata):
            # Team, feature, task and the private mark are ours: they do not leave for a third party.
            body["model"] = target.model
            kept = {k: v for k, v in metadata.items() if k not in ATTRIBUTION_KEYS}
            outgoing = {k: v for k, v in body.items() if k != "metadata"}
            if kept:
                outgoing["metadata"] = kept
            return json.dumps(outgoing).encode()
        if not changed:
            return self.raw
        body["model"] = target.model
        return json.dumps(body).encode()


SYSTEM_ROLES = frozenset({"system", "developer"})


def _prompt_text(body: dict[str, Any], chat: bool) -> tuple[str, str, str]:
    """(every message's text, the last user message, the system messages), checking only the shape routing
    relies on (the upstream validates the rest). A text completion's prompt is all three but system."""
    if not chat:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt, prompt, ""
        if isinstance(prompt, list):
            text = "\n".join(p for p in prompt if isinstance(p, str))
            return text, text, ""
        raise _bad_request("`prompt` must be a string or an array", "prompt")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad_request("`messages` must be a non-empty array", "messages")
    parts: list[str] = []
    system: list[str] = []
    last_user = ""
    for message in messages:
        if not isinstance(message, dict):
            raise _bad_request("each message must be an object", "messages")
        content = message.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        else:
            continue
        parts.append(text)
        role = message.get("role")
        if role == "user":
            last_user = text
        elif isinstance(role, str) and role in SYSTEM_ROLES:
            system.append(text)
    return "\n".join(parts), last_user, "\n".join(system)


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in TRUE_VALUES)


class Handlers:
    def __init__(self, state: RouterState) -> None:
        self.state = state

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, Call(chat=True))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, Call(chat=False))

    async def _complete(self, request: web.Request, call: Call) -> web.StreamResponse:
        call.started = time.perf_counter()
        call.request_id = uuid.uuid4().hex
        state = self.state
        snap = state.snapshot  # read once: a reload never changes the config under this request
        task = asyncio.current_task()
        assert task is not None  # aiohttp runs every handler in a task of its own
        requests = state.lifecycle.requests
        requests.add(task)
        try:
            return await self._answer(request, call, snap)
        except asyncio.CancelledError:
            if not state.lifecycle.cut:
                raise
            # Cut at the shutdown deadline before the reply started (a started stream ends in `_stream`).
            _uncancel()
            state.metrics.requests.labels("none", call.team, call.feature, "shutting_down", "503").inc()
            return error_response(503, SHUTTING_DOWN, "service_unavailable", "shutting_down", {"Retry-After": "1"})
        finally:
            requests.discard(task)
            if call.hold is not None:
                budgets.release(state.budgets, call.hold)

    async def _answer(self, request: web.Request, call: Call, snap: Snapshot) -> web.StreamResponse:
        state = self.state
        try:
            features, decision = await self._decide(request, snap, call)
            if decision.tier is None:
                if decision.reason == UNKNOWN_MODEL:
                    message = f"model {features.model!r} does not exist; use a tier name or {AUTO_MODEL!r}"
                    raise Reject(404, message, "invalid_request_error", "model_not_found", param="model")
                raise Reject(
                    503,
                    "no tier can take this request now",
                    "service_unavailable",
                    decision.reason,
                    retry_after=decision.retry_after,
                )
            self._discipline(call, snap, decision)  # before the budget reserves from max_tokens
            hit = await self._from_cache(request, call, snap, decision, features)
            if hit is not None:  # a cached answer costs nothing: no budget, no upstream
                return hit
            decision = self._budget(call, snap, features, decision)
            assert decision.tier is not None  # a budget keeps a tier or raises
            if decision.queue and not await state.flight.wait_for_slot(
                decision.tier, snap.config.privacy.queue_limit, snap.config.privacy.queue_timeout_seconds
            ):
                message = f"tier {decision.tier!r} is at its concurrency budget; private requests cannot overflow"
                raise Reject(503, message, "service_unavailable", "private_queue_full", decision.tier, 1)
            self._plan_escalation(call, snap, features.private)
            try:
                tier, response, call.sent = await state.upstream.open(
                    snap.config, snap.targets, decision.chain, call.chat, call.payload_for, snap.timeout
                )
            except forward.Exhausted as error:
                kind = "upstream_error" if error.status == 502 else "service_unavailable"
                raise Reject(
                    error.status, error.message, kind, "upstream_exhausted", decision.tier, error.retry_after
                ) from None
        except Reject as reject:
            state.metrics.requests.labels(reject.tier, call.team, call.feature, reject.code, str(reject.status)).inc()
            reply = error_response(
                reject.status, reject.message, reject.kind, reject.code, reject.headers, reject.param
            )
            reply.headers[REQUEST_ID_HEADER] = call.request_id
            if state.lifecycle.draining:
                reply.force_close()
            return reply
        call.reason = decision.reason
        try:
            return await self._relay(request, response, snap, call, tier)
        finally:
            await response.aclose()
            state.flight.leave(tier)

    async def _decide(self, request: web.Request, snap: Snapshot, call: Call) -> tuple[RequestFeatures, Decision]:
        """Read the request and choose its tier (`model: auto` with classifier or similarTo rules: scored)."""
        private, task, model, last_user, system = await self._read(request, snap, call)
        signals = NO_SIGNALS
        routing = snap.routing
        if model == AUTO_MODEL and routing is not None:
            signals = await route_signals(routing, self.state.embedder, last_user or call.text)
            for head, score in signals.scores.items():
                self.state.metrics.route_score.labels(head).observe(score)
            call.route_score = next(iter(signals.scores.values()), None)
        features = RequestFeatures(
            model, estimate_tokens(len(call.text)), task, last_user, private, system, call.text, signals
        )
        live = LiveState(self.state.flight.count, self.state.breakers.open_until, time.monotonic())
        return features, choose_tier(features, snap.config, live)

    def _budget(self, call: Call, snap: Snapshot, features: RequestFeatures, decision: Decision) -> Decision:
        """Budgets and the task budget on the chosen tier: go, go to the cheapest tier that fits
        (`x-tiered-budget: downgraded`), or 429 with the window's reset time; reserves the worst case."""
        config = snap.config
        limits = budgets.Limits(tuple(config.budgets), config.budget_settings, config.task_budget)
        if not limits.active or decision.tier is None:
            return decision
        state = self.state
        max_tokens = budgets.requested_max_tokens(call.body) or config.budget_settings.assume_max_tokens
        request = budgets.Request(
            call.team, call.feature, call.api_key, features.prompt_tokens, max_tokens, call.task_id, features.private
        )
        prices = {name: budgets.PerToken(p.input_per_token, p.output_per_token) for name, p in snap.prices.items()}
        local = [t.name for t in config.tiers if t.kind is TierKind.LOCAL]
        tiers = budgets.tier_table(prices, local, config.budget_settings, features.private)
        now = datetime.now(UTC)
        verdict = budgets.admit(state.budgets, limits, request, decision.tier, tiers, now, time.monotonic())
        counters = state.budget_metrics
        if verdict.alert:
            call.budget = budgets.ALERTED
            counters.task_exceeded.labels("alerted").inc()
            line = state.budgets.tasks.lines.get(call.task_id or "")
            if line is not None and not line.alerted:
                line.alerted = True  # one log line per task, the metric per request
                log.warning("task %r is over its budget (team %s, feature %s)", call.task_id, call.team, call.feature)
        chain = decision.chain
        action = "rejected" if verdict.reject is not None else "downgraded"
        for name in verdict.exceeded if verdict.reject is not None or verdict.downgrade_to else ():
            task_counter = name == "task"
            (counters.task_exceeded.labels(action) if task_counter else counters.exceeded.labels(name, action)).inc()
        if verdict.reject is not None:
            kind, tier = "insufficient_quota", decision.tier
            raise Reject(429, verdict.reject, kind, "budget_exceeded", tier, verdict.retry_after)
        if verdict.downgrade_to is not None:
            live = LiveState(state.flight.count, state.breakers.open_until, time.monotonic())
            again = choose_tier(replace(features, model=verdict.downgrade_to), config, live)
            chain = budgets.fitting(again.chain, request, tiers, state.budgets, limits, now)
            if not chain:
                message = "no tier within the budget can take this request now"
                raise Reject(503, message, "service_unavailable", "unavailable", verdict.downgrade_to, 1)
            decision = replace(again, tier=chain[0], chain=chain, reason=budgets.BUDGET_REASON)
            call.budget = budgets.DOWNGRADED
        call.hold = budgets.hold(state.budgets, verdict, request, chain, tiers, limits, time.monotonic())
        return decision

    async def explain(self, request: web.Request) -> web.Response:
        """`POST /v1/tiered/explain`: the body of a completion request in, the routing decision out — the
        features, signals, every rule's outcome and the chosen chain — without forwarding anything."""
        snap = self.state.snapshot
        call = Call(chat=True)
        try:
            features, decision = await self._decide(request, snap, call)
        except Reject as reject:
            return error_response(reject.status, reject.message, reject.kind, reject.code, reject.headers, reject.param)
        if decision.reason == UNKNOWN_MODEL:  # as a completion would answer: nothing to explain
            message = f"model {features.model!r} does not exist; use a tier name or {AUTO_MODEL!r}"
            return error_response(404, message, "invalid_request_error", "model_not_found", None, "model")
        explanation = {
            "model": features.model,
            "tier": decision.tier,
            "reason": decision.reason,
            "chain": list(decision.chain),
            "queue": decision.queue,
            "team": call.team,
            "feature": call.feature,
            "features": {
                "promptTokens": features.prompt_tokens,
                "task": features.task,
                "private": features.private,
                "lastUserChars": len(features.text),
            },
            "signals": explain_signals(snap.routing, features.text, features.signals),
            "rules": [
                {"rule": t.rule, "tier": t.tier, "matched": t.matched, "unmet": t.unmet}
                for t in trace_rules(features, snap.config)
            ]
            if features.model == AUTO_MODEL
            else [],
        }
        return web.json_response(explanation)

    async def _read(self, request: web.Request, snap: Snapshot, call: Call) -> tuple[bool, str | None, str, str, str]:
        """Authenticate, read and check the body, attribute; fills `call`.

        Returns (private, task, model, last user message, system messages).
        """
        config = snap.config
        headers = request.headers
        identity = None
        if snap.keys is not None:
            identity = auth.identify(snap.keys, headers.get("Authorization"))
            if identity is None:
                raise Reject(401, *UNAUTHORIZED)
            call.api_key = identity.name
        too_large = Reject(
            413, f"request body over {config.max_body_bytes} bytes", "invalid_request_error", "body_too_large"
        )
        if (request.content_length or 0) > config.max_body_bytes:
            raise too_large
        try:
            call.raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        if len(call.raw) > config.max_body_bytes:
            raise too_large
        try:
            body = json.loads(call.raw)
        except ValueError as error:
            raise _bad_request(f"malformed JSON: {error}", None) from None
        if not isinstance(body, dict):
            raise _bad_request("the body must be a JSON object", None)
        model, stream, metadata = body.get("model"), body.get("stream", False), body.get("metadata", {})
        if not isinstance(model, str):
            raise _bad_request("`model` must be a string", "model")
        if not isinstance(stream, bool):
            raise _bad_request("`stream` must be a boolean", "stream")
        if not isinstance(metadata, dict):
            raise _bad_request("`metadata` must be an object", "metadata")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise _bad_request("`stream_options` must be an object", "stream_options")
        call.body, call.stream = body, stream
        call.wants_usage = stream and bool(options and options.get("include_usage"))
        call.text, last_user, system = _prompt_text(body, call.chat)

        # Attribution is bounded: a key's team wins over claims; features and label values are capped.
        state = self.state
        cap = snap.max_label_values
        team_claim = None
        if identity is None:
            team_claim = label(headers.get("x-tiered-team")) or label(metadata.get("team"))
        call.team, call.feature = attribute(
            identity,
            team_claim,
            label(headers.get("x-tiered-feature")) or label(metadata.get("feature")),
            snap.features,
            state.labels,
            cap,
        )
        call.task_id = task_id(headers.get(TASK_ID_HEADER), metadata)
        user = label(body.get("user"))
        if user is not None:
            call.user = state.labels.bound("user", user, cap)
        raw_task = headers.get("x-tiered-task") or metadata.get("task")
        task = (normalise_task(raw_task) or None) if isinstance(raw_task, str) else None
        if task is not None and task not in snap.task_types:
            state.metrics.unknown_tasks.labels(state.labels.bound("task", task[:64], cap)).inc()
        privacy = config.privacy
        # Privacy reads the claimed team, not its bounded label: a team counted as `other` is still private.
        team = call.team if identity is not None else team_claim or UNKNOWN
        call.tenant = team
        private = (
            team in privacy.private_teams
            or headers.get(privacy.private_header, "").strip().lower() in TRUE_VALUES
            or _is_true(metadata.get("private"))
        )
        return private, task, model, last_user, system

    async def _relay(
        self, request: web.Request, response: httpx.Response, snap: Snapshot, call: Call, tier: str
    ) -> web.StreamResponse:
        """Pass the upstream's answer to the client and account for it."""
        metrics = self.state.metrics
        headers = {"x-tiered-tier": tier, "x-tiered-reason": call.reason, REQUEST_ID_HEADER: call.request_id}
        headers.update(call.notes)
        if call.route_score is not None:
            headers["x-tiered-route-score"] = f"{call.route_score:.4f}"
        if call.budget:
            headers["x-tiered-budget"] = call.budget
        content_type = response.headers.get("content-type", "application/json")
        if call.stream and response.status_code == 200 and content_type.startswith("text/event-stream"):
            self._skip_escalation(snap, tier, headers)
            return await self._stream(request, response, snap, call, tier, headers)
        try:
            # Straight from the transport's byte stream: no decoding (we asked for identity) and none of
            # httpx's per-chunk bookkeeping, which measured ~25 µs per response.
            data = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
        except forward.UPSTREAM_ERRORS as error:
            code, message = _broken_off(tier, error, time.perf_counter() - call.sent, snap, "mid-response")
            metrics.answered(tier, call.team, call.feature, code, "502")
            return error_response(502, message, "upstream_error", code, {"Retry-After": "1"})
        finished = time.perf_counter()
        status, data = _openai_answer(snap.targets[tier], response.status_code, data, call.chat)
        if snap.targets[tier].api is TierApi.ANTHROPIC:
            content_type = "application/json"
        if status == 200:
            usage = cost.usage_from_json(data) or _estimate_json(call.text, data)
            self._account(snap, call, tier, "200", usage, finished - call.sent)
            if call.probe is not None and snap.targets[tier] is call.probe:
                data, waited = await self._escalate(snap, call, data, headers)
                finished += waited
            self._store(snap, call, headers["x-tiered-tier"], data)
        else:
            metrics.answered(tier, call.team, call.feature, call.reason, str(status))
        reply = web.Response(body=data, status=status, headers=headers)
        reply.content_type = content_type.split(";")[0]
        if self.state.lifecycle.draining:
            reply.force_close()  # `Connection: close`: the client reconnects, through the Service, elsewhere
        metrics.overhead.observe(call.sent - call.started + time.perf_counter() - finished)
        return reply

    def _discipline(self, call: Call, snap: Snapshot, decision: Decision) -> None:
        """The matched rule's token discipline (tiered_router.discipline): cap max_tokens, truncate old turns."""
        if decision.rule is None:
            return
        rule = snap.config.rules[decision.rule]
        if rule.max_tokens is None and rule.max_context_tokens is None:
            return
        try:
            done = discipline.apply_discipline(call.body, call.chat, rule.max_tokens, rule.max_context_tokens)
        except discipline.DisciplineError as error:
            raise _bad_request(str(error), error.param) from None
        call.notes.update(done.headers)
        if not done.changed:
            return
        name = rule_name(decision.rule, rule.name)
        metrics = self.state.metrics
        if done.clamp is not None:
            metrics.discipline.labels(name, done.clamp.action).inc()
        if done.truncation is not None:
            metrics.discipline.labels(name, "truncated").inc()
            metrics.truncated_tokens.labels(name).inc(done.truncation.tokens_before - done.truncation.tokens_after)
        call.body = done.body
        call.raw = json.dumps(done.body).encode()  # what payload_for sends when nothing else changes

    async def _from_cache(
        self, request: web.Request, call: Call, snap: Snapshot, decision: Decision, features: RequestFeatures
    ) -> web.StreamResponse | None:
        """A cached answer for this request (exact, then semantic), or None after noting where to store
        the answer it gets (`call.pending_cache`)."""
        caches, metrics = self.state.cache, self.state.metrics
        if (caches.exact is None and caches.semantic is None) or decision.tier is None:
            return None
        call.reason = decision.reason
        scope = (call.tenant, features.private, f"{decision.tier}:{snap.targets[decision.tier].model}")
        pending = cache.Pending()
        now = time.monotonic()
        if caches.exact is not None:
            pending.exact_key = cache.exact_key(*scope, call.body, call.chat)
            answer = caches.exact.get(pending.exact_key, now)
            if answer is not None:
                return self._cached_reply(call, snap, answer, "exact")
            metrics.cache.labels("exact", "miss").inc()
        settings = snap.config.cache.semantic if snap.config.cache else None
        if caches.semantic is not None and settings is not None and features.text:
            opt_in = snap.config.rules[decision.rule].semantic_cache if decision.rule is not None else None
            if cache.semantic_eligible(settings, opt_in, call.body):
                vectors = await self.state.embedder.embed([(features.text, snap.config.encoder.max_tokens)])
                if vectors is not None:  # past the encoder's time budget: no semantic lookup, no store
                    pending.scope = cache.semantic_scope(*scope, call.body, call.chat)
                    pending.vector, pending.text = vectors[0], features.text
                    found = caches.semantic.lookup(pending.scope, pending.vector, features.text, time.monotonic())
                    if found.hit is not None:
                        return self._cached_reply(call, snap, found.hit.answer, "semantic", found.hit.similarity)
                    metrics.cache.labels("semantic", "guarded" if found.guarded else "miss").inc()
        call.pending_cache = pending if pending.wanted else None
        return None

    def _cached_reply(
        self, call: Call, snap: Snapshot, answer: cache.Answer, kind: str, similarity: float | None = None
    ) -> web.Response:
        """Answer from the cache (a stream if the client asked for one); count the hit and what it saved,
        which is not spend: no cost, no ledger line, no budget."""
        metrics = self.state.metrics
        metrics.cache.labels(kind, "hit").inc()
        price = snap.prices.get(answer.tier)
        saved = price.cost(answer.input_tokens, answer.output_tokens) if price else 0.0
        metrics.cache_saved.labels(kind, answer.tier, call.team, call.feature).inc(saved)
        metrics.answered(answer.tier, call.team, call.feature, f"cache_{kind}", "200")
        baseline = snap.baseline.cost(answer.input_tokens, answer.output_tokens) if snap.baseline else saved
        call.cache_hit = True
        self.state.reports.add(
            time.time(), call.request_id, call.task_id, answer.tier, call.team, call.feature, call.user,
            answer.input_tokens, answer.output_tokens, 0.0, baseline, cache_hit=True,
        )  # fmt: skip
        headers = {"x-tiered-tier": answer.tier, "x-tiered-reason": call.reason, "x-tiered-cache": kind}
        headers[REQUEST_ID_HEADER] = call.request_id
        headers.update(call.notes)
        if similarity is not None:
            headers["x-tiered-cache-similarity"] = f"{similarity:.4f}"
        if call.stream:
            body, content_type = cache.sse_from_answer(answer, call.chat, call.wants_usage), "text/event-stream"
        else:
            body, content_type = answer.body, "application/json"
        reply = web.Response(body=body, headers=headers, content_type=content_type)
        if self.state.lifecycle.draining:
            reply.force_close()
        metrics.overhead.observe(time.perf_counter() - call.started)
        return reply

    def _store(self, snap: Snapshot, call: Call, tier: str, data: bytes, usage_from_sse: bool = False) -> None:
        """Keep a complete 200 answer (JSON, or a whole stream) where the cache lookup said."""
        pending = call.pending_cache
        if pending is None:
            return
        if usage_from_sse:
            usage = cost.usage_from_sse(data[-SSE_TAIL_BYTES:])
            tokens = (usage.input_tokens, usage.output_tokens) if usage else (estimate_tokens(len(call.text)), 0)
            answer = cache.answer_from_sse(data, tier, call.chat, *tokens)
        else:
            usage = cost.usage_from_json(data) or _estimate_json(call.text, data)
            answer = cache.answer_from_json(data, tier, usage.input_tokens, usage.output_tokens)
        metrics = self.state.metrics
        if answer is None:
            for kind, wanted in (("exact", pending.exact_key), ("semantic", pending.scope)):
                if wanted is not None:
                    metrics.cache.labels(kind, "skipped").inc()
            return
        for kind, stored in self.state.cache.store(pending, answer, time.monotonic()):
            metrics.cache.labels(kind, "stored" if stored else "skipped").inc()

    def _plan_escalation(self, call: Call, snap: Snapshot, private: bool) -> None:
        """With an escalation, a non-streaming request asks the `from` tier for the logprobs it needs."""
        config = snap.config.escalation
        if config is None or call.stream:
            return
        call.private = private
        call.probe = snap.targets[config.from_tier]
        call.probe_fields = escalation.ask_for_logprobs(call.body, call.chat, config.method)

    def _skip_escalation(self, snap: Snapshot, tier: str, headers: dict[str, str]) -> None:
        """Streams are not escalated: their tokens reach the client as they come, before any confidence is
        known, and buffering the answer to judge it first would defeat streaming (docs/router.md)."""
        config = snap.config.escalation
        if config is not None and tier == config.from_tier:
            skipped = escalation.Outcome.STREAMING_SKIPPED
            headers["x-tiered-escalation"] = escalation.HEADER_VALUES[skipped]
            self.state.metrics.escalations.labels(config.from_tier, config.to, skipped.value).inc()

    async def _escalate(self, snap: Snapshot, call: Call, data: bytes, headers: dict[str, str]) -> tuple[bytes, float]:
        """Judge the `from` tier's answer (`data`, already accounted) by its confidence; below
        `minConfidence` ask `to` the same request. Returns the body to send (`to`'s answer, or the first
        answer as the client asked for it) and the seconds spent waiting on `to`; sets the headers."""
        config = snap.config.escalation
        assert config is not None  # a probe is planned only with an escalation
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        confidence = escalation.confidence(answer, config.method)
        outcome = escalation.decide(confidence, config, call.private, snap.targets[config.to].external)
        if confidence is not None:
            headers["x-tiered-confidence"] = f"{confidence:.6f}"
        waited = 0.0
        better = None
        if outcome is escalation.Outcome.ESCALATED:
            started = time.perf_counter()
            better = await self._ask_escalation_tier(snap, call, config.to)
            waited = time.perf_counter() - started
            if better is None:
                outcome = escalation.Outcome.FAILED  # the first answer is a valid answer: send it
        self.state.metrics.escalations.labels(config.from_tier, config.to, outcome.value).inc()
        headers["x-tiered-escalation"] = escalation.HEADER_VALUES[outcome]
        if better is not None:
            headers["x-tiered-escalated"] = "1"
            headers["x-tiered-tier"] = config.to
            return better, waited
        if call.probe_fields and isinstance(answer, dict):
            asked = escalation.client_asked(call.body, call.chat)
            data = json.dumps(escalation.restore(answer, asked, call.chat)).encode()
        return data, waited

    async def _ask_escalation_tier(self, snap: Snapshot, call: Call, tier: str) -> bytes | None:
        """`tier`'s 200 answer to the client's request, accounted (reason `escalation`); None if it failed.
        Only `tier` itself is tried (its fallbacks are not: the first answer is there to fall back on)."""
        state = self.state
        if state.breakers.open_until.get(tier, 0.0) > time.monotonic():
            return None
        again = replace(call, reason=ESCALATION_REASON, probe=None)
        try:
            tier, response, sent = await state.upstream.open(
                snap.config, snap.targets, (tier,), call.chat, again.payload_for, snap.timeout
            )
        except forward.Exhausted:
            return None
        try:
            data = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
        except forward.UPSTREAM_ERRORS:
            state.metrics.answered(tier, call.team, call.feature, ESCALATION_REASON, "502")
            return None
        finally:
            await response.aclose()
            state.flight.leave(tier)
        status, data = _openai_answer(snap.targets[tier], response.status_code, data, call.chat)
        if status != 200:
            state.metrics.answered(tier, call.team, call.feature, ESCALATION_REASON, str(status))
            return None
        usage = cost.usage_from_json(data) or _estimate_json(call.text, data)
        self._account(snap, again, tier, "200", usage, time.perf_counter() - sent)
        return data

    async def _stream(
        self,
        request: web.Request,
        response: httpx.Response,
        snap: Snapshot,
        call: Call,
        tier: str,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """Write the upstream's SSE chunks to the client as they arrive; keep only the tail for usage."""
        metrics = self.state.metrics
        reply = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        if self.state.lifecycle.draining:
            reply.force_close()
        await reply.prepare(request)
        tail = b""
        events = 0
        first = True
        status = "200"
        # The usage chunk was asked for on the client's behalf: hold back partial events so it can be cut.
        held: bytes | None = None if call.wants_usage else b""
        whole = bytearray() if call.pending_cache is not None else None  # the stream, for the cache
        whole_limit = self.state.cache.entry_limit()
        translator = None
        source: AsyncIterator[bytes] = response.stream  # type: ignore[assignment]
        if snap.targets[tier].api is TierApi.ANTHROPIC:
            translator = anthropic.StreamTranslator(call.chat, int(time.time()))
            source = _translated(source, translator)
        last = time.perf_counter()
        try:
            async for chunk in source:
                last = time.perf_counter()
                if first:
                    metrics.ttft.labels(tier).observe(last - call.started)
                    first = False
                events += chunk.count(b"data:")
                tail = (tail + chunk)[-SSE_TAIL_BYTES:]
                if whole is not None:
                    whole.extend(chunk)
                    whole = whole if len(whole) <= whole_limit else None
                out = chunk
                if held is not None:
                    out, held = _whole_events(held + chunk)
                    if not out:
                        continue
                try:
                    await reply.write(out)
                except ConnectionError:
                    status = "499"  # the client went away: stop reading, closing the upstream stream
                    break
            if held:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await reply.write(cost.without_usage_events(held))
        except forward.UPSTREAM_ERRORS as error:
            # Too late to retry: tell the client in the stream (the openai SDK raises on an error event).
            status = "502"
            code, message = _broken_off(tier, error, time.perf_counter() - last, snap, "mid-stream")
            with contextlib.suppress(ConnectionError, RuntimeError):  # the client may be gone too
                await reply.write(sse_error(message, "upstream_error", code))
        except asyncio.CancelledError:
            if not self.state.lifecycle.cut:
                raise
            _uncancel()
            status = "503"
            with contextlib.suppress(ConnectionError, RuntimeError):
                await reply.write(sse_error(SHUTTING_DOWN, "service_unavailable", "shutting_down"))
        if translator is not None and translator.failed and status == "200":
            status = "502"  # the upstream's own error event, passed on in OpenAI's shape
        if whole is not None and status == "200":
            self._store(snap, call, tier, bytes(whole), usage_from_sse=True)
        usage = cost.usage_from_sse(tail)
        if usage is None:  # one streamed event is about one token; drop the role and [DONE] events
            usage = cost.Usage(estimate_tokens(len(call.text)), max(0, events - 2), estimated=True)
        self._account(snap, call, tier, status, usage, time.perf_counter() - call.sent)
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client went away: nothing to tell
            await reply.write_eof()
        metrics.overhead.observe(call.sent - call.started)
        return reply

    def _account(
        self, snap: Snapshot, call: Call, tier: str, status: str, usage: cost.Usage, upstream_seconds: float
    ) -> None:
        # The baseline is priced with the same cache hits: what this traffic would have cost there.
        tokens = (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_write_tokens)
        spent = snap.prices[tier].cost(*tokens)
        baseline = snap.baseline.cost(*tokens) if snap.baseline else spent
        metrics = self.state.metrics
        metrics.served(
            tier,
            call.team,
            call.feature,
            call.reason,
            status,
            usage.input_tokens,
            usage.output_tokens,
            spent,
            baseline,
            upstream_seconds,
        )
        if usage.estimated:
            metrics.estimated.labels(tier).inc()
        if usage.cached_input_tokens:
            metrics.cached_tokens.labels(tier, "read").inc(usage.cached_input_tokens)
        if usage.cache_write_tokens:
            metrics.cached_tokens.labels(tier, "write").inc(usage.cache_write_tokens)
        self.state.ledger.add((tier, call.team, call.feature), usage, spent, baseline)
        if call.hold is not None:
            budgets.settle(self.state.budgets, call.hold, tier, usage.input_tokens + usage.output_tokens, spent)
        self.state.reports.add(
            time.time(), call.request_id, call.task_id, tier, call.team, call.feature, call.user,
            usage.input_tokens, usage.output_tokens, spent, baseline,
            escalation=call.reason == ESCALATION_REASON, cache_hit=call.cache_hit,
        )  # fmt: skip

    def _authorized(self, request: web.Request) -> bool:
        keys = self.state.snapshot.keys
        return keys is None or auth.identify(keys, request.headers.get("Authorization")) is not None

    async def models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(401, *UNAUTHORIZED)
        return web.Response(body=self.state.snapshot.models, content_type="application/json")

    async def costs(self, request: web.Request) -> web.Response:
        # Tenancy: with API keys a key sees its own team's rows; an admin key (`admin: true`) sees all.
        snap = self.state.snapshot
        team = None
        if snap.keys is not None:
            identity = auth.identify(snap.keys, request.headers.get("Authorization"))
            if identity is None:
                return error_response(401, *UNAUTHORIZED)
            team = None if identity.admin else identity.team
        return web.json_response(reporting.costs_report(self.state, snap, team))

    async def status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(401, *UNAUTHORIZED)
        return web.json_response(self.state.status())

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        # Ready = a config is loaded (the server listens only after that) and no drain has begun. Upstream
        # health stays out of it, private capacity included: every replica sees the same upstreams, so all
        # would leave the Service at once and callers would get refused connections instead of a 503 with
        # Retry-After, and non-private traffic the external tier could serve would be refused too. Private
        # capacity is reported by `tiered_router_private_ready` and /v1/tiered/status instead.
        if self.state.lifecycle.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(
            body=generate_latest(self.state.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.state.snapshot.config))


def _whole_events(data: bytes) -> tuple[bytes, bytes]:
    """(complete SSE events without usage-only ones, the incomplete rest to hold back)."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
    if not end:  # no complete event yet
        return (data, b"") if len(data) > SSE_HOLD_BYTES else (b"", data)
    done, rest = data[:end], data[end:]
    return (cost.without_usage_events(done) if b'"usage"' in done else done), rest


def _openai_answer(target: forward.Target, status: int, data: bytes, chat: bool) -> tuple[int, bytes]:
    """An upstream's JSON answer (or error) as the client expects it: an Anthropic tier's translated."""
    if target.api is TierApi.ANTHROPIC:
        return anthropic.reply(status, data, chat, int(time.time()))
    return status, data


async def _translated(stream: AsyncIterator[bytes], translator: anthropic.StreamTranslator) -> AsyncIterator[bytes]:
    """An Anthropic SSE stream as OpenAI SSE, whole events at a time."""
    async for chunk in stream:
        out = translator.feed(chunk)
        if out:
            yield out


def _broken_off(tier: str, error: Exception, silent: float, snap: Snapshot, where: str) -> tuple[str, str]:
    """(code, message) for an upstream that stopped after its reply began: it went silent past the read
    timeout (`upstream_timeout`) or it closed the connection / died (`upstream_disconnected`)."""
    read_timeout = snap.config.timeouts.read_seconds
    cause = error.__cause__ or error  # the transport's own exception says what happened on the wire
    if isinstance(error, httpx.TimeoutException) and silent >= 0.9 * read_timeout:
        message = f"upstream {tier!r} sent nothing for {silent:.1f} s {where} (timeouts.readSeconds {read_timeout:g})"
        return "upstream_timeout", message
    return "upstream_disconnected", f"upstream {tier!r} closed the connection {where}: {cause}"


def _estimate_json(text: str, data: bytes) -> cost.Usage:
    """Usage for a response without `usage`: a quarter of the characters on each side."""
    try:
        choices = json.loads(data).get("choices") or []
        out = sum(len((c.get("message") or {}).get("content") or c.get("text") or "") for c in choices)
    except (ValueError, AttributeError, TypeError):
        out = len(data)
    return cost.Usage(estimate_tokens(len(text)), estimate_tokens(out), estimated=True)


def build_app(state: RouterState, serve_metrics: bool = True) -> web.Application:
    """The router's API; `/metrics` too unless it has its own listener (`build_metrics_app`)."""
    # The client may send more than maxBodyBytes (checked per request, reloadable); this is a hard cap.
    app = web.Application(client_max_size=64 << 20)
    handlers = Handlers(state)
    app.router.add_post("/v1/chat/completions", handlers.chat)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_get("/v1/tiered/costs", handlers.costs)
    app.router.add_get("/v1/tiered/status", handlers.status)
    app.router.add_post("/v1/tiered/explain", handlers.explain)
    reporting.add_routes(app, state)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    if serve_metrics:
        app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/openapi.json", handlers.openapi)

    async def lifespan(app: web.Application) -> Any:
        watcher = asyncio.create_task(state.watch_files())
        await state.spend_sync.sync_once()  # our stored spend back before the first request (bounded timeouts)
        syncer = asyncio.create_task(state.spend_sync.run())
        yield
        watcher.cancel()
        syncer.cancel()
        await state.spend_sync.sync_once()  # what we spent since the last sync
        await state.spend_sync.close()
        await state.upstream.transport.aclose()
        state.embedder.close()

    app.cleanup_ctx.append(lifespan)
    return app


def build_metrics_app(state: RouterState) -> web.Application:
    """`/metrics` (and `/healthz`) alone, for `--metrics-port`: scrapes stay off the API port."""
    app = web.Application()
    handlers = Handlers(state)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/healthz", handlers.healthz)
    return app
