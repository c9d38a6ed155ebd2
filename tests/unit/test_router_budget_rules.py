"""Budgets, pure: windows and reset times, which budgets apply, reservation and settlement, downgrade choice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from tiered_router.budgets import (
    Budget,
    Budgets,
    BudgetSettings,
    Limits,
    LocalTiers,
    OnExceed,
    PerToken,
    Request,
    TaskBudget,
    Window,
    admit,
    applicable,
    hold,
    release,
    requested_max_tokens,
    settle,
    spend_key,
    tier_table,
    window_label,
    window_reset,
)
from tiered_router.config import RouterConfig

NOW = datetime(2026, 12, 31, 22, 30, tzinfo=UTC)
# small: local; big: external at $10 / $20 per million tokens; mid: external, half big's price.
PRICES = {"small": PerToken(1e-7, 1e-7), "mid": PerToken(5e-6, 1e-5), "big": PerToken(1e-5, 2e-5)}
LOCAL = ["small"]


def tiers(private: bool = False, local_tiers: LocalTiers = LocalTiers.EXEMPT):  # type: ignore[no-untyped-def]
    return tier_table(PRICES, LOCAL, BudgetSettings(local_tiers=local_tiers), private)


def req(team: str = "web", feature: str = "chat", key: str | None = None, prompt: int = 100, out: int = 400,
        task: str | None = None) -> Request:
    return Request(team, feature, key, prompt, out, task)


@pytest.mark.parametrize(
    ("window", "now", "label", "reset"),
    [
        (Window.DAILY, NOW, "daily:2026-12-31", datetime(2027, 1, 1, tzinfo=UTC)),
        (Window.MONTHLY, NOW, "monthly:2026-12", datetime(2027, 1, 1, tzinfo=UTC)),
        (Window.MONTHLY, datetime(2026, 2, 10, tzinfo=UTC), "monthly:2026-02", datetime(2026, 3, 1, tzinfo=UTC)),
        (Window.DAILY, datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC), "daily:2026-02-28",
         datetime(2026, 3, 1, tzinfo=UTC)),
    ],
)
def test_windows_are_utc_days_and_calendar_months(window: Window, now: datetime, label: str,
                                                  reset: datetime) -> None:
    assert (window_label(window, now), window_reset(window, now)) == (label, reset)


def test_budgets_apply_by_every_given_selector_and_in_each_window() -> None:
    budgets = [
        Budget(team="web", monthly_usd=10, daily_usd=1),
        Budget(team="web", feature="search", monthly_usd=5),
        Budget(api_key="ci", daily_usd=2, on_exceed=OnExceed.REJECT),
        Budget(monthly_usd=100),
    ]
    ids = [(b.id, w.value) for b, w, _, _ in applicable(budgets, req(key="ci"), NOW)]
    assert ids == [("team=web", "daily"), ("team=web", "monthly"), ("key=ci", "daily"), ("all", "monthly")]
    assert [b.id for b, *_ in applicable(budgets, req(team="ops", feature="search"), NOW)] == ["all"]


def test_a_budget_needs_a_limit_and_scopes_must_differ() -> None:
    with pytest.raises(ValidationError, match="dailyUSD, monthlyUSD or both"):
        Budget(team="web")
    with pytest.raises(ValidationError, match="alert is for task budgets"):
        Budget(team="web", daily_usd=1, on_exceed=OnExceed.ALERT)
    tier = {"name": "a", "baseURL": "http://a/v1", "pricing": {"gpuHourUSD": 1, "tokensPerSecond": 10}}
    with pytest.raises(ValidationError, match="distinct scopes"):
        RouterConfig.model_validate({"tiers": [tier], "default": "a",
                                     "budgets": [{"team": "x", "dailyUSD": 1}, {"team": "x", "monthlyUSD": 9}]})


@pytest.mark.parametrize(
    ("body", "expected"),
    [({"max_tokens": 50}, 50), ({"max_completion_tokens": 70, "max_tokens": 50}, 70), ({}, None),
     ({"max_tokens": True}, None), ({"max_tokens": 0}, None), ({"max_tokens": "9"}, None)],
)
def test_requested_max_tokens(body: dict[str, object], expected: int | None) -> None:
    assert requested_max_tokens(body) == expected


def limits(*budgets: Budget, task: TaskBudget | None = None) -> Limits:
    return Limits(tuple(budgets), BudgetSettings(), task)


def test_reservation_makes_concurrent_requests_fit_and_release_gives_it_back() -> None:
    # The worst case on big: 100 × $10/M + 400 × $20/M = $0.009; the budget takes two of them, not three.
    books, lim = Budgets(), limits(Budget(team="web", daily_usd=0.02, on_exceed=OnExceed.REJECT))
    held = []
    for _ in range(2):
        verdict = admit(books, lim, req(), "big", tiers(), NOW, 0.0)
        assert verdict.reject is None and verdict.downgrade_to is None
        held.append(hold(books, verdict, req(), ("big",), tiers(), lim, 0.0))
    third = admit(books, lim, req(), "big", tiers(), NOW, 0.0)
    assert third.reject is not None and "team=web" in third.reject and "2027-01-01T00:00:00Z" in third.reject
    assert third.retry_after == 90 * 60  # 22:30 → midnight
    settle(books, held[0], "big", 150, 0.002)  # it cost less than its worst case
    release(books, held[0])
    release(books, held[0])  # once only
    key = spend_key("team=web", "daily:2026-12-31")
    assert books.spend.own[key] == pytest.approx(0.002)
    assert books.spend.spent(key) == pytest.approx(0.002 + 0.009)
    assert admit(books, lim, req(), "big", tiers(), NOW, 0.0).reject is None


def test_downgrade_picks_the_cheapest_tier_that_fits_and_local_tiers_are_exempt_or_priced() -> None:
    books, lim = Budgets(), limits(Budget(team="web", monthly_usd=0.01))
    books.spend.own[spend_key("team=web", "monthly:2026-12")] = 0.004  # big's $0.009 no longer fits, mid's does
    assert admit(books, lim, req(), "big", tiers(), NOW, 0.0).downgrade_to == "small"  # exempt: the cheapest
    # Local tiers priced, and not allowed for... nothing: small is priced at $0.00005 and still the cheapest.
    assert admit(books, lim, req(), "big", tiers(local_tiers=LocalTiers.PRICED), NOW, 0.0).downgrade_to == "small"
    # Without a local tier the cheapest that fits is mid.
    external = tier_table({k: v for k, v in PRICES.items() if k != "small"}, [], BudgetSettings(), False)
    assert admit(books, lim, req(), "big", external, NOW, 0.0).downgrade_to == "mid"
    books.spend.own[spend_key("team=web", "monthly:2026-12")] = 0.0099
    verdict = admit(books, lim, req(), "big", external, NOW, 0.0)
    assert verdict.reject is not None and "monthly limit 0.01 USD" in verdict.reject  # nothing fits: 429
    # Already on an exempt tier: nothing to do.
    assert admit(books, lim, req(), "small", tiers(), NOW, 0.0) == admit(books, lim, req(), "small", tiers(), NOW, 0)


def test_reject_wins_over_downgrade_and_names_the_latest_reset() -> None:
    books = Budgets()
    lim = limits(Budget(team="web", monthly_usd=0.001), Budget(feature="chat", daily_usd=0.001, on_exceed="reject"))
    verdict = admit(books, lim, req(), "big", tiers(), datetime(2026, 12, 10, 12, tzinfo=UTC), 0.0)
    assert verdict.reject is not None and verdict.exceeded == ("team=web", "feature=chat")
    assert "daily limit" in verdict.reject and verdict.retry_after == 12 * 3600


def test_task_budgets_sum_calls_and_alert_downgrade_or_reject() -> None:
    for action, check in [("alert", lambda v: v.alert and v.reject is None),
                          ("downgrade", lambda v: v.downgrade_to == "small"),
                          ("reject", lambda v: v.reject is not None)]:
        books = Budgets()
        lim = limits(task=TaskBudget(max_tokens=1000, on_exceed=action))
        first = admit(books, lim, req(task="t1"), "big", tiers(), NOW, 0.0)
        assert first == admit(books, lim, req(task="t2"), "big", tiers(), NOW, 0.0) and not first.alert
        held = hold(books, first, req(task="t1"), ("big",), tiers(), lim, 0.0)
        settle(books, held, "big", 600, 0.01)
        release(books, held)
        assert books.tasks.lines["t1"].tokens == 600
        assert check(admit(books, lim, req(task="t1"), "big", tiers(), NOW, 1.0)), action  # 600 + 500 > 1000
        assert not admit(books, lim, req(task="t2"), "big", tiers(), NOW, 1.0).exceeded  # another task


def test_tasks_are_bounded_and_expire() -> None:
    books, settings = Budgets(), TaskBudget(max_tokens=10, ttl_seconds=60, max_tasks=3)
    for i in range(5):
        books.tasks.line(f"t{i}", float(i), settings).tokens = 1
    assert list(books.tasks.lines) == ["t2", "t3", "t4"]
    books.tasks.line("t9", 63.5, settings)  # t2 and t3 idle for 60 s or more
    assert list(books.tasks.lines) == ["t4", "t9"]


def test_old_windows_are_forgotten() -> None:
    books = Budgets()
    books.spend.own = {spend_key("all", "daily:2026-12-30"): 1.0, spend_key("all", "monthly:2026-12"): 2.0}
    books.spend.others = {spend_key("all", "monthly:2026-11"): 3.0}
    books.spend.forget_old(NOW)
    assert books.spend.own == {spend_key("all", "monthly:2026-12"): 2.0} and books.spend.others == {}


def test_private_requests_downgrade_only_to_local_tiers() -> None:
    private = tiers(private=True)
    assert private.allowed == ("small",)
