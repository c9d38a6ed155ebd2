"""Break-even of self-hosting against the frontier API at the current volume (pure).

For each local tier, against the baseline tier (or the first external tier when the baseline is local):

    replica-day cost   R = gpuHourUSD × gpusPerReplica × 24
    replica capacity   C = tokensPerSecond × 86 400 tokens/day
    frontier price     P = s × inputPerMTok/1e6 + (1 − s) × outputPerMTok/1e6   (s: observed input share)
    break-even volume  V* = R / P tokens/day

Below V* the frontier API is cheaper than keeping one replica up all day; at volume V self-hosting costs
ceil(V / C) replicas × R (at least one), the frontier V × P. Prices come from the RouterConfig, the input
share and the volume from what the router served.

Must not: import the HTTP server or look at a request.
"""

from __future__ import annotations

import math
from typing import Any

from tiered_router.config import RouterConfig, Tier, TierKind

SECONDS_PER_DAY = 86_400.0
FORMULA = (
    "break-even tokens/day = GPU-hour price × GPUs per replica × 24 / frontier price per token; "
    "frontier price per token = input share × input price + output share × output price; "
    "self-hosted cost/day = ceil(volume / (tokens per second × 86400)) replicas (≥ 1) × replica-day cost"
)


def frontier_tier(config: RouterConfig) -> Tier | None:
    """What self-hosting is measured against: the baseline if it is external, else the first external tier."""
    if config.baseline is not None and config.tier(config.baseline).kind is TierKind.EXTERNAL:
        return config.tier(config.baseline)
    return next((t for t in config.tiers if t.kind is TierKind.EXTERNAL), None)


def break_even(config: RouterConfig, input_share: float, tokens_per_day: float) -> dict[str, Any]:
    """Break-even rows for every local tier (empty without an external tier to compare with)."""
    frontier = frontier_tier(config)
    rows: list[dict[str, Any]] = []
    if frontier is None:
        return {"frontier_tier": None, "formula": FORMULA, "tokens_per_day": tokens_per_day, "tiers": rows}
    share = min(1.0, max(0.0, input_share))
    fp = frontier.pricing
    per_token = (share * (fp.input_per_m_tok or 0.0) + (1 - share) * (fp.output_per_m_tok or 0.0)) / 1e6
    for tier in config.tiers:
        if tier.kind is not TierKind.LOCAL:
            continue
        p = tier.pricing
        replica_day = (p.gpu_hour_usd or 0.0) * p.gpus_per_replica * 24
        capacity = (p.tokens_per_second or 0.0) * SECONDS_PER_DAY
        replicas = max(1, math.ceil(tokens_per_day / capacity)) if capacity else 1
        self_hosted = replicas * replica_day
        frontier_day = tokens_per_day * per_token
        rows.append(
            {
                "tier": tier.name,
                "replica_day_usd": replica_day,
                "replica_capacity_tokens_per_day": capacity,
                "break_even_tokens_per_day": replica_day / per_token if per_token else None,
                "replicas_at_volume": replicas,
                "self_hosted_usd_per_day": self_hosted,
                "frontier_usd_per_day": frontier_day,
                "cheaper": "self-hosted" if self_hosted < frontier_day else "frontier",
            }
        )
    return {
        "frontier_tier": frontier.name,
        "frontier_usd_per_token": per_token,
        "input_share": share,
        "tokens_per_day": tokens_per_day,
        "formula": FORMULA,
        "tiers": rows,
    }
