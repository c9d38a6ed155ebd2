"""Thin async Kubernetes access for the operator's children (RayServices, later router objects).

Built once at start-up (kopf's `memo`) and passed in; no module-level clients. Everything here is I/O;
decisions happen in `reconcile` and `render`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

MERGE_PATCH = "application/merge-patch+json"


class Kube:
    """Create, patch and read namespaced custom objects."""

    def __init__(self, api: client.ApiClient):
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    @classmethod
    async def connect(cls) -> Kube:
        """From the in-cluster service account, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api = client.ApiClient()
        except config.ConfigException:
            configuration = client.Configuration()
            await config.load_kube_config(client_configuration=configuration)
            api = client.ApiClient(configuration)
        return cls(api)

    async def close(self) -> None:
        await self._api.close()

    @staticmethod
    def _coordinates(obj: Mapping[str, Any]) -> tuple[str, str]:
        group, _, version = str(obj["apiVersion"]).partition("/")
        return group, version

    async def create(self, plural: str, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create `obj`; None when it already exists (409), which the next reconcile then compares."""
        group, version = self._coordinates(obj)
        try:
            created: dict[str, Any] = await self._custom.create_namespaced_custom_object(
                group, version, obj["metadata"]["namespace"], plural, dict(obj)
            )
        except ApiException as error:
            if error.status == 409:
                return None
            raise
        return created

    async def patch(
        self, plural: str, api_version: str, namespace: str, name: str, patch: Mapping[str, Any],
        *, status: bool = False,
    ) -> dict[str, Any]:
        """JSON merge patch of an object, or of its status subresource."""
        group, _, version = api_version.partition("/")
        method = (
            self._custom.patch_namespaced_custom_object_status if status
            else self._custom.patch_namespaced_custom_object
        )
        patched: dict[str, Any] = await method(
            group, version, namespace, plural, name, dict(patch), _content_type=MERGE_PATCH  # type: ignore[call-arg]
        )
        return patched

    async def event(self, involved: Mapping[str, Any], type: str, reason: str, message: str, now: str) -> None:
        """Post a core/v1 Event about `involved` (a whole object as read)."""
        meta = involved["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "tiered-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": "tiered.dev/operator",
        }
        await self._core.create_namespaced_event(meta["namespace"], body)  # type: ignore[arg-type]  # a dict body is sent as is


def rejected(error: BaseException) -> str | None:
    """The API server's message when it refused a write for good (4xx other than conflict/throttling)."""
    if isinstance(error, ApiException) and error.status is not None and 400 <= error.status < 500 \
            and error.status not in (404, 409, 429):
        try:
            message = json.loads(error.body or "{}").get("message")
        except ValueError:
            message = None
        return str(message or error.reason or error.status)
    return None


def transient(error: BaseException) -> bool:
    """Errors that may pass by themselves: the API server unwell, throttling, conflicts, the network."""
    if isinstance(error, ApiException):
        return error.status is None or error.status >= 500 or error.status in (409, 429)
    return isinstance(error, aiohttp.ClientError | asyncio.TimeoutError | ConnectionError)
