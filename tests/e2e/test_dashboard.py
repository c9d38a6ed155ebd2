"""The cost dashboard in a real browser: headless Chromium (Debian's, over the DevTools protocol) loads
`/dashboard` from a real router after a bounded workload through fake upstreams, a screenshot is saved,
and every number the page shows (read from its `data-metric` elements) equals `/v1/tiered/costs`.

The workload: two teams, three features, four end users, tasks of one to three calls with feedback, a
`Theorem` rule to the external tier, escalations (low-confidence answers of `small`), streams, exact-cache
hits (prompts repeat across rounds), and a burst flag on `small`. `UPDATE_SCREENSHOT=1` also writes the
screenshot to docs/img/dashboard.png (the README's picture comes from this workload).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from router_bed import FakeUpstream, Router, base_config, fakes, router
from tiered_devstack.browser import Page, chromium
from tiered_devstack.cluster import REPO_ROOT

pytestmark = pytest.mark.integration

KEYS = {
    "keys": [
        {"key": "sk-search", "team": "search"},
        {"key": "sk-support", "team": "support"},
        {"key": "sk-admin", "team": "platform", "admin": True},
    ]
}
FEATURES = ["answer", "summarise", "classify"]
USERS = ["ana", "ben", "chen", "dara"]
PICTURE = os.environ.get("UPDATE_SCREENSHOT") == "1"
ROUNDS, PAUSE = (12, 8.0) if PICTURE else (3, 0.0)
"""Rounds of the workload and seconds between them: spread over ~100 s for the README's picture."""
SCREENSHOT = REPO_ROOT / "docs" / "img" / "dashboard.png"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Router, dict[str, FakeUpstream]]]:
    tmp = tmp_path_factory.mktemp("dashboard")
    keys = tmp / "keys.yaml"
    keys.write_text(yaml.safe_dump(KEYS))
    with fakes(tmp, "small", "edge", "big") as up:
        config = base_config(
            up,
            escalation={"from": "small", "to": "big", "minConfidence": 0.7},
            cache={"exact": {"ttlSeconds": 600}},  # prompts repeat across rounds: later ones are hits
            apiKeysFile=str(keys),
            attribution={"features": FEATURES},
            privacy={},
        )
        config["tiers"][0].update(burst=True, burstTarget="big", concurrency=64)
        with router(config, tmp) as rt:
            workload(rt, up)
            yield rt, up


def workload(rt: Router, up: dict[str, FakeUpstream]) -> None:
    """A bounded mix: ROUNDS x 2 teams x 3 features x 2 users requests, some tasks judged."""
    n = 0
    for round_ in range(ROUNDS):
        if round_:
            time.sleep(PAUSE)
        for team in ("search", "support"):
            for f, feature in enumerate(FEATURES):
                for u, user in enumerate(USERS[(f + round_) % 2 :: 2]):
                    n += 1
                    low = n % 7 == 0  # this answer of `small` is unsure: escalated to `big`
                    up["small"].control.post("/_fake/logprobs", json={"logprob": math.log(0.1 if low else 0.95)})
                    # The Theorem prompt repeats (later ones are cache hits); the others differ by round.
                    text = "Prove the Theorem " * 6 if n % 5 == 0 else "word " * (5 + 3 * f + u) + str(round_)
                    task = f"{team}-{feature}-{round_}-{u % 2}"
                    reply = rt.http.post(
                        "/v1/chat/completions",
                        json={
                            "model": "auto",
                            "messages": [{"role": "user", "content": text}],
                            "user": user,
                            "stream": n % 6 == 0,
                            "metadata": {"task_id": task},
                        },
                        headers={"Authorization": f"Bearer sk-{team}", "x-tiered-feature": feature},
                    )
                    assert reply.status_code == 200, reply.text
                    if n % 3:
                        outcome = "unresolved" if n % 4 == 0 else "resolved"
                        judged = rt.http.post(
                            "/v1/tiered/feedback",
                            json={"request_id": reply.headers["x-tiered-request-id"], "outcome": outcome},
                            headers={"Authorization": f"Bearer sk-{team}"},
                        )
                        assert judged.status_code == 200, judged.text


def costs(rt: Router, key: str) -> dict[str, Any]:
    return rt.http.get("/v1/tiered/costs", headers={"Authorization": f"Bearer {key}"}).json()  # type: ignore[no-any-return]


READ_METRICS = """
(() => {
  const out = {};
  for (const el of document.querySelectorAll('[data-metric]')) {
    const name = el.dataset.key === undefined ? el.dataset.metric : el.dataset.metric + ':' + el.dataset.key;
    out[name] = el.dataset.value;
  }
  return out;
})()
"""


async def load(page: Page, rt: Router, key: str) -> dict[str, str]:
    """Open the dashboard with `key`, wait (bounded) until it has drawn, read every data-metric value."""
    await page.navigate("about:blank")  # a fresh document: only the fragment would change otherwise
    await page.wait_for("location.href === 'about:blank'")
    await page.navigate(f"{rt.url}/dashboard#key={key}&window=300")
    await page.wait_for("document.body && (document.body.dataset.loaded || document.body.dataset.error)")
    error = await page.evaluate("document.body.dataset.error || ''")
    assert not error, error
    return await page.evaluate(READ_METRICS)  # type: ignore[no-any-return]


