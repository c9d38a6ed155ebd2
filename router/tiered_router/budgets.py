"""Spend budgets and per-task budgets: which apply to a request, what it may spend, and what to do when over.

Owns the budget config models (`Budget`, `TaskBudget`, `BudgetSettings`, read into `RouterConfig`), UTC
windows (daily, monthly), the worst-case cost a request reserves before it is forwarded (prompt estimate
priced as input, `max_tokens` as output), the choice a request over budget gets (downgrade to the cheapest
tier that fits, or reject with the window's reset time), and two in-memory books:

- `SpendBook`: spend per (budget, window) — this replica's settled totals (what `tiered_router.spend_store`
  writes to the shared ConfigMap), the other replicas' totals (what it last read there) and this replica's
  reservations in flight. A request is admitted only when settled + reserved + its own worst case fits, so
  concurrent requests on one replica never overshoot; across replicas the others' reservations are not
  seen and their settled spend is at most one sync interval old.
- `TaskBook`: tokens and cost per `x-tiered-task-id`, bounded (LRU) and expiring (idle TTL), per replica.

Pure: no I/O, no HTTP or Kubernetes imports; time comes in as an argument.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

DOWNGRADED = "downgraded"
"""`x-tiered-budget` on a request a budget sent to a cheaper tier."""
BUDGET_REASON = "budget"
"""The routing reason (x-tiered-reason, metrics) of a downgraded request."""
ALERTED = "over-task-budget"
"""`x-tiered-budget` on a request over its task budget whose policy only alerts."""


class _Model(BaseModel):
    # As config.py's `_Model` (not imported: config imports this module).
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class OnExceed(StrEnum):
    DOWNGRADE = "downgrade"
    """Send the request to the cheapest tier that fits (`x-tiered-budget: downgraded`); 429 if none does."""
    REJECT = "reject"
    """429 with the window's reset time (Retry-After and the message)."""
    ALERT = "alert"
    """Task budgets only: serve as chosen, count it (tiered_router_task_budget_exceeded) and log once."""


class Window(StrEnum):
    DAILY = "daily"
    MONTHLY = "monthly"


class Budget(_Model):
    """A spend cap on the requests that match all of its given selectors (none given: every request)."""

    team: str | None = Field(None, description="Requests of this team (the API key's team, else the claim).")
    feature: str | None = Field(None, description="Requests of this feature.")
    api_key: str | None = Field(None, description="Requests made with the API key of this `name` in the keys file.")
    daily_usd: float | None = Field(None, ge=0, alias="dailyUSD", description="USD per UTC day.")
    monthly_usd: float | None = Field(None, ge=0, alias="monthlyUSD", description="USD per UTC calendar month.")
    on_exceed: OnExceed = Field(OnExceed.DOWNGRADE, description="downgrade (default) or reject.")

    @model_validator(mode="after")
    def _check(self) -> Budget:
        if self.daily_usd is None and self.monthly_usd is None:
            raise ValueError(f"budget {self.id}: give dailyUSD, monthlyUSD or both")
        if self.on_exceed is OnExceed.ALERT:
            raise ValueError(f"budget {self.id}: onExceed is downgrade or reject (alert is for task budgets)")
        return self

    @property
    def id(self) -> str:
        """Stable name of the budget's scope: the key of its spend in the shared store."""
        parts = [f"{k}={v}" for k, v in (("team", self.team), ("feature", self.feature), ("key", self.api_key)) if v]
        return ",".join(parts) or "all"

    def limits(self) -> list[tuple[Window, float]]:
        pairs = ((Window.DAILY, self.daily_usd), (Window.MONTHLY, self.monthly_usd))
        return [(window, limit) for window, limit in pairs if limit is not None]

    def applies(self, team: str, feature: str, api_key: str | None) -> bool:
        return (
            (self.team is None or self.team == team)
            and (self.feature is None or self.feature == feature)
            and (self.api_key is None or self.api_key == api_key)
        )


