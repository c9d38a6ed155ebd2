"""Route signals for `model: auto`: embed the last user message off the event loop, within a time budget,
then score it with the classifier heads and compare it with the similarTo examples.

`Embedder` is one per router process: it owns the encoder (loaded once, the first time a config needs it),
one worker thread and an LRU cache of embeddings by text. Texts are embedded one at a time, never batched:
batching saved under a tenth per text here, and int8 dynamic quantisation scales activations per batch,
so a batched text's embedding drifts (cosine ~0.98) from the one the head was trained on. A request waits at most
`encoder.timeoutMs`; past that, or on an encoder error, it gets no signals — its classifier and similarTo
rules are skipped (and counted), the request itself never fails. `RoutingModels` is one per config: the
heads its rules name and the embeddings of its similarTo examples, computed once when the config loads.

Must not: import the HTTP server or decide a route (that is `tiered_router.policy`, pure).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tiered_router.config import EncoderSettings, RouterConfig
from tiered_router.policy import NO_SIGNALS, RouteSignals

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from tiered_router.encoder import Encoder
    from tiered_router.learned import RouteHead

log = logging.getLogger("tiered.router")

Outcome = Callable[[str], None]
"""Counts one embedding outcome: ok, cached, timeout or error."""


@dataclass(frozen=True, slots=True)
class RoutingModels:
    """What one config's classifier and similarTo rules need, built when the config loads."""

    heads: dict[str, RouteHead]
    examples: dict[int, NDArray[np.float32]]
    """Rule index → its similarTo examples' embeddings, one unit-norm row each."""


class Embedder:
    """The process's encoder behind a thread, a cache and a time budget."""

    def __init__(self, outcome: Outcome, observe_seconds: Callable[[float], None]) -> None:
        self._encoder: Encoder | None = None
        self._max_tokens = 0
        self._outcome = outcome
        self._observe = observe_seconds
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="encoder")
        self._cache: OrderedDict[bytes, NDArray[np.float32]] = OrderedDict()
        self.settings = EncoderSettings()

    def encoder(self, settings: EncoderSettings) -> Encoder:
        """The encoder, loaded on first use (raises tiered_router.encoder.EncoderUnavailable)."""
        from tiered_router.encoder import Encoder  # the extra `tiered[router-ml]`: only when a config needs it

        if self._encoder is None or self._max_tokens != settings.max_tokens:
            started = time.perf_counter()
            self._encoder = Encoder.load(max_tokens=settings.max_tokens, threads=1)
            self._max_tokens = settings.max_tokens
            self._cache.clear()
            log.info("encoder loaded in %.1f s (max %d tokens)", time.perf_counter() - started, settings.max_tokens)
        self.settings = settings
        return self._encoder

    def embed_now(self, texts: list[str], max_tokens: int | None = None) -> NDArray[np.float32]:
        """Embed on the calling thread (config loads: similarTo examples)."""
        assert self._encoder is not None
        vectors: NDArray[np.float32] = self._encoder.embed(texts, max_tokens)
        return vectors

    async def embed(self, items: list[tuple[str, int]]) -> list[NDArray[np.float32]] | None:
        """Embeddings of (text, token budget) pairs, or None past the time budget or on an encoder error
        (counted once per request)."""
        keys = [hashlib.blake2b(f"{budget}:{text}".encode(), digest_size=16).digest() for text, budget in items]
        found = [self._cache.get(key) for key in keys]
        missing = [i for i, vector in enumerate(found) if vector is None]
        if not missing:
            for key in keys:
                self._cache.move_to_end(key)
            self._outcome("cached")
            return found  # type: ignore[return-value]  # no None left
        future = asyncio.get_running_loop().run_in_executor(self._thread, self._embed_each, [items[i] for i in missing])
        try:
            # Past the budget the future is cancelled: one still queued never runs, so an overloaded
            # encoder sheds work instead of falling ever further behind.
            vectors = await asyncio.wait_for(future, self.settings.timeout_ms / 1000)
        except TimeoutError:
            self._outcome("timeout")
            return None
        except Exception as error:
            log.warning("encoder failed: %s", error)
            self._outcome("error")
            return None
        self._outcome("ok")
        for i, vector in zip(missing, vectors, strict=True):
            found[i] = vector
            self._remember(keys[i], vector)  # on the event loop, like every other use of the cache
        return found  # type: ignore[return-value]

    def _embed_each(self, items: list[tuple[str, int]]) -> list[NDArray[np.float32]]:
        """One encoder run per text: a batch would scale int8 activations together and shift each one."""
        started = time.perf_counter()
        vectors = [self.embed_now([text], budget)[0] for text, budget in items]
        self._observe(time.perf_counter() - started)
        return vectors

    def _remember(self, key: bytes, vector: NDArray[np.float32]) -> None:
        limit = self.settings.cache_entries
        if limit <= 0:
            return
        self._cache[key] = vector
        while len(self._cache) > limit:
            self._cache.popitem(last=False)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def routing_models(config: RouterConfig, embedder: Embedder) -> RoutingModels | None:
    """Load the heads and embed the examples a config's rules name; None when no rule needs the encoder.

    Raises ValueError (the config is refused, the last good one kept) when the encoder is not installed or
    a head is unknown."""
    if not config.needs_encoder:
        return None
    from tiered_router.encoder import EncoderUnavailable
    from tiered_router.learned import UnknownHead, load_head

    try:
        embedder.encoder(config.encoder)
        heads = {
            r.match.classifier.head: load_head(r.match.classifier.head) for r in config.rules if r.match.classifier
        }
    except (EncoderUnavailable, UnknownHead) as error:
        raise ValueError(str(error)) from None
    examples = {
        i: embedder.embed_now(list(rule.match.similar_to.examples), config.encoder.max_tokens)
        for i, rule in enumerate(config.rules)
        if rule.match.similar_to is not None
    }
    return RoutingModels(heads, examples)


