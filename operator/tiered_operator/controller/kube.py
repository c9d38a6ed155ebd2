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
    """Create and merge-patch namespaced objects of any kind (custom or built in), post Events."""

    def __init__(self, api: client.ApiClient):
        self._api = api

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

    async def _call(self, method: str, api_version: str, namespace: str, plural: str, name: str = "",
                    body: Mapping[str, Any] | None = None, content_type: str = "application/json") -> Any:
        group, _, version = api_version.rpartition("/")
        root = f"/apis/{group}/{version}" if group else f"/api/{version}"
        path = f"{root}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")
        return await self._api.call_api(
            path, method, header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=dict(body) if body is not None else None, response_types_map={200: "object", 201: "object"},
            auth_settings=["BearerToken"], _return_http_data_only=True, _request_timeout=30)

    async def create(self, plural: str, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create `obj`; None when it already exists (409), which the next reconcile then compares."""
        try:
            created: dict[str, Any] = await self._call("POST", obj["apiVersion"], obj["metadata"]["namespace"],
                                                       plural, body=obj)
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
        patched: dict[str, Any] = await self._call("PATCH", api_version, namespace, plural,
                                                   f"{name}/status" if status else name, patch, MERGE_PATCH)
        return patched

    async def get(self, plural: str, api_version: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none (404)."""
        try:
            found: dict[str, Any] = await self._call("GET", api_version, namespace, plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    async def replace(self, plural: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT `obj` (with its resourceVersion: a concurrent change answers 409)."""
        meta = obj["metadata"]
        replaced: dict[str, Any] = await self._call("PUT", obj["apiVersion"], meta["namespace"], plural,
                                                    meta["name"], obj)
        return replaced

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
        await self._call("POST", "v1", meta["namespace"], "events", body=body)


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