def number(value: str) -> float | None:
    return None if value == "" else float(value)


def same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def expected_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """What the page must show, computed here from /v1/tiered/costs."""
    t, rates, resolution = summary["totals"], summary["rates"], summary["resolution"]
    expected: dict[str, float | None] = {
        "total-cost": t["cost_usd"],
        "baseline-cost": t["baseline_cost_usd"],
        "savings": t["savings_usd"],
        "savings-share": t["savings_usd"] / t["baseline_cost_usd"],
        "requests": t["requests"],
        "tokens": t["input_tokens"] + t["output_tokens"],
        "escalation-rate": rates["escalation_rate"],
        "escalated": rates["escalated"],
        "cache-hit-rate": rates["cache_hit_rate"],
        "cache-hits": rates["cache_hits"],
        "cost-per-resolved-task": resolution["totals"]["cost_per_resolved_task_usd"],
        "resolution-rate": resolution["totals"]["resolution_rate"],
    }
    rows = summary["by_tier_team_feature"]
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
    for group in ("team", "feature"):
        for key in {r[group] for r in rows}:
            expected[f"cost-by-{group}:{key}"] = sum(r["cost_usd"] for r in rows if r[group] == key)
    for tier in {r["tier"] for r in rows}:
        tier_tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows if r["tier"] == tier)
        expected[f"tier-share:{tier}"] = tier_tokens / tokens
    for user in summary["by_user"][:20]:  # a team's own view names users alone, the admin's as team/user
        name = user["user"] if summary["team"] else f"{user['team']}/{user['user']}"
        expected[f"cost-by-user:{name}"] = user["cost_usd"]
    for group in ("tier", "team", "feature"):
        for row in resolution[f"by_{group}"]:
            expected[f"resolution-rate-by-{group}:{row[group]}"] = row["resolution_rate"]
            expected[f"cost-per-resolved-task-by-{group}:{row[group]}"] = row["cost_per_resolved_task_usd"]
    for row in summary["break_even"]["tiers"]:
        expected[f"break-even-tokens-per-day:{row['tier']}"] = row["break_even_tokens_per_day"]
    return expected


def check_page(shown: dict[str, str], before: dict[str, Any], after: dict[str, Any]) -> None:
    expected = expected_metrics(after)
    assert expected == expected_metrics(before)  # nothing moved while the page loaded (tokens/day aside)
    assert set(shown) == {*expected, "tokens-per-day", *(k for k in shown if k.startswith("burst:"))}
    wrong = {k: (shown[k], v) for k, v in expected.items() if not same(number(shown[k]), v)}
    assert not wrong, wrong
    # The volume is the last hour's rate (the window since start while shorter): it falls as time passes.
    volume = number(shown["tokens-per-day"])
    assert volume is not None and volume > 0
    assert after["break_even"]["tokens_per_day"] <= volume <= before["break_even"]["tokens_per_day"]


async def test_dashboard_shows_the_cost_api_numbers(
    stack: tuple[Router, dict[str, FakeUpstream]], tmp_path: Path
) -> None:
    rt, _ = stack
    async with chromium(tmp_path / "chromium") as page:
        before = costs(rt, "sk-admin")
        shown = await load(page, rt, "sk-admin")
        after = costs(rt, "sk-admin")
        check_page(shown, before, after)
        assert after["rates"]["escalated"] > 0 and after["resolution"]["totals"]["tasks_resolved"] > 0
        assert 0 < after["rates"]["cache_hits"] < after["rates"]["requests"]
        assert shown["burst:small"] == "true" and shown["burst:big"] == "false"
        assert {k.split(":")[1] for k in shown if k.startswith("cost-by-team:")} == {"search", "support"}
        assert await page.evaluate("document.querySelectorAll('#burn-chart polygon').length") >= 2  # two tiers
        shot = tmp_path / "dashboard.png"
        await page.screenshot(shot)
        assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if PICTURE:
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT)

        # A team's key sees its own team only, in the page as in the API.
        before = costs(rt, "sk-search")
        shown = await load(page, rt, "sk-search")
        after = costs(rt, "sk-search")
        check_page(shown, before, after)
        assert {k.split(":")[1] for k in shown if k.startswith("cost-by-team:")} == {"search"}
        assert await page.evaluate("document.getElementById('scope').textContent") == "team search (this key's team)"


async def test_a_wrong_key_shows_the_error(stack: tuple[Router, dict[str, FakeUpstream]], tmp_path: Path) -> None:
    rt, _ = stack
    assert httpx.get(f"{rt.url}/v1/tiered/costs").status_code == 401
    async with chromium(tmp_path / "chromium") as page:
        await page.navigate(f"{rt.url}/dashboard#key=sk-wrong")
        error = await page.wait_for("document.body.dataset.error")
        assert "missing or invalid API key" in error
