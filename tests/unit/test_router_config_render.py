"""RoutingPolicy → RouterConfig: the burst flag from the policy status reaches the router's config."""

from __future__ import annotations

from pathlib import Path

import yaml
from tiered_operator.api.model import InferenceTier, RoutingPolicy
from tiered_operator.api.objects import load_file
from tiered_operator.core.router_config import CONFIG_KEY, render_router_configmap, router_config
from tiered_router.config import RouterConfig, TierApi, TierKind

ROOT = Path(__file__).resolve().parents[2]


def examples() -> tuple[RoutingPolicy, dict[str, InferenceTier]]:
    objects = [obj for path in sorted((ROOT / "examples").glob("*.yaml")) for obj in load_file(path)]
    policy = next(obj for obj in objects if isinstance(obj, RoutingPolicy))
    return policy, {obj.metadata.name: obj for obj in objects if isinstance(obj, InferenceTier)}


def test_burst_flag_follows_the_policy_status() -> None:
    policy, tiers = examples()
    calm, _ = router_config(policy, tiers, bursting=False)
    hot, _ = router_config(policy, tiers, bursting=True)
    assert {t.name: (t.burst, t.burst_target) for t in calm.tiers}["triage"] == (False, "frontier")
    assert {t.name: (t.burst, t.burst_target) for t in hot.tiers} == {
        "triage": (True, "frontier"), "extract": (False, None), "edge": (False, None), "frontier": (False, None)}


def test_tiers_endpoints_prices_and_rules() -> None:
    policy, tiers = examples()
    config, notes = router_config(policy, tiers, bursting=False)
    by_name = {t.name: t for t in config.tiers}
    triage, frontier = by_name["triage"], by_name["frontier"]
    assert (triage.kind, triage.base_url, triage.model) == (
        TierKind.LOCAL, "http://triage-serve-svc.default.svc.cluster.local:8000/v1", "llama-3.1-8b-instruct")
    assert (triage.pricing.gpu_hour_usd, triage.pricing.gpus_per_replica) == (3.5, 0.25)
    assert triage.concurrency == 64 and triage.fallback == ["frontier"]
    assert (frontier.kind, frontier.model, frontier.api_key_env) == (
        TierKind.EXTERNAL, "gpt-4.1", "TIERED_API_KEY_FRONTIER")
    assert (frontier.pricing.input_per_m_tok, frontier.pricing.output_per_m_tok) == (2.0, 8.0)
    assert [(r.tier, r.match.task_types) for r in config.rules] == [
        ("edge", ["classification"]), ("extract", ["extraction"]), ("frontier", []), ("frontier", [])]
    assert config.rules[-1].match.classifier is not None and config.rules[-1].match.classifier.head == "route-v1"
    assert config.escalation is not None
    assert (config.escalation.from_tier, config.escalation.to, config.escalation.min_confidence) == (
        "triage", "frontier", 0.7)
    assert config.privacy.private_teams == ["legal"]
    assert notes == []
    (budget,) = config.budgets
    assert (budget.team, budget.monthly_usd, budget.on_exceed) == ("marketing", 500, "downgrade")
    assert config.budget_settings.store is not None
    assert config.budget_settings.store.config_map == "tiered-spend-default"


def test_configmap_round_trips_through_the_routers_own_model() -> None:
    policy, tiers = examples()
    config, _ = router_config(policy, tiers, bursting=True)
    configmap = render_router_configmap(policy, config)
    assert configmap["metadata"]["name"] == "tiered-router-default"
    assert RouterConfig.model_validate(yaml.safe_load(configmap["data"][CONFIG_KEY])) == config


