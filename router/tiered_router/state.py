"""The router's control data, apart from the HTTP handlers: config snapshots, breakers, in-flight counts.

`RouterState` owns the current `Snapshot` (one config version and everything derived from it), the
breakers, the in-flight counts, the metrics registry, the cost ledger and the upstream pool, and it
watches the config and API key files for changes. A reload builds a new snapshot and swaps it in with one
assignment; the request path (`tiered_router.app`) only reads `state.snapshot`, once per request.
`Lifecycle` is where the process stands in a shutdown (serving, draining, cut), which readiness and the
handlers read and `tiered_router.server` advances.

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

from tiered_router import anthropic, auth, cost, forward, outcomes
from tiered_router.attribution import LabelBounds
from tiered_router.breaker import CLOSED, HALF_OPEN, OPEN, Breakers
from tiered_router.budgets import Budgets
from tiered_router.cache import ResponseCache
from tiered_router.config import AUTO_MODEL, RouterConfig, TierApi, TierKind, load_config
from tiered_router.metrics import RouterMetrics
from tiered_router.scoring import Embedder, RoutingModels, routing_models
from tiered_router.spend_store import BudgetMetrics, SpendSync

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
    features: frozenset[str]
    """`attribution.features`: the features a caller may name."""
    task_types: frozenset[str]
    """Every task type a rule names (others are counted as unknown)."""
    max_label_values: int
    routing: RoutingModels | None
    """Classifier heads and similarTo example embeddings; None when no rule needs the encoder."""


def build_snapshot(config: RouterConfig, embedder: Embedder) -> Snapshot:
    """Everything the request path needs from a config; raises ValueError (e.g. unreadable key file, a
    classifier rule without the encoder installed)."""
    keys = auth.load_keys(config.api_keys_file) if config.api_keys_file else None
    targets = {}
    for tier in config.tiers:
        headers = [("content-type", "application/json"), ("accept-encoding", "identity")]
        key = os.environ.get(tier.api_key_env, "") if tier.api_key_env else None
        base = tier.base_url.rstrip("/")
        chat_url, completions_url = f"{base}/chat/completions", f"{base}/completions"
        if tier.api is TierApi.ANTHROPIC:  # both kinds of request are translated to the Messages API
            headers += anthropic.headers(key)
            chat_url = completions_url = base + anthropic.MESSAGES_PATH
        elif key is not None:
            headers.append(("authorization", f"Bearer {key}"))
        targets[tier.name] = forward.Target(
            httpx.URL(chat_url),
            httpx.URL(completions_url),
            httpx.Headers(headers),
            tier.upstream_model,
            tier.kind is TierKind.EXTERNAL,
            tier.api,
            tier.default_max_tokens,
        )
    if config.cache is not None and config.cache.semantic is not None:
        _load_encoder_for_cache(config, embedder)
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
        frozenset(config.bounds.features),
        frozenset(task for rule in config.rules for task in rule.match.task_types),
        config.bounds.max_label_values,
        routing_models(config, embedder),
    )


def _load_encoder_for_cache(config: RouterConfig, embedder: Embedder) -> None:
    """The semantic cache embeds with the routing encoder (one per process); a config that asks for it
    without the encoder installed is refused."""
    from tiered_router.encoder import EncoderUnavailable

    try:
        embedder.encoder(config.encoder)
    except EncoderUnavailable as error:
        raise ValueError(f"cache.semantic needs the sentence encoder: {error}") from None


def base_url_notes(config: RouterConfig) -> list[str]:
    """What the router will call for tiers whose baseURL does not end in /v1 (allowed: some providers'
    OpenAI-compatible bases do not, e.g. `.../v1beta/openai`), so a typo shows in the log."""
    return [
        f"tier {t.name!r}: baseURL does not end in /v1; chat requests go to {t.base_url.rstrip('/')}"
        + (anthropic.MESSAGES_PATH if t.api is TierApi.ANTHROPIC else "/chat/completions")
        for t in config.tiers
        if not t.base_url.rstrip("/").endswith("/v1")
    ]


FileSignature = tuple[str, int, int, int]


def file_signature(path: str | None) -> FileSignature | None:
    """What identifies one version of a file: where its symlinks lead, inode, mtime and size.

    A ConfigMap volume is `config.yaml -> ..data/config.yaml` with `..data -> ..<timestamp>/`; kubelet
    updates it by writing a new timestamped directory and renaming a new `..data` link over the old one.
    Following the links (the resolved path names the timestamped directory) sees that swap even when the
    new file's inode, size and mtime happen to equal the old one's; the stat sees in-place writes.
    """
    if not path:
        return None
    try:
        st = os.stat(path)
        return (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return None


class Lifecycle:
    """Where the process is in its life: serving → draining (readiness 503, still serving) → cut.

    On SIGTERM `tiered_router.server` starts the drain, later stops accepting, and at the shutdown deadline
    cuts what is still running: every completion handler registers its task in `requests`, and a cut task
    answers with an OpenAI-shaped error (an SSE error event if its stream has started) instead of vanishing.
    """

    def __init__(self) -> None:
        self.draining = False
        self.cut = False
        self.requests: set[asyncio.Task[Any]] = set()

    def cut_requests(self) -> int:
        """Cancel every request still being handled (their handlers turn that into an error reply)."""
        self.cut = True
        for task in self.requests:
            task.cancel("the router's shutdown deadline passed")
        return len(self.requests)


class RouterState:
    """Control data: the current snapshot, breakers, in-flight counts, lifecycle, metrics and the cost ledger."""

    def __init__(
        self,
        config_path: str,
        transport: httpx.AsyncBaseTransport | None = None,
        reload_interval: float = 1.0,
    ) -> None:
        self.config_path = config_path
        self.reload_interval = reload_interval
        config_signature = file_signature(config_path)  # before reading: a change while reading is seen later
        config = load_config(config_path)
        keys_signature = file_signature(config.api_keys_file)
        self.metrics = RouterMetrics()
        self.embedder = Embedder(
            lambda outcome: self.metrics.route_signals.labels(outcome).inc(), self.metrics.encoder_seconds.observe
        )
        self.snapshot = build_snapshot(config, self.embedder)
        self._signatures = (config_signature, keys_signature)
        self.lifecycle = Lifecycle()
        self.breakers = Breakers()
        self.flight = forward.InFlight()
        self.ledger = cost.CostLedger()
        self.reports = outcomes.Reports(started=time.time())
        self.labels = LabelBounds()
        self.budgets = Budgets()
        """Spend per budget window and per task (kept across reloads; synced through the spend store)."""
        self.budget_metrics = BudgetMetrics(self.metrics.registry, self.budgets)
        self.spend_sync = SpendSync(
            self.budgets, lambda: self.snapshot.config.budget_settings.store, self.budget_metrics
        )
        self.cache = ResponseCache()
        """Exact and semantic response caches (kept across reloads, resized by each config)."""
        self.cache.configure(config.cache)
        self._failed: tuple[FileSignature | None, FileSignature | None] | None = None
        self.metrics.watch(self._live_sample, self.private_ready, self.labels.overflowed)
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

    def private_ready(self) -> bool:
        """Whether some local tier can take private traffic now (its breaker is not open)."""
        now = time.monotonic()
        return any(
            t.kind is TierKind.LOCAL and self.breakers.state(t.name, now) != OPEN for t in self.snapshot.config.tiers
        )

    def status(self) -> dict[str, Any]:
        """What /v1/tiered/status shows: tiers' live state and whether private traffic can be served."""
        config = self.snapshot.config
        now = time.monotonic()
        names = {CLOSED: "closed", HALF_OPEN: "half_open", OPEN: "open"}
        tiers = []
        for tier in config.tiers:
            state = self.breakers.state(tier.name, now)
            tiers.append(
                {
                    "name": tier.name,
                    "kind": tier.kind.value,
                    "breaker": names[state],
                    "retry_in_seconds": round(max(0.0, self.breakers.open_until.get(tier.name, now) - now), 3),
                    "in_flight": self.flight.count.get(tier.name, 0),
                    "queued": self.flight.queued(tier.name),
                    "burst": tier.burst,
                }
            )
        local = [t["name"] for t in tiers if t["kind"] == TierKind.LOCAL.value and t["breaker"] != "open"]
        return {
            "ready": not self.lifecycle.draining,
            "draining": self.lifecycle.draining,
            "private": {
                "rules": bool(config.privacy.private_teams),
                "header": config.privacy.private_header,
                "ready": bool(local),
                "local_tiers_available": local,
            },
            "tiers": tiers,
        }

    def _current_signatures(self) -> tuple[FileSignature | None, FileSignature | None]:
        return file_signature(self.config_path), file_signature(self.snapshot.config.api_keys_file)

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
        for note in base_url_notes(config):
            log.warning("%s", note)

    def reload_if_changed(self) -> bool:
        """Load the config (and key file) again if either changed; keep the last good one on error.

        A file that fails is tried once more at the next check before it counts as an error: a writer that
        writes in place may have been caught half way (its next write changes the signature, and that
        version is read instead). A ConfigMap volume swaps whole files, so there it never happens.
        """
        signatures = self._current_signatures()
        if signatures == self._signatures:
            return False
        try:
            config = load_config(self.config_path)
            keys_signature = file_signature(config.api_keys_file)
            snapshot = build_snapshot(config, self.embedder)
        except ValueError as error:
            if self._failed != signatures:
                self._failed = signatures  # first failure of this version: look again at the next check
                log.info("config file unreadable, checking again (a write may be under way): %s", error)
                return False
            self._signatures = signatures  # a bad file is reported once, not on every check
            self.metrics.reload_errors.inc()
            log.error("config reload rejected, keeping the last good config: %s", error)
            return False
        self._failed = None
        self.snapshot = snapshot  # the atomic swap: requests in flight keep the snapshot they read
        self.cache.configure(snapshot.config.cache)
        # Signatures taken before the files were read: a swap during the read shows as a change next time.
        self._signatures = (signatures[0], keys_signature)
        self.metrics.reloads.inc()
        self._announce()
        return True

    async def watch_files(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            self.reload_if_changed()