class TaskBudget(_Model):
    """Per task (`x-tiered-task-id`): tokens and cost summed over its calls, kept while the task is active."""

    max_tokens: int | None = Field(None, ge=1, description="Input + output tokens per task.")
    max_usd: float | None = Field(None, ge=0, alias="maxUSD", description="USD per task.")
    on_exceed: OnExceed = Field(OnExceed.ALERT, description="alert (default: metric + log line), downgrade or reject.")
    ttl_seconds: float = Field(3600.0, gt=0, description="A task idle this long is forgotten.")
    max_tasks: int = Field(10000, ge=1, le=1_000_000, description="Tasks tracked at once (least recent dropped).")

    @model_validator(mode="after")
    def _check(self) -> TaskBudget:
        if self.max_tokens is None and self.max_usd is None:
            raise ValueError("taskBudget: give maxTokens, maxUSD or both")
        return self


class LocalTiers(StrEnum):
    EXEMPT = "exempt"
    """Self-hosted tiers count against no budget and always fit: downgrades go there."""
    PRICED = "priced"
    """Self-hosted tiers' GPU-time price counts like an external tier's."""


class SpendStore(_Model):
    """Where replicas of one policy keep and share their spend: one ConfigMap, one data key per replica."""

    config_map: str = Field(description="ConfigMap name, e.g. tiered-spend-<policy>.")
    namespace: str = Field("default", description="Its namespace (the router pod's own).")
    sync_seconds: float = Field(
        5.0, gt=0, le=300, description="Seconds between syncs: also the enforcement lag across replicas."
    )
    kubeconfig: str | None = Field(
        None, description="Kubeconfig file (tests, local runs); default: in-cluster service account, else $KUBECONFIG."
    )


class BudgetSettings(_Model):
    """How budgets are enforced (shared by every entry of `budgets`)."""

    local_tiers: LocalTiers = Field(LocalTiers.EXEMPT, description="Self-hosted tiers: exempt (default) or priced.")
    assume_max_tokens: int = Field(
        4096, ge=1, description="Output tokens reserved for a request that gives no max_tokens."
    )
    store: SpendStore | None = Field(None, description="The shared durable store; none: spend kept in memory only.")


# ---- windows -------------------------------------------------------------------------------------------


