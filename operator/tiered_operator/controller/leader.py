"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Every operator replica watches and keeps its store warm; only the holder of the Lease reconciles and ticks
the autoscaler (`Controller.leading`). The holder renews every `retry_seconds`; a replica takes the Lease
over when it has seen no renewal for `lease_seconds` (timed on its own clock from when it last saw the
record change, so clock skew between nodes does not matter). A holder that cannot renew within
`renew_deadline_seconds` stops reconciling before anyone else may start. On shutdown the holder releases
the Lease so the next replica takes over at once.

kopf's own peering is not used: replicas of equal priority all freeze there, it is not an election.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger("tiered.leader")

LEASES = "leases"
LEASE_API_VERSION = "coordination.k8s.io/v1"


class LeaseClient(Protocol):
    async def get(self, plural: str, api_version: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create(self, plural: str, obj: Any) -> dict[str, Any] | None: ...

    async def replace(self, plural: str, obj: Any) -> dict[str, Any]: ...


def _micro_time(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaderElection:
    client: LeaseClient
    identity: str
    namespace: str
    name: str = "tiered-operator"
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.leading = asyncio.Event()
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0

    async def run(self, on_change: Callable[[bool], None]) -> None:
        """Try to lead until cancelled; `on_change(leading)` is called on every flip."""
        try:
            while True:
                try:
                    leading = await self._try()
                except Exception as error:  # the API is unwell: keep leading only within the deadline
                    log.warning("lease %s/%s: %s", self.namespace, self.name, error)
                    leading = self.leading.is_set() and \
                        self.clock() - self._renewed_at < self.renew_deadline_seconds
                if leading != self.leading.is_set():
                    if leading:
                        self.leading.set()
                    else:
                        self.leading.clear()
                    log.warning("%s %s the lease %s/%s", self.identity, "holds" if leading else "lost",
                                self.namespace, self.name)
                    on_change(leading)
                await asyncio.sleep(self.retry_seconds)
        finally:
            self.leading.clear()

    async def _try(self) -> bool:
        lease = await self.client.get(LEASES, LEASE_API_VERSION, self.namespace, self.name)
        now, wall = self.clock(), self.wall_clock()
        spec = dict((lease or {}).get("spec") or {})
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False  # someone else holds a live lease
        mine = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_seconds),
                "renewTime": _micro_time(wall)}
        if holder != self.identity:
            mine["acquireTime"] = _micro_time(wall)
            mine["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        try:
            if lease is None:
                created = await self.client.create(LEASES, {
                    "apiVersion": LEASE_API_VERSION, "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": mine})
                if created is None:
                    return False  # another replica created it first
            else:
                await self.client.replace(LEASES, {**lease, "spec": {**spec, **mine}})
        except Exception as error:
            if getattr(error, "status", None) == 409:
                return False  # another replica won this round
            raise
        self._renewed_at = now
        return True

    async def release(self) -> None:
        """Give the lease up (shutdown) so that another replica need not wait for it to expire."""
        if not self.leading.is_set():
            return
        self.leading.clear()
        lease = await self.client.get(LEASES, LEASE_API_VERSION, self.namespace, self.name)
        if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
            await self.client.replace(LEASES, {**lease, "spec": spec})