async def route_signals(models: RoutingModels, embedder: Embedder, text: str) -> RouteSignals:
    """The classifier scores and similarities of one request's last user message."""
    from tiered_router.learned import tail_text

    tail = tail_text(text)
    items: list[tuple[str, int]] = []
    for head in models.heads.values():
        items += [(text, head.full_tokens), (tail, head.tail_tokens)]
    if models.examples:
        items.append((text, embedder.settings.max_tokens))
    unique = list(dict.fromkeys(items))
    vectors = await embedder.embed(unique)
    if vectors is None:
        return NO_SIGNALS
    embedded = dict(zip(unique, vectors, strict=True))
    scores = {
        name: head.score(text, embedded[(text, head.full_tokens)], embedded[(tail, head.tail_tokens)])
        for name, head in models.heads.items()
    }
    similarity = {}
    if models.examples:
        vector = embedded[(text, embedder.settings.max_tokens)]
        similarity = {i: float((examples @ vector).max()) for i, examples in models.examples.items()}
    return RouteSignals(scores, similarity, {name: head.threshold for name, head in models.heads.items()})


def explain_signals(models: RoutingModels | None, text: str, signals: RouteSignals) -> dict[str, Any]:
    """The features behind the signals, for `/v1/tiered/explain`."""
    from tiered_router.learned import SURFACE_FEATURES, surface_features

    out: dict[str, Any] = {
        "scores": dict(signals.scores),
        "similarity": {str(i): s for i, s in signals.similarity.items()},
    }
    if models is not None:
        out["surface"] = dict(zip(SURFACE_FEATURES, surface_features(text), strict=True))
        out["heads"] = {
            name: {"version": h.version, "trainedThreshold": h.threshold, "tokens": [h.full_tokens, h.tail_tokens]}
            for name, h in models.heads.items()
        }
    return out
