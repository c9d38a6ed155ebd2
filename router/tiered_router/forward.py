"""Sending requests upstream: one shared connection pool, attempts along a tier's fallback chain.

The client is an httpx transport built once at start-up and passed in (tests can hand in any
`httpx.AsyncBaseTransport`). We call the transport directly rather than through `httpx.AsyncClient`:
a proxy must not keep a cookie jar shared by all callers, follow redirects or run auth flows, and skipping
that machinery measured ~25% more requests/s. The transport is `httpx_aiohttp.AiohttpTransport`, chosen by
measurement: at 32 requests in flight on one core, httpx's default transport managed ~400 requests/s
through a pass-through proxy, the aiohttp transport ~3,700 (raw aiohttp ~3,900).

Exceptions raised by a send, and what the router does with them:

    httpx.TransportError              connect error, timeout, reset  → breaker failure, next attempt
    upstream status 5xx               (response, read and closed)   → breaker failure, next attempt
    upstream status 429                                              → next attempt (breaker untouched)
    anything else (2xx, other 4xx)                                   → returned to the caller
    no attempt left                   → Exhausted: 503 if every attempt got 429, else 502

Attempts happen only before the first byte reaches the client, at most `1 + retries` of them (retries
≤ 2), walking the chain and repeating its last tier if the chain is shorter.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from httpx_aiohttp import AiohttpTransport

from tiered_router.breaker import Breakers
from tiered_router.config import RouterConfig, TierApi
from tiered_router.metrics import RouterMetrics

UPSTREAM_ERRORS = (httpx.TransportError, OSError)
"""What a failed send or read raises (the aiohttp transport maps its errors to httpx's)."""


def make_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """The shared upstream connection pool. Timeouts are set per request (they can change on reload)."""
    return AiohttpTransport(limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=30.0))


def timeout_extension(config: RouterConfig) -> dict[str, float]:
    t = config.timeouts
    return {
        "connect": t.connect_seconds,
        "read": t.read_seconds,
        "write": t.read_seconds,
        "pool": t.pool_seconds,
    }


@dataclass(frozen=True, slots=True)
class Target:
    """How to reach one tier: its URLs, headers (content type, upstream key) and upstream model name."""

    # Parsed once per config: httpx parses a string URL on every request (~70 µs, the largest single cost
    # measured on the request path), but takes a URL object as is.
    chat_url: httpx.URL
    completions_url: httpx.URL
    headers: httpx.Headers
    model: str
    external: bool = False
    """An external tier: tiered's own attribution is removed from the body sent there."""
    api: TierApi = TierApi.OPENAI
    """`anthropic`: bodies are translated to the Messages API and answers back (`tiered_router.anthropic`)."""
    default_max_tokens: int = 4096
    """`anthropic` tiers: max_tokens when the request has none."""


class Exhausted(Exception):
    """No attempt succeeded: answer `status`, 503 when every attempt was rate limited (429), else 502."""

    def __init__(self, status: int, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class InFlight:
    """Requests in flight per tier, and private requests waiting for a slot on a tier over its budget."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    def enter(self, tier: str) -> None:
        self.count[tier] = self.count.get(tier, 0) + 1

    def leave(self, tier: str) -> None:
        self.count[tier] -= 1
        waiters = self._waiters.get(tier)
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                break

    def queued(self, tier: str) -> int:
        return len(self._waiters.get(tier, ()))

    async def wait_for_slot(self, tier: str, limit: int, timeout: float) -> bool:
        """Wait until a request on `tier` finishes; False when the queue is full or the wait times out."""
        waiters = self._waiters.setdefault(tier, deque())
        if len(waiters) >= limit:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if future in waiters:
                waiters.remove(future)


class Upstream:
    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        breakers: Breakers,
        flight: InFlight,
        metrics: RouterMetrics,
    ) -> None:
        self.transport, self.breakers, self.flight, self.metrics = transport, breakers, flight, metrics

    async def open(
        self,
        config: RouterConfig,
        targets: dict[str, Target],
        chain: tuple[str, ...],
        chat: bool,
        payload_for: Callable[[Target], bytes],
        timeout: dict[str, float],
    ) -> tuple[str, httpx.Response, float]:
        """Send along `chain` until a tier answers; returns (tier, open response, send start time).

        The caller owns the response (must `aclose()` it) and the tier's in-flight slot (must `leave()`).
        """
        attempts = 1 + config.retries
        breaker = config.breaker
        last = "no attempt"
        causes: list[str] = []  # of the attempts actually sent
        previous = None
        for i in range(attempts):
            tier = chain[min(i, len(chain) - 1)]
            now = time.monotonic()
            if i and self.breakers.open_until.get(tier, 0.0) > now:
                last = "breaker-open"
                continue
            if previous is not None:
                self.metrics.fallbacks.labels(previous, tier, last).inc()
            target = targets[tier]
            request = httpx.Request(
                "POST",
                target.chat_url if chat else target.completions_url,
                content=payload_for(target),
                headers=target.headers,
                extensions={"timeout": timeout},
            )
            self.flight.enter(tier)
            started = time.perf_counter()
            try:
                response = await self.transport.handle_async_request(request)
            except UPSTREAM_ERRORS as error:
                self.flight.leave(tier)
                # httpx-aiohttp reports a refused connection as ConnectTimeout: both count as "connect".
                slow = isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.ConnectTimeout)
                last = "timeout" if slow else "connect"
                causes.append(last)
                self.breakers.failure(tier, time.monotonic(), breaker.failure_threshold, breaker.cooldown_seconds)
                self.metrics.upstream_errors.labels(tier, last).inc()
                previous = tier
                continue
            except asyncio.CancelledError:  # cut at the shutdown deadline: give the slot back
                self.flight.leave(tier)
                raise
            status = response.status_code
            if status < 500 and status != 429:
                self.breakers.success(tier)
                return tier, response, started
            await response.aclose()
            self.flight.leave(tier)
            last = str(status)
            causes.append(last)
            if status != 429:
                self.breakers.failure(tier, time.monotonic(), breaker.failure_threshold, breaker.cooldown_seconds)
            self.metrics.upstream_errors.labels(tier, last).inc()
            previous = tier
        tried = ", ".join(chain)
        if causes and all(cause == "429" for cause in causes):
            raise Exhausted(503, f"every upstream attempt was rate limited (429) by {tried}; retry later")
        raise Exhausted(502, f"upstream tiers failed ({tried}); causes in order: {', '.join(causes)}")
