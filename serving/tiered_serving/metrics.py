"""Prometheus metrics of a llama.cpp replica, through Ray Serve's metrics API (exported by each Ray node).

Ray prefixes application metrics with `ray_` and adds the `application`, `deployment` and `replica` tags;
Prometheus sees:

| series | kind | meaning |
|---|---|---|
| `ray_tiered_serving_queue_depth` | gauge | requests waiting for the engine (not the one generating) |
| `ray_tiered_serving_busy_ratio` | gauge | fraction of the last 30 s the engine spent generating (0–1) |
| `ray_tiered_serving_tokens_per_second` | gauge | decode speed of the last finished generation |
| `ray_tiered_serving_tokens_total` | counter | tokens by `kind` (prompt, completion) |
| `ray_tiered_serving_requests_total` | counter | requests by `endpoint` and `status` code |
| `ray_tiered_serving_time_to_first_token_seconds` | histogram | arrival in the replica → first text |

`queue_depth` is the `queue-depth` autoscaling signal of CPU tiers.

Owns the metric objects and when they are updated; must not compute anything the pure modules can.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

from tiered_serving.busy import BusyWindow

# Ray annotates tag_keys as Tuple[str] (one element) but takes any number.
MODEL: Any = ("model",)
MODEL_KIND: Any = ("model", "kind")
MODEL_ENDPOINT_STATUS: Any = ("model", "endpoint", "status")
TTFT_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class ServingMetrics:
    def __init__(self, model_id: str) -> None:
        tags = {"model": model_id}
        self.queue_depth = Gauge(
            "tiered_serving_queue_depth", "Requests waiting for the engine", tag_keys=MODEL
        )
        self.busy_ratio = Gauge(
            "tiered_serving_busy_ratio", "Fraction of the last 30 s spent generating", tag_keys=MODEL
        )
        self.tokens_per_second = Gauge(
            "tiered_serving_tokens_per_second", "Decode speed of the last generation", tag_keys=MODEL
        )
        self.tokens = Counter("tiered_serving_tokens_total", "Tokens processed", tag_keys=MODEL_KIND)
        self.requests = Counter(
            "tiered_serving_requests_total", "Requests answered", tag_keys=MODEL_ENDPOINT_STATUS
        )
        self.ttft = Histogram(
            "tiered_serving_time_to_first_token_seconds",
            "Request arrival to first generated text",
            boundaries=TTFT_BOUNDARIES,
            tag_keys=MODEL,
        )
        every = (self.queue_depth, self.busy_ratio, self.tokens_per_second, self.tokens, self.requests, self.ttft)
        for metric in every:
            metric.set_default_tags(dict(tags))  # Ray adds its own tags to the dict it is given
        self.busy = BusyWindow()
        self.queue_depth.set(0)
        self.busy_ratio.set(0)

    def waiting(self, count: int) -> None:
        self.queue_depth.set(count)

    def generation_started(self) -> None:
        self.busy.start(time.monotonic())
        self.refresh()

    def generation_finished(self, prompt_tokens: int, completion_tokens: int, decode_seconds: float) -> None:
        self.busy.stop(time.monotonic())
        # Ray counters refuse inc(0); a request refused before its prompt was read counts no tokens.
        if prompt_tokens:
            self.tokens.inc(prompt_tokens, tags={"kind": "prompt"})
        if completion_tokens:
            self.tokens.inc(completion_tokens, tags={"kind": "completion"})
        if completion_tokens > 1 and decode_seconds > 0:
            # The first token's time is the prompt's (TTFT); decode speed counts the ones after it.
            self.tokens_per_second.set((completion_tokens - 1) / decode_seconds)
        self.refresh()

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def answered(self, endpoint: str, status: int) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})

    def refresh(self) -> None:
        """Recompute the windowed gauges (also called from Serve's periodic health check)."""
        self.busy_ratio.set(self.busy.ratio(time.monotonic()))
