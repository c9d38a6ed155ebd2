"""Requests, tasks and their outcomes: the data behind cost per resolved task (pure, bounded, in memory).

Every completion request gets an id (`x-tiered-request-id`). `CallLog` remembers, for a bounded time and
count, each request's tier, team, feature, end user, task id, cost, baseline cost, and whether it was
escalated or answered from the cache; an escalated request is one request of two priced calls. Requests
that share a task id (`x-tiered-task-id` / `metadata.task_id`) form one task; a request without one is a
task of its own.

`POST /v1/tiered/feedback` gives a task an outcome (`resolved` / `unresolved`, optional score), named by
the task id or by any of its requests' ids; the latest outcome counts. Then, per tier, team and feature:

    cost per resolved task = cost of every judged task (resolved or not) / resolved tasks
    resolution rate        = resolved tasks / judged tasks

so the calls of unresolved tasks are paid for by the resolved ones, which is what a resolution costs.
A task counts under the team and feature of its first request and the tier that answered its last call.

Since-start totals by end user and the escalation and cache counts live here too (the ledger in
`tiered_router.cost` keys by tier, team and feature only).

Must not: import the HTTP server or look at a request; it is control state owned by `RouterState`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tiered_router.history import HistoryRing

MAX_REQUESTS = 100_000
MAX_AGE_SECONDS = 24 * 3600.0


class Outcome(StrEnum):
    RESOLVED = "resolved"
    UNRESOLVED = "unresolved"


@dataclass(slots=True)
class RequestRecord:
    """One client request: the sum of its priced calls (two for an escalated one)."""

    request_id: str
    at: float
    tier: str
    team: str
    feature: str
    user: str
    task_key: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    escalated: bool = False
    cache_hit: bool = False


@dataclass(slots=True)
class TaskRecord:
    """The calls of one task so far, and its outcome once feedback named it."""

    key: str
    at: float
    team: str
    feature: str
    tier: str
    requests: int = 0
    calls: int = 0
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    outcome: Outcome | None = None
    score: float | None = None


@dataclass(slots=True)
class UserLine:
    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Judged:
    """What one piece of feedback changed: the task, and whether it just became resolved."""

    task: TaskRecord
    newly_resolved: bool


def task_key(task_id: str | None, request_id: str) -> str:
    """Tasks are keyed by the caller's task id; a request without one is its own task."""
    return f"task:{task_id}" if task_id else f"request:{request_id}"


