"""Who a request is attributed to (team, feature), bounded so that callers cannot grow metrics without limit.

Team, feature and task become Prometheus label values and cost-ledger rows, so what a caller may claim is
bounded:

- With API keys the team is the key's. A feature is the key's own, or one the config's
  `attribution.features` allow-list names; any other claimed feature counts as `other`.
- Without keys a caller may claim any team and feature (the router is open). The allow-list, when given,
  still applies to features; and every label keeps at most `attribution.maxLabelValues` distinct values
  (100 by default): once that many were seen, new ones count as `other`.

`LabelBounds` remembers the values seen; it is control state (one per process, kept across reloads, owned
by `tiered_router.state.RouterState`). Everything else here is a pure function.

Must not: import the HTTP server or look at a request.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from tiered_router.auth import Identity
from tiered_router.config import OTHER_LABEL

UNKNOWN = "unknown"
LABEL_LENGTH = 64
ATTRIBUTION_KEYS = frozenset({"team", "feature", "task", "private", "task_id"})
"""tiered's own `metadata` keys: read by the router, removed before a request goes to an external tier."""


def label(value: object) -> str | None:
    """A claimed label value, trimmed and at most 64 characters; None when absent or not a string."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:LABEL_LENGTH] if value else None


TASK_ID_HEADER = "x-tiered-task-id"
TASK_ID_LENGTH = 128


def task_id(header: str | None, metadata: Mapping[str, object]) -> str | None:
    """The caller's task id (the unit of work its calls belong to: budgets and cost per resolved task):
    the `x-tiered-task-id` header, else `metadata.task_id`; trimmed, at most 128 characters. It is an
    opaque key, never a metrics label, so it is not bounded by `maxLabelValues`."""
    for value in (header, metadata.get("task_id")):
        if isinstance(value, str) and value.strip():
            return value.strip()[:TASK_ID_LENGTH]
    return None


class LabelBounds:
    """At most `cap` distinct values per label; later new values are `other`. Memory: labels × cap strings."""

    def __init__(self) -> None:
        self._seen: dict[str, set[str]] = {}
        self.overflowed: dict[str, int] = {}
        """Label → how many claims were counted as `other` because the cap was reached."""

    def bound(self, name: str, value: str, cap: int) -> str:
        seen = self._seen.get(name)
        if seen is None:
            seen = self._seen[name] = {UNKNOWN, OTHER_LABEL}
        if value in seen:
            return value
        if len(seen) - 2 >= cap:  # `unknown` and `other` do not use up the cap
            return self.other(name)
        seen.add(value)
        return value

    def other(self, name: str) -> str:
        """Count one claim of `name` turned into `other` (cap reached or not on the allow-list)."""
        self.overflowed[name] = self.overflowed.get(name, 0) + 1
        return OTHER_LABEL


def attribute(
    identity: Identity | None,
    team_claim: str | None,
    feature_claim: str | None,
    allowed_features: Collection[str],
    bounds: LabelBounds,
    cap: int,
) -> tuple[str, str]:
    """(team, feature) to count a request under; see the module docstring for the rules."""
    if identity is not None:
        team = identity.team  # bounded by the key file; a key's team wins over any claim
        if feature_claim is None or feature_claim == identity.feature:
            return team, identity.feature or UNKNOWN
        return team, feature_claim if feature_claim in allowed_features else bounds.other("feature")
    team = bounds.bound("team", team_claim, cap) if team_claim else UNKNOWN
    if feature_claim is None:
        return team, UNKNOWN
    if allowed_features:
        return team, feature_claim if feature_claim in allowed_features else bounds.other("feature")
    return team, bounds.bound("feature", feature_claim, cap)
