"""Circuit breakers, one per tier: control data the request path reads through `open_until`.

Closed: requests flow. After `failureThreshold` consecutive failures (connect errors, timeouts, 5xx) the
tier opens for `cooldownSeconds`: routing skips it (its fallbacks take over). After the cooldown it is
half-open: requests flow again, the first success closes it and the next failure re-opens it at once,
because the failure count is only reset by a success. 429s are not failures here: the tier is up, just
busy, and the request falls back without marking the tier broken.
"""

from __future__ import annotations

CLOSED, HALF_OPEN, OPEN = 0, 1, 2


class Breakers:
    def __init__(self) -> None:
        self.open_until: dict[str, float] = {}
        """Tier → monotonic time its breaker stops being open; read by routing on every request."""
        self._failures: dict[str, int] = {}

    def success(self, tier: str) -> None:
        if self._failures.get(tier):
            self._failures[tier] = 0
            self.open_until.pop(tier, None)

    def failure(self, tier: str, now: float, threshold: int, cooldown: float) -> None:
        count = self._failures[tier] = self._failures.get(tier, 0) + 1
        if count >= threshold:
            self.open_until[tier] = now + cooldown

    def state(self, tier: str, now: float) -> int:
        if tier not in self.open_until:
            return CLOSED
        return OPEN if self.open_until[tier] > now else HALF_OPEN