@dataclass(slots=True)
class CallLog:
    """Bounded memory of requests and tasks (oldest dropped first past `max_requests` or `max_age`)."""

    max_requests: int = MAX_REQUESTS
    max_age: float = MAX_AGE_SECONDS
    requests: OrderedDict[str, RequestRecord] = field(default_factory=OrderedDict)
    tasks: OrderedDict[str, TaskRecord] = field(default_factory=OrderedDict)
    users: dict[tuple[str, str], UserLine] = field(default_factory=dict)
    """(team, user) → since-start totals; users are label-bounded by the caller (`LabelBounds`)."""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """team → {"requests", "escalated", "cache_hits"} since start."""

    def add(
        self,
        now: float,
        request_id: str,
        task_id: str | None,
        tier: str,
        team: str,
        feature: str,
        user: str,
        input_tokens: int,
        output_tokens: int,
        cost: float,
        baseline: float,
        escalation: bool = False,
        cache_hit: bool = False,
    ) -> None:
        """Count one priced call of request `request_id` (`escalation`: the second call of an escalated one)."""
        record = self.requests.get(request_id)
        if record is None:
            self._expire(now)
        counts = self.counts.setdefault(team, {"requests": 0, "escalated": 0, "cache_hits": 0})
        new_request = record is None
        if record is None:
            key = task_key(task_id, request_id)
            record = self.requests[request_id] = RequestRecord(request_id, now, tier, team, feature, user, key)
            counts["requests"] += 1
        record.tier = tier  # the last call's tier answered the client (the escalation `to` tier)
        record.calls += 1
        record.input_tokens += input_tokens
        record.output_tokens += output_tokens
        record.cost_usd += cost
        record.baseline_cost_usd += baseline
        if escalation and not record.escalated:
            record.escalated = True
            counts["escalated"] += 1
        if cache_hit and not record.cache_hit:
            record.cache_hit = True
            counts["cache_hits"] += 1
        task = self.tasks.get(record.task_key)
        if task is None:
            task = self.tasks[record.task_key] = TaskRecord(record.task_key, now, team, feature, tier)
        else:
            self.tasks.move_to_end(record.task_key)
        task.at, task.tier = now, tier
        task.requests += new_request
        task.calls += 1
        task.cost_usd += cost
        task.baseline_cost_usd += baseline
        line = self.users.setdefault((team, user), UserLine())
        line.requests += new_request
        line.tokens += input_tokens + output_tokens
        line.cost_usd += cost

    def _expire(self, now: float) -> None:
        """Drop what is older than `max_age`, and the oldest beyond room for one more of each."""
        _trim(self.requests, self.max_requests, now - self.max_age)
        _trim(self.tasks, self.max_requests, now - self.max_age)

    def find_task(self, request_id: str | None, task_id: str | None) -> TaskRecord | None:
        """The task a feedback names: by its task id, or the task of one of its requests."""
        if task_id:
            return self.tasks.get(task_key(task_id, ""))
        record = self.requests.get(request_id or "")
        return self.tasks.get(record.task_key) if record is not None else None

    def judge(self, task: TaskRecord, outcome: Outcome, score: float | None) -> Judged:
        newly = outcome is Outcome.RESOLVED and task.outcome is not Outcome.RESOLVED
        task.outcome, task.score = outcome, score
        return Judged(task, newly)

    def resolution(self, team_only: str | None = None) -> dict[str, Any]:
        """Cost per resolved task and resolution rate: overall and by tier, team and feature."""
        groups: dict[str, dict[str, _Tally]] = {"tier": {}, "team": {}, "feature": {}}
        total = _Tally()
        for task in self.tasks.values():
            if task.outcome is None or (team_only is not None and task.team != team_only):
                continue
            total.count(task)
            for name, value in (("tier", task.tier), ("team", task.team), ("feature", task.feature)):
                groups[name].setdefault(value, _Tally()).count(task)
        return {
            "definition": "cost of judged tasks / resolved tasks; resolution rate = resolved / judged",
            "totals": total.as_dict(),
            **{f"by_{name}": [{name: k, **t.as_dict()} for k, t in sorted(g.items())] for name, g in groups.items()},
        }

    def by_user(self, team_only: str | None = None) -> list[dict[str, Any]]:
        return [
            {"team": team, "user": user, "requests": line.requests, "tokens": line.tokens, "cost_usd": line.cost_usd}
            for (team, user), line in sorted(self.users.items(), key=lambda item: -item[1].cost_usd)
            if team_only is None or team == team_only
        ]

    def rates(self, team_only: str | None = None) -> dict[str, Any]:
        """Escalated and cache-hit requests, counts and shares of all requests since start."""
        requests = escalated = cached = 0
        for team, counts in self.counts.items():
            if team_only is None or team == team_only:
                requests += counts["requests"]
                escalated += counts["escalated"]
                cached += counts["cache_hits"]
        return {
            "requests": requests,
            "escalated": escalated,
            "cache_hits": cached,
            "escalation_rate": escalated / requests if requests else 0.0,
            "cache_hit_rate": cached / requests if requests else 0.0,
        }


def _trim(table: OrderedDict[str, Any], cap: int, cutoff: float) -> None:
    while table and (len(table) >= cap or next(iter(table.values())).at < cutoff):
        table.popitem(last=False)


@dataclass(slots=True)
class _Tally:
    judged: int = 0
    resolved: int = 0
    calls: int = 0
    cost_usd: float = 0.0
    resolved_cost_usd: float = 0.0

    def count(self, task: TaskRecord) -> None:
        self.judged += 1
        self.calls += task.calls
        self.cost_usd += task.cost_usd
        if task.outcome is Outcome.RESOLVED:
            self.resolved += 1
            self.resolved_cost_usd += task.cost_usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks_judged": self.judged,
            "tasks_resolved": self.resolved,
            "calls": self.calls,
            "judged_cost_usd": self.cost_usd,
            "resolved_cost_usd": self.resolved_cost_usd,
            "cost_per_resolved_task_usd": self.cost_usd / self.resolved if self.resolved else None,
            "resolution_rate": self.resolved / self.judged if self.judged else None,
        }


class Reports:
    """What the cost API reports beyond the ledger: the call log (tasks, users, rates) and the history ring."""

    def __init__(self, log: CallLog | None = None, ring: HistoryRing | None = None, started: float = 0.0) -> None:
        self.log = log or CallLog()
        self.ring = ring or HistoryRing()
        self.started = started
        """Wall-clock time the router started counting (the window of /v1/tiered/costs)."""

    def add(
        self,
        now: float,
        request_id: str,
        task_id: str | None,
        tier: str,
        team: str,
        feature: str,
        user: str,
        input_tokens: int,
        output_tokens: int,
        cost: float,
        baseline: float,
        escalation: bool = False,
        cache_hit: bool = False,
    ) -> None:
        new_request = request_id not in self.log.requests
        self.log.add(
            now, request_id, task_id, tier, team, feature, user, input_tokens, output_tokens, cost, baseline,
            escalation, cache_hit,
        )  # fmt: skip
        if not cache_hit:  # the ring is what was burned upstream, like the ledger and the Prometheus counters
            self.ring.add(now, (tier, team, feature), input_tokens, output_tokens, cost, baseline, new_request)
