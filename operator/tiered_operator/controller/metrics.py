"""The operator's own Prometheus metrics (served on `--metrics-port`): reconciles, errors, writes, queue
depth, leadership, and the autoscaler's scale and burst decisions."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter("tiered_operator_reconciles_total", "Reconcile passes, by kind",
                                  ["kind"], registry=self.registry)
        self.errors = Counter("tiered_operator_reconcile_errors_total",
                              "Reconcile passes that failed, by kind and whether they will be retried",
                              ["kind", "retry"], registry=self.registry)
        self.writes = Counter("tiered_operator_writes_total", "API writes (children, status), by kind written",
                              ["kind"], registry=self.registry)
        self.queue_depth = Gauge("tiered_operator_queue_depth", "Objects waiting for a reconcile",
                                 registry=self.registry)
        self.leader = Gauge("tiered_operator_leader", "1 while this replica holds the lease and reconciles",
                            registry=self.registry)
        self.scale_decisions = Counter("tiered_operator_scale_decisions_total",
                                       "Autoscaler replica changes, by reason", ["reason"], registry=self.registry)
        self.burst_decisions = Counter("tiered_operator_burst_decisions_total",
                                       "Burst flips, by reason", ["reason"], registry=self.registry)
