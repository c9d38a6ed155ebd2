"""RoutingPolicy (+ its tiers and its burst status) → the router's `RouterConfig`, and the ConfigMap carrying it.

This is how the burst flag the autoscaler writes into `RoutingPolicy.status.burst` reaches the router: the
tier the burst starts from gets `burst: true` and `burstTarget`, and the router sends its overflow there.
Local tiers point at their InferenceTier's endpoint and are priced from its `gpuHourUSD` and capacity plan;
external tiers read their API key from an environment variable the router Deployment fills from the Secret.

Policy features the router does not implement yet are left out and named in the returned notes, so the
operator can say so instead of silently dropping them. Budgets keep their spend in the ConfigMap
`spend_configmap_name(policy)`, which the router replicas write themselves (router_objects grants it).

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError
from tiered_router.budgets import Budget, BudgetSettings, SpendStore, TaskBudget
from tiered_router.cache import CacheSettings, ExactCache, SemanticCache
from tiered_router.config import (
    Attribution,
    Classifier,
    Match,
    Pricing,
    Privacy,
    RouterConfig,
    Rule,
    SimilarTo,
    Tier,
    TierApi,
    TierKind,
)
from tiered_router.escalation import Escalation

from tiered_operator.api.model import InferenceTier, PolicyTier, PricingSpec, RoutingPolicy
from tiered_operator.core.plan import PlanError, plan_capacity
from tiered_operator.core.render import MANAGED_BY, endpoint

CONFIG_KEY = "router.yaml"
REJECTED = "the router would reject this policy"


class RouterConfigRejected(ValueError):
    """The router would refuse the config rendered from a policy (e.g. a rule's regex does not compile).

    The message is the router's own reason, on one line. The CRD's CEL rules refuse what they can say at
    apply; this covers what CEL cannot check (Python regular expressions).
    """


def _one_line(error: ValidationError) -> str:
    def where(loc: tuple[int | str, ...]) -> str:
        return ".".join(str(part) for part in loc)

    problems = [
        (f"{where(issue['loc'])}: " if issue["loc"] else "") + issue["msg"].removeprefix("Value error, ")
        for issue in error.errors()
    ]
    return "; ".join(problems).replace("\n", " ")


def api_key_env(tier_name: str) -> str:
    """The environment variable holding an external tier's API key in the router's pod."""
    return "TIERED_API_KEY_" + re.sub(r"[^A-Z0-9]", "_", tier_name.upper())


def _local_pricing(tier: InferenceTier | None) -> Pricing:
    """Self-hosted price inputs; a tier not found (yet) is priced at the spec defaults on one GPU."""
    pricing = tier.spec.pricing if tier else PricingSpec()
    try:
        gpus = (plan_capacity(tier.spec).gpus_per_replica if tier else 0) or 1.0
    except PlanError:
        gpus = 1.0
    return Pricing(
        gpu_hour_usd=pricing.gpu_hour_usd, gpus_per_replica=gpus, tokens_per_second=pricing.tokens_per_second
    )


def _tier(entry: PolicyTier, policy: RoutingPolicy, tiers: Mapping[str, InferenceTier], bursting: bool) -> Tier:
    burst = policy.spec.burst
    burst_here = bursting and burst is not None and burst.from_ == entry.name
    common: dict[str, Any] = {
        "name": entry.name,
        "concurrency": entry.max_concurrency,
        "fallback": list(entry.fallback),
        "burst": burst_here,
        "burst_target": burst.to if burst is not None and burst.from_ == entry.name else None,
    }
    if entry.external is not None:
        price = entry.pricing
        return Tier(
            kind=TierKind.EXTERNAL,
            base_url=entry.external.base_url,
            model=entry.external.model,
            api=TierApi(entry.external.provider),  # `anthropic`: the router translates to the Messages API
            api_key_env=api_key_env(entry.name) if entry.external.api_key_secret_ref else None,
            pricing=Pricing(
                input_per_m_tok=price.input_per_m_tok if price else None,
                output_per_m_tok=price.output_per_m_tok if price else None,
                cached_input_per_m_tok=price.cached_input_per_m_tok if price else None,
                cache_write_per_m_tok=price.cache_write_per_m_tok if price else None,
            ),
            **common,
        )
    local = tiers.get(entry.tier_ref or "")
    return Tier(
        kind=TierKind.LOCAL,
        base_url=endpoint(entry.tier_ref or entry.name, policy.metadata.namespace),
        model=local.spec.model.id if local else None,
        pricing=_local_pricing(local),
        **common,
    )


def router_config(
    policy: RoutingPolicy, tiers: Mapping[str, InferenceTier], *, bursting: bool
) -> tuple[RouterConfig, list[str]]:
    """The router's config for `policy` and what of the policy it leaves out.

    `tiers`: the InferenceTiers of the policy's namespace by name; `bursting`: `status.burst.active`.
    Raises RouterConfigRejected (one line, the router's message) when the router would refuse the result;
    the operator reports it as the policy's `Invalid` condition, `tiered render` as exit code 2.
    """
    try:
        return _router_config(policy, tiers, bursting=bursting)
    except ValidationError as error:
        raise RouterConfigRejected(f"{REJECTED}: {_one_line(error)}") from None


def _router_config(
    policy: RoutingPolicy, tiers: Mapping[str, InferenceTier], *, bursting: bool
) -> tuple[RouterConfig, list[str]]:
    spec = policy.spec
    notes: list[str] = []  # what the router would leave out (nothing today)
    rules = []
    for index, rule in enumerate(spec.rules):
        match = rule.match
        try:
            # Only the conditions the rule has: the router refuses empty ones.
            conditions: dict[str, Any] = {"task_types": list(match.task_types), "keywords": list(match.keywords),
                                          "min_prompt_tokens": match.min_prompt_tokens,
                                          "max_prompt_tokens": match.max_prompt_tokens, "regex": match.regex,
                                          "scope": match.scope}
            if match.similar_to is not None:
                conditions["similar_to"] = SimilarTo(examples=list(match.similar_to.examples),
                                                     threshold=match.similar_to.threshold)
            if match.classifier is not None:
                conditions["classifier"] = Classifier(head=match.classifier.head,
                                                      threshold=match.classifier.threshold)
            routed = Match(**{key: value for key, value in conditions.items() if value not in (None, [])})
        except ValidationError as error:
            raise RouterConfigRejected(f"{REJECTED}: rules[{index}].match: {_one_line(error)}") from None
        rules.append(Rule(name=f"rule-{index}", match=routed, tier=rule.tier, max_tokens=rule.max_tokens,
                          max_context_tokens=rule.max_context_tokens, semantic_cache=rule.semantic_cache))
    config = RouterConfig(
        tiers=[_tier(entry, policy, tiers, bursting) for entry in spec.tiers],
        default=spec.default,
        baseline=spec.baseline,
        rules=rules,
        cache=_cache(policy),
        escalation=None if spec.escalation is None else Escalation.model_validate(
            {"from": spec.escalation.from_, "to": spec.escalation.to,
             "minConfidence": spec.escalation.min_confidence, "method": spec.escalation.method}),
        privacy=Privacy(private_teams=list(spec.privacy.private_teams),
                        private_header=spec.privacy.private_header),
        attribution=None if spec.attribution is None else Attribution(
            features=list(spec.attribution.features),
            **({"max_label_values": spec.attribution.max_label_values}
               if spec.attribution.max_label_values is not None else {})),
        **_budgets(policy),
    )
    return config, notes


def spend_configmap_name(policy: RoutingPolicy) -> str:
    """The ConfigMap where the policy's router replicas keep their budget spend (one key per pod)."""
    return f"tiered-spend-{policy.metadata.name}"


def _budgets(policy: RoutingPolicy) -> dict[str, Any]:
    """`budgets`, `budgetSettings` (with the shared spend store) and `taskBudget` for the router."""
    spec = policy.spec
    rendered: dict[str, Any] = {}
    if spec.budgets:
        rendered["budgets"] = [Budget.model_validate(b.model_dump(by_alias=True, exclude_none=True))
                               for b in spec.budgets]
        settings = spec.budget_settings
        rendered["budget_settings"] = BudgetSettings(
            local_tiers=settings.local_tiers if settings else "exempt",
            store=SpendStore(config_map=spend_configmap_name(policy), namespace=policy.metadata.namespace,
                             sync_seconds=settings.sync_seconds if settings else 5.0),
        )
    if spec.task_budget is not None:
        rendered["task_budget"] = TaskBudget.model_validate(spec.task_budget.model_dump(by_alias=True,
                                                                                        exclude_none=True))
    return rendered


def _cache(policy: RoutingPolicy) -> CacheSettings | None:
    """`spec.cache` for the router: its exact and semantic caches, unset fields at the router's defaults."""
    cache = policy.spec.cache
    if cache is None:
        return None
    exact, semantic = cache.exact, cache.semantic
    return CacheSettings(
        exact=None if exact is None else ExactCache.model_validate(exact.model_dump(by_alias=True, exclude_none=True)),
        semantic=None if semantic is None else SemanticCache.model_validate(
            semantic.model_dump(by_alias=True, exclude_none=True)),
    )


def render_router_configmap(policy: RoutingPolicy, config: RouterConfig) -> dict[str, Any]:
    """The ConfigMap the router reads its config from (it reloads on change)."""
    meta = policy.metadata
    body = yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"tiered-router-{meta.name}",
            "namespace": meta.namespace,
            "labels": {**MANAGED_BY, "tiered.dev/policy": meta.name},
        },
        "data": {CONFIG_KEY: body},
    }