def window_start(window: Window, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    if window is Window.DAILY:
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def window_reset(window: Window, now: datetime) -> datetime:
    """When the window holding `now` ends (the next one starts): what a 429 names."""
    start = window_start(window, now)
    if window is Window.DAILY:
        return start + timedelta(days=1)
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def window_label(window: Window, now: datetime) -> str:
    """`daily:2026-12-01` / `monthly:2026-12`: names the window in the store (old ones are dropped)."""
    start = window_start(window, now)
    return f"daily:{start:%Y-%m-%d}" if window is Window.DAILY else f"monthly:{start:%Y-%m}"


def current_labels(now: datetime) -> frozenset[str]:
    return frozenset(window_label(w, now) for w in Window)


def spend_key(budget_id: str, window_label: str) -> str:
    return f"{budget_id}|{window_label}"


def is_current(key: str, now: datetime) -> bool:
    return key.rpartition("|")[2] in current_labels(now)


# ---- the cost a request may reach ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PerToken:
    """USD per input and output token (as `cost.Price`, which is not imported: cost imports config)."""

    input: float
    output: float


def requested_max_tokens(body: Mapping[str, object]) -> int | None:
    """The output cap a request gives (`max_completion_tokens`, else `max_tokens`), if a positive integer."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def worst_case(price: PerToken, prompt_tokens: int, max_tokens: int) -> float:
    return prompt_tokens * price.input + max_tokens * price.output


# ---- the books -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Hold:
    """What one request reserved (released once when it ends) and where its settled cost goes."""

    keys: tuple[str, ...]
    """Spend keys of the budgets and windows that apply to it."""
    amount: float
    """USD reserved on each of `keys` (0 when its tier is exempt)."""
    exempt: frozenset[str] = frozenset()
    """Tiers whose cost counts against no budget (self-hosted tiers when `localTiers: exempt`)."""
    task: str | None = None
    task_tokens: int = 0
    """Tokens reserved on the task."""
    task_usd: float = 0.0
    """USD reserved on the task (every tier priced: a task's cost is what it cost, exempt or not)."""
    released: bool = False


class SpendBook:
    """Spend per `budget|window` key: own settled, others' (last sync) and reserved in flight."""

    def __init__(self) -> None:
        self.own: dict[str, float] = {}
        self.others: dict[str, float] = {}
        self.reserved: dict[str, float] = {}

    def spent(self, key: str) -> float:
        return self.own.get(key, 0.0) + self.others.get(key, 0.0) + self.reserved.get(key, 0.0)

    def reserve(self, keys: Iterable[str], amount: float) -> None:
        for key in keys:
            self.reserved[key] = self.reserved.get(key, 0.0) + amount

    def release(self, keys: Iterable[str], amount: float) -> None:
        for key in keys:
            left = self.reserved.get(key, 0.0) - amount
            if left > 1e-12:
                self.reserved[key] = left
            else:
                self.reserved.pop(key, None)

    def charge(self, keys: Iterable[str], amount: float) -> None:
        for key in keys:
            self.own[key] = self.own.get(key, 0.0) + amount

    def forget_old(self, now: datetime) -> None:
        """Drop totals of windows that ended (a month's totals live until the month ends)."""
        for book in (self.own, self.others):
            for key in [k for k in book if not is_current(k, now)]:
                del book[key]


@dataclass(slots=True)
class TaskLine:
    tokens: int = 0
    cost_usd: float = 0.0
    reserved_tokens: int = 0
    reserved_usd: float = 0.0
    last_seen: float = 0.0
    alerted: bool = False


class TaskBook:
    """Tokens and cost per task id: at most `max_tasks` (least recently seen dropped), idle ones expire."""

    def __init__(self) -> None:
        self.lines: OrderedDict[str, TaskLine] = OrderedDict()

    def line(self, task: str, now: float, settings: TaskBudget) -> TaskLine:
        self.expire(now, settings)
        line = self.lines.get(task)
        if line is None:
            line = self.lines[task] = TaskLine()
            while len(self.lines) > settings.max_tasks:
                self.lines.popitem(last=False)
        self.lines.move_to_end(task)
        line.last_seen = now
        return line

    def expire(self, now: float, settings: TaskBudget) -> None:
        while self.lines:
            oldest = next(iter(self.lines.values()))
            if now - oldest.last_seen < settings.ttl_seconds or oldest.reserved_tokens:
                return
            self.lines.popitem(last=False)


def task_over(line: TaskLine, settings: TaskBudget, tokens: int, usd: float) -> bool:
    """Would this request (worst case `tokens`, `usd`) take the task past its budget?"""
    if settings.max_tokens is not None and line.tokens + line.reserved_tokens + tokens > settings.max_tokens:
        return True
    return settings.max_usd is not None and line.cost_usd + line.reserved_usd + usd > settings.max_usd


# ---- the decision --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """What budgets need to know about one request."""

    team: str
    feature: str
    api_key: str | None
    prompt_tokens: int
    max_tokens: int
    task: str | None = None
    private: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """`tier` None and `reject` set: answer 429. `downgrade_to` set: route there instead of the chosen tier."""

    keys: tuple[str, ...] = ()
    downgrade_to: str | None = None
    reject: str | None = None
    """The 429 message (names the budget, its window and when it resets)."""
    retry_after: int = 0
    alert: bool = False
    """Over the task budget, policy `alert`: serve as chosen, count it."""
    exceeded: tuple[str, ...] = ()
    """Budget ids (or `task`) that were over: for metrics."""


@dataclass(frozen=True, slots=True)
class Tiers:
    """The tiers a request may go to, cheapest first by its worst case, and which are exempt."""

    prices: Mapping[str, PerToken]
    exempt: frozenset[str]
    allowed: tuple[str, ...]
    """Tiers the request may be sent to (for a private one: local tiers only)."""


def applicable(budgets: Iterable[Budget], request: Request, now: datetime) -> list[tuple[Budget, Window, float, str]]:
    """(budget, window, limit, spend key) for every budget and window that applies to `request`."""
    return [
        (budget, window, limit, spend_key(budget.id, window_label(window, now)))
        for budget in budgets
        if budget.applies(request.team, request.feature, request.api_key)
        for window, limit in budget.limits()
    ]


Row = tuple[Budget, Window, float, str]
"""(budget, window, limit, spend key)."""


def _fits(tier: str, tiers: Tiers, request: Request, rows: list[Row], spent: Callable[[str], float]) -> list[Row]:
    """The budget windows `tier` would overshoot with this request's worst case (empty: it fits)."""
    if tier in tiers.exempt:
        return []
    cost = worst_case(tiers.prices[tier], request.prompt_tokens, request.max_tokens)
    return [row for row in rows if spent(row[3]) + cost > row[2] + 1e-12]


def decide(
    chosen: str,
    budgets: Iterable[Budget],
    request: Request,
    tiers: Tiers,
    spent: Callable[[str], float],
    now: datetime,
    task_over_budget: bool = False,
    task_policy: OnExceed | None = None,
) -> Verdict:
    """What budgets say about sending `request` to `chosen`: go, go elsewhere (downgrade) or 429."""
    rows = applicable(budgets, request, now)
    keys = tuple(row[3] for row in rows)
    over = _fits(chosen, tiers, request, rows, spent)
    task_action = task_policy if task_over_budget else None
    if not over and task_action in (None, OnExceed.ALERT):
        return Verdict(keys, alert=task_action is OnExceed.ALERT, exceeded=("task",) if task_action else ())
    exceeded = tuple(dict.fromkeys(row[0].id for row in over)) + (("task",) if task_action else ())
    rejecting = [row for row in over if row[0].on_exceed is OnExceed.REJECT]
    if rejecting or task_action is OnExceed.REJECT:
        return _reject(rejecting, now, keys, exceeded)
    # Downgrade: the cheapest tier (by its real price, exempt or not) whose worst case fits every budget.
    cost = {t: worst_case(tiers.prices[t], request.prompt_tokens, request.max_tokens) for t in tiers.allowed}
    for tier in sorted(tiers.allowed, key=lambda t: (cost[t], t)):
        if not _fits(tier, tiers, request, rows, spent):
            if tier == chosen:
                break
            return Verdict(keys, downgrade_to=tier, exceeded=exceeded)
    else:
        return _reject(over, now, keys, exceeded)
    return Verdict(keys, exceeded=exceeded)  # the chosen tier is already the cheapest that fits


def _reject(
    rows: list[tuple[Budget, Window, float, str]], now: datetime, keys: tuple[str, ...], exceeded: tuple[str, ...]
) -> Verdict:
    if not rows:
        message = "this task is over its budget (x-tiered-task-id)"
        return Verdict(keys, reject=message, retry_after=60, exceeded=exceeded)
    # The request can go again when every window it overshoots has reset: name the latest reset.
    budget, window, limit, _ = max(rows, key=lambda row: window_reset(row[1], now))
    reset = window_reset(window, now)
    seconds = max(1, math.ceil((reset - now).total_seconds()))
    message = (
        f"budget {budget.id} is spent: {window.value} limit {limit:g} USD; "
        f"the window resets at {reset:%Y-%m-%dT%H:%M:%SZ}"
    )
    return Verdict(keys, reject=message, retry_after=seconds, exceeded=exceeded)


@dataclass
class Budgets:
    """Both books of one router process (kept across config reloads)."""

    spend: SpendBook = field(default_factory=SpendBook)
    tasks: TaskBook = field(default_factory=TaskBook)


@dataclass(frozen=True, slots=True)
class Limits:
    """The budget parts of one config, as the request path reads them."""

    budgets: tuple[Budget, ...]
    settings: BudgetSettings
    task: TaskBudget | None

    @property
    def active(self) -> bool:
        return bool(self.budgets) or self.task is not None


def admit(
    books: Budgets,
    limits: Limits,
    request: Request,
    chosen: str,
    tiers: Tiers,
    now: datetime,
    clock: float,
) -> Verdict:
    """Check `request` against its budgets and its task's budget (no reservation yet: see `hold`)."""
    task_over_budget = False
    if request.task is not None and limits.task is not None:
        line = books.tasks.line(request.task, clock, limits.task)
        tokens = request.prompt_tokens + request.max_tokens
        usd = worst_case(tiers.prices[chosen], request.prompt_tokens, request.max_tokens)  # tasks: every tier priced
        task_over_budget = task_over(line, limits.task, tokens, usd)
    return decide(
        chosen,
        limits.budgets,
        request,
        tiers,
        books.spend.spent,
        now,
        task_over_budget,
        limits.task.on_exceed if limits.task is not None else None,
    )


def fitting(
    chain: Iterable[str], request: Request, tiers: Tiers, books: Budgets, limits: Limits, now: datetime
) -> tuple[str, ...]:
    """The tiers of `chain` this request's worst case fits on (for a downgraded request's chain)."""
    rows = applicable(limits.budgets, request, now)
    return tuple(t for t in chain if not _fits(t, tiers, request, rows, books.spend.spent))


def hold(books: Budgets, verdict: Verdict, request: Request, chain: Iterable[str], tiers: Tiers,
         limits: Limits, clock: float) -> Hold:
    """Reserve the request's worst case on the dearest tier of its chain (a fallback may answer it)."""
    costs = {t: worst_case(tiers.prices[t], request.prompt_tokens, request.max_tokens) for t in chain}
    worst = max((c for t, c in costs.items() if t not in tiers.exempt), default=0.0)
    books.spend.reserve(verdict.keys, worst)
    held = Hold(verdict.keys, worst, tiers.exempt)
    if request.task is not None and limits.task is not None:
        line = books.tasks.line(request.task, clock, limits.task)
        held.task, held.task_tokens = request.task, request.prompt_tokens + request.max_tokens
        held.task_usd = max(costs.values(), default=0.0)
        line.reserved_tokens += held.task_tokens
        line.reserved_usd += held.task_usd
    return held


def settle(books: Budgets, held: Hold, tier: str, tokens: int, usd: float) -> None:
    """Count one answer's real cost (a request may have two: the escalation's second call)."""
    if tier not in held.exempt:
        books.spend.charge(held.keys, usd)
    if held.task is not None:
        line = books.tasks.lines.get(held.task)
        if line is not None:
            line.tokens += tokens
            line.cost_usd += usd


def release(books: Budgets, held: Hold) -> None:
    """Give back what the request reserved; once, whatever happened to it."""
    if held.released:
        return
    held.released = True
    books.spend.release(held.keys, held.amount)
    if held.task is not None:
        line = books.tasks.lines.get(held.task)
        if line is not None:
            line.reserved_tokens = max(0, line.reserved_tokens - held.task_tokens)
            line.reserved_usd = max(0.0, line.reserved_usd - held.task_usd)


def tier_table(
    prices: Mapping[str, PerToken], local: Iterable[str], settings: BudgetSettings, private: bool
) -> Tiers:
    local = frozenset(local)
    exempt = local if settings.local_tiers is LocalTiers.EXEMPT else frozenset()
    allowed = tuple(t for t in prices if not private or t in local)
    return Tiers(prices, exempt, allowed)
