"""The reporting edge of the router: `/v1/tiered/costs` (the body), feedback, cost history and `/dashboard`.

HTTP only: the numbers come from pure modules (`cost.CostLedger`, `outcomes`, `history`, `economics`).
Tenancy as for the cost API: with API keys a team's key reads and judges its own team only; an admin key
sees every team. The dashboard page itself holds no data (it is static, shipped in `dashboard/`), so it is
served without a key; its script calls the API with the key the viewer gives it.

Must not: hold state of its own beyond the Prometheus client it builds once per URL.
"""

from __future__ import annotations

import asyncio
import math
import time
from importlib import resources
from typing import Any

from aiohttp import web

from tiered_router import auth, economics
from tiered_router.history import PrometheusHistory
from tiered_router.outcomes import Outcome
from tiered_router.state import RouterState, Snapshot

DASHBOARD_FILES = {
    "index.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
MAX_WINDOW_SECONDS = 6 * 3600
VOLUME_WINDOW_SECONDS = 3600.0
"""The current volume (break-even) is the token rate over the last hour, or since start if shorter."""


def _error(status: int, message: str, kind: str, code: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


def _scope(snap: Snapshot, request: web.Request) -> tuple[bool, str | None]:
    """(authorized, the one team the caller may see: None for every team)."""
    if snap.keys is None:
        return True, None
    identity = auth.identify(snap.keys, request.headers.get("Authorization"))
    if identity is None:
        return False, None
    return True, None if identity.admin else identity.team



def costs_report(state: RouterState, snap: Snapshot, team: str | None) -> dict[str, Any]:
    """The body of `GET /v1/tiered/costs`: the ledger's totals and rows, plus end users, escalation and
    cache rates, cost per resolved task, break-even and the window they cover."""
    summary = state.ledger.summary(snap.config.baseline, team)
    reports = state.reports
    now = time.time()
    totals = summary["totals"]
    tokens = totals["input_tokens"] + totals["output_tokens"]
    # Break-even is about the whole router's volume (the GPUs are shared), so it ignores the team scope.
    volume = _tokens_per_day(state, now)
    everything = state.ledger.summary(snap.config.baseline)["totals"] if team is not None else totals
    all_tokens = everything["input_tokens"] + everything["output_tokens"]
    summary.update(
        window={"start": reports.started, "end": now},
        by_user=reports.log.by_user(team),
        rates={**reports.log.rates(team), "tokens": tokens},
        resolution=reports.log.resolution(team),
        break_even=economics.break_even(
            snap.config, everything["input_tokens"] / all_tokens if all_tokens else 0.75, volume
        ),
    )
    return summary


def _tokens_per_day(state: RouterState, now: float) -> float:
    ring = state.reports.ring
    window = min(VOLUME_WINDOW_SECONDS, max(ring.step, now - state.reports.started))
    # Whole buckets: the one holding `now - window` counts whole (at most one step over).
    return ring.tokens_since(now - window) * economics.SECONDS_PER_DAY / window


_NOT_A_NUMBER = object()


def _number(value: object) -> float | object | None:
    """A finite JSON number as a float, None when absent, else `_NOT_A_NUMBER` (booleans are not numbers)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _NOT_A_NUMBER
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a float
        return _NOT_A_NUMBER
    return number if math.isfinite(number) else _NOT_A_NUMBER


class Reporting:
    def __init__(self, state: RouterState) -> None:
        self.state = state
        self._prometheus: dict[str, PrometheusHistory] = {}

    async def feedback(self, request: web.Request) -> web.Response:
        """`POST /v1/tiered/feedback`: `{request_id | task_id, outcome, score?}` judges a task."""
        state = self.state
        authorized, team = _scope(state.snapshot, request)
        if not authorized:
            return _error(401, "missing or invalid API key", "authentication_error", "invalid_api_key")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as error:
            return _error(400, f"malformed JSON: {error}", "invalid_request_error", "bad_request")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "invalid_request_error", "bad_request")
        request_id, task_id = body.get("request_id"), body.get("task_id")
        if not isinstance(request_id, str | None) or not isinstance(task_id, str | None) or not (request_id or task_id):
            message = "give `request_id` (the x-tiered-request-id of a reply) or `task_id` as a string"
            return _error(400, message, "invalid_request_error", "bad_request", "request_id")
        try:
            outcome = Outcome(str(body.get("outcome")))
        except ValueError:
            message = "`outcome` must be `resolved` or `unresolved`"
            return _error(400, message, "invalid_request_error", "bad_request", "outcome")
        score = _number(body.get("score"))
        if score is _NOT_A_NUMBER:
            return _error(400, "`score` must be a number", "invalid_request_error", "bad_request", "score")
        task = state.reports.log.find_task(request_id, task_id)
        if task is None or (team is not None and task.team != team):
            # Another team's task is reported as unknown: a key learns nothing about other teams' ids.
            message = "no such request or task (the router remembers the last 100k requests, 24 h)"
            return _error(404, message, "invalid_request_error", "not_found")
        judged = state.reports.log.judge(task, outcome, score if isinstance(score, float) else None)
        metrics = state.metrics
        metrics.feedback.labels(outcome.value, task.tier, task.team, task.feature).inc()
        if judged.newly_resolved:
            metrics.resolved_cost.labels(task.tier, task.team, task.feature).inc(task.cost_usd)
        return web.json_response(
            {
                "task": task.key,
                "outcome": outcome.value,
                "score": task.score,
                "requests": task.requests,
                "calls": task.calls,
                "cost_usd": task.cost_usd,
                "tier": task.tier,
                "team": task.team,
                "feature": task.feature,
            }
        )

    async def history(self, request: web.Request) -> web.Response:
        """`GET /v1/tiered/costs/history?window=S&step=S[&source=memory]`: cost and token series by tier."""
        state = self.state
        snap = state.snapshot
        authorized, team = _scope(snap, request)
        if not authorized:
            return _error(401, "missing or invalid API key", "authentication_error", "invalid_api_key")
        try:
            window = float(request.query.get("window", 3600))
            step = float(request.query.get("step", 60))
        except ValueError:
            return _error(400, "`window` and `step` are seconds", "invalid_request_error", "bad_request", "window")
        if not (math.isfinite(window) and math.isfinite(step)) or window <= 0 or step <= 0:
            return _error(400, "`window` and `step` must be positive", "invalid_request_error", "bad_request", "window")
        source = request.query.get("source")
        if source not in (None, "memory"):
            return _error(400, "`source` may only be `memory`", "invalid_request_error", "bad_request", "source")
        window = min(window, MAX_WINDOW_SECONDS)
        step = max(step, window / 720)  # at most 720 points
        now = time.time()
        url = snap.config.prometheus_url
        # A team's view stays on the ring: the router's token counter has no team label in Prometheus.
        if url and source is None and team is None:
            client = self._prometheus.get(url)
            if client is None:
                client = self._prometheus[url] = PrometheusHistory(url)
            try:
                series = await asyncio.to_thread(client.series, now, window, step, team)
            except Exception as error:  # Prometheus down or refusing: say so, fall back to the ring
                series = state.reports.ring.series(now, window, step, team)
                series["prometheus_error"] = f"{type(error).__name__}: {error}"[:300]
        else:
            series = state.reports.ring.series(now, window, step, team)
        series["team"] = team
        return web.json_response(series)

    async def page(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        kind = DASHBOARD_FILES.get(name)
        if kind is None:
            raise web.HTTPNotFound()
        data = resources.files("tiered_router").joinpath("dashboard", name).read_bytes()
        return web.Response(body=data, content_type=kind, headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application, state: RouterState) -> None:
    handlers = Reporting(state)
    app.router.add_post("/v1/tiered/feedback", handlers.feedback)
    app.router.add_get("/v1/tiered/costs/history", handlers.history)
    app.router.add_get("/dashboard", handlers.page)
    app.router.add_get("/dashboard/{name}", handlers.page)

