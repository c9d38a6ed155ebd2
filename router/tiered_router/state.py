"""The router's control data, apart from the HTTP handlers: config snapshots, breakers, in-flight counts.

`RouterState` owns the current `Snapshot` (one config version and everything derived from it), the
breakers, the in-flight counts, the metrics registry, the cost ledger and the upstream pool, and it
watches the config and API key files for changes. A reload builds a new snapshot and swaps it in with one
assignment; the request path (`tiered_router.app`) only reads `state.snapshot`, once per request.

Must not: import the HTTP server (`tiered_router.app`, aiohttp's `web`) or look at a request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

from tiered_router import auth, cost, forward
from tiered_router.breaker import Breakers
from tiered_router.config import AUTO_MODEL, RouterConfig, load_config
from tiered_router.metrics import RouterMetrics

log = logging.getLogger("tiered.router")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One config version and what is derived from it; never mutated, replaced as a whole on reload."""

    config: RouterConfig
    keys: dict[str, auth.Identity] | None
    targets: dict[str, forward.Target]
    prices: dict[str, cost.Price]
    baseline: cost.Price | None
    timeout: dict[str, float]
    models: bytes


def build_snapshot(config: RouterConfig) -> Snapshot:
    """Everything the request path needs from a config; raises ValueError (e.g. unreadable key file)."""
    keys = auth.load_keys(config.api_keys_file) if config.api_keys_file else None
    targets = {}
    for tier in config.tiers:
        headers = [("content-type", "application/json"), ("accept-encoding", "identity")]
        if tier.api_key_env:
            headers.append(("authorization", f"Bearer {os.environ.get(tier.api_key_env, '')}"))
        base = tier.base_url.rstrip("/")
        targets[tier.name] = forward.Target(
            httpx.URL(f"{base}/chat/completions"),
            httpx.URL(f"{base}/completions"),
            httpx.Headers(headers),
            tier.upstream_model,
        )
    prices = {t.name: cost.tier_price(t) for t in config.tiers}
    models = [{"id": name, "object": "model", "created": 0, "owned_by": "tiered"} for name in [*targets, AUTO_MODEL]]
    return Snapshot(
        config,
        keys,
        targets,
        prices,
        prices.get(config.baseline or ""),
        forward.timeout_extension(config),
        json.dumps({"object": "list", "data": models}).encode(),
    )


def _file_signature(path: str | None) -> tuple[int, int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)  # follows symlinks: a ConfigMap update swaps the `..data` link
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class RouterState:
    """Control data: the current snapshot, breakers, in-flight counts, metrics and the cost ledger."""

    def __init__(
        self,
        config_path: str,
        transport: httpx.AsyncBaseTransport | None = None,
        reload_interval: float = 1.0,
    ) -> None:
        self.config_path = config_path
        self.reload_interval = reload_interval
        config = load_config(config_path)
        self.snapshot = build_snapshot(config)
        self._signatures = self._current_signatures()
        self.metrics = RouterMetrics()
        self.breakers = Breakers()
        self.flight = forward.InFlight()
        self.ledger = cost.CostLedger()
        self.metrics.watch(self._live_sample)
        self.upstream = forward.Upstream(
            transport or forward.make_transport(config.max_connections),
            self.breakers,
            self.flight,
            self.metrics,
        )
        self._announce()

    def _live_sample(self) -> list[tuple[str, int, int, int]]:
        now = time.monotonic()
        return [
            (tier, self.flight.count.get(tier, 0), self.flight.queued(tier), self.breakers.state(tier, now))
            for tier in self.snapshot.targets
        ]

    def _current_signatures(self) -> tuple[Any, Any]:
        return _file_signature(self.config_path), _file_signature(self.snapshot.config.api_keys_file)

    def _announce(self) -> None:
        config = self.snapshot.config
        log.info(
            "config loaded: tiers %s, default %s, %d rules",
            [t.name for t in config.tiers],
            config.default,
            len(config.rules),
        )
        if self.snapshot.keys is None:
            log.warning(
                "NO API KEYS CONFIGURED: the router is OPEN, any caller is served and may claim "
                "any team; set apiKeysFile to require keys"
            )

    def reload_if_changed(self) -> bool:
        """Load the config (and key file) again if either changed; keep the last good one on error."""
        signatures = self._current_signatures()
        if signatures == self._signatures:
            return False
        self._signatures = signatures
        try:
            snapshot = build_snapshot(load_config(self.config_path))
        except ValueError as error:
            self.metrics.reload_errors.inc()
            log.error("config reload rejected, keeping the last good config: %s", error)
            return False
        self.snapshot = snapshot  # the atomic swap: requests in flight keep the snapshot they read
        self._signatures = self._current_signatures()
        self.metrics.reloads.inc()
        self._announce()
        return True

    async def watch_files(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            self.reload_if_changed()