def test_rules_carry_only_their_conditions_and_scope_and_attribution_reach_the_router() -> None:
    policy, tiers = examples()
    raw = policy.model_dump(by_alias=True)
    raw["spec"]["rules"] = [{"match": {"keywords": ["refund"], "scope": "conversation"}, "tier": "triage"}]
    raw["spec"]["attribution"] = {"features": ["search", "chat"], "maxLabelValues": 20}
    config, _ = router_config(type(policy).model_validate(raw), tiers, bursting=False)
    (rule,) = config.rules
    assert rule.match.keywords == ["refund"] and rule.match.scope == "conversation"
    assert rule.match.task_types == [] and rule.match.regex is None
    dumped = yaml.safe_load(render_router_configmap(policy, config)["data"][CONFIG_KEY])
    assert "regex" not in dumped["rules"][0]["match"]
    assert (config.attribution.features, config.attribution.max_label_values) == (["search", "chat"], 20)


def test_external_provider_becomes_the_tier_api() -> None:
    policy, tiers = examples()
    config, _ = router_config(policy, tiers, bursting=False)
    assert {t.name: t.api for t in config.tiers}["frontier"] is TierApi.OPENAI  # the example says `openai`
    raw = policy.model_dump(by_alias=True, exclude_none=True)
    frontier = next(t for t in raw["spec"]["tiers"] if t["name"] == "frontier")
    frontier["external"].update(baseURL="https://api.anthropic.com/v1", model="claude-sonnet-4-5", provider="anthropic")
    config, _ = router_config(RoutingPolicy.model_validate(raw), tiers, bursting=False)
    by_name = {t.name: t for t in config.tiers}
    assert (by_name["frontier"].api, by_name["frontier"].model) == (TierApi.ANTHROPIC, "claude-sonnet-4-5")
    assert {t.api for name, t in by_name.items() if name != "frontier"} == {TierApi.OPENAI}


def test_cache_reaches_the_router() -> None:
    policy, tiers = examples()
    raw = policy.model_dump(by_alias=True, exclude_none=True)
    raw["spec"]["cache"] = {"exact": {"ttlSeconds": 60, "maxBytes": 1 << 20},
                            "semantic": {"threshold": 0.9, "serveSampled": True}}
    raw["spec"]["rules"][0]["semanticCache"] = True
    config, notes = router_config(type(policy).model_validate(raw), tiers, bursting=False)
    assert not any("cache" in note for note in notes)
    assert config.cache is not None and config.cache.exact is not None and config.cache.semantic is not None
    assert (config.cache.exact.ttl_seconds, config.cache.exact.max_bytes, config.cache.exact.max_entry_bytes) == (
        60, 1 << 20, 1 << 20)
    semantic = config.cache.semantic
    assert (semantic.threshold, semantic.serve_sampled, semantic.all_requests, semantic.max_entries) == (
        0.9, True, True, 10000)
    assert config.rules[0].semantic_cache is True
    assert router_config(policy, tiers, bursting=False)[0].cache is None  # no spec.cache: no cache


def test_budgets_daily_monthly_per_key_and_task_budgets_reach_the_router() -> None:
    policy, tiers = examples()
    raw = policy.model_dump(by_alias=True, exclude_none=True)
    raw["spec"]["budgets"] = [{"team": "web", "dailyUSD": 5, "monthlyUSD": 100, "onExceed": "reject"},
                              {"apiKey": "ci", "dailyUSD": 1}]
    raw["spec"]["budgetSettings"] = {"localTiers": "priced", "syncSeconds": 2}
    raw["spec"]["taskBudget"] = {"maxTokens": 50000, "onExceed": "downgrade", "ttlSeconds": 600}
    config, notes = router_config(type(policy).model_validate(raw), tiers, bursting=False)
    assert notes == []
    assert [(b.id, b.daily_usd, b.monthly_usd, b.on_exceed.value) for b in config.budgets] == [
        ("team=web", 5, 100, "reject"), ("key=ci", 1, None, "downgrade")]
    assert config.budget_settings.local_tiers.value == "priced" and config.budget_settings.store is not None
    assert config.budget_settings.store.sync_seconds == 2
    assert config.task_budget is not None
    assert (config.task_budget.max_tokens, config.task_budget.on_exceed.value, config.task_budget.ttl_seconds) == (
        50000, "downgrade", 600)
