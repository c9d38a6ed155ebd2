"""Resource kinds the emulator serves: the `v1 Status` error, built-in kinds, Kinds from CRDs, CRD files.

Pure: no HTTP, no store; `load_crds` and `default_crds` only read files (the package's own data).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
Validator = Callable[[Obj, Obj, "Obj | None"], list[str]]
Defaulter = Callable[[Obj, Obj], Obj]

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's request body limit (aiohttp's default is 1 MiB)
EVENT_LOG_SIZE = 10_000  # events kept for watches that resume from a resourceVersion


class ApiError(Exception):
    """A failure rendered as a `v1 Status` with the HTTP code, the way kube-apiserver reports it."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": self.message, "reason": self.reason, "code": self.code}
        return status | ({"details": self.details} if self.details else {})



@dataclasses.dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status: bool = False  # has a status subresource
    scale: tuple[tuple[str, str], ...] = ()  # (("specReplicasPath", ".spec.replicas"), ...)
    columns: tuple[Obj, ...] = ()  # additionalPrinterColumns
    crd: Obj | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store(self) -> tuple[str, str]:  # all versions of a resource share one set of objects
        return self.group, self.plural

    @property
    def resource(self) -> str:  # as in messages: "inferencetiers.tiered.dev"
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _builtin(api_version: str, plural: str, kind: str, namespaced: bool = True, short: str = "",
             status: bool = False, scale: bool = False, all_category: bool = False) -> Kind:
    group, _, version = api_version.rpartition("/")
    paths = (("specReplicasPath", ".spec.replicas"), ("statusReplicasPath", ".status.replicas"))
    return Kind(group, version, plural, kind, namespaced, kind.lower(), tuple(short.split()),
                ("all",) if all_category else (), status, paths if scale else ())


BUILTIN_KINDS = (
    _builtin("v1", "namespaces", "Namespace", namespaced=False, short="ns", status=True),
    _builtin("v1", "events", "Event", short="ev"),
    _builtin("v1", "configmaps", "ConfigMap", short="cm"),
    _builtin("v1", "secrets", "Secret"),
    _builtin("v1", "services", "Service", short="svc", status=True, all_category=True),
    _builtin("v1", "serviceaccounts", "ServiceAccount", short="sa"),
    _builtin("v1", "pods", "Pod", short="po", status=True, all_category=True),
    _builtin("events.k8s.io/v1", "events", "Event", short="ev"),
    _builtin("apps/v1", "deployments", "Deployment", short="deploy", status=True, scale=True,
             all_category=True),
    _builtin("coordination.k8s.io/v1", "leases", "Lease"),
    # What the Helm chart installs besides Deployments and ServiceAccounts (stored, not enforced).
    _builtin("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", namespaced=False),
    _builtin("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    _builtin("rbac.authorization.k8s.io/v1", "roles", "Role"),
    _builtin("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
    _builtin("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", short="netpol"),
    _builtin("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", short="pdb", status=True),
    _builtin("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition",
             namespaced=False, short="crd crds", status=True),
)


def kinds_from_crd(crd: Obj) -> list[Kind]:
    """The served versions of a CustomResourceDefinition, as Kinds."""
    spec, names = crd["spec"], crd["spec"]["names"]
    kinds = []
    for version in spec.get("versions", []):
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        scale = subresources.get("scale")
        kinds.append(Kind(
            group=spec["group"], version=version["name"], plural=names["plural"], kind=names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular", names["kind"].lower()),
            short_names=tuple(names.get("shortNames", ())), categories=tuple(names.get("categories", ())),
            status="status" in subresources, scale=tuple(sorted(scale.items())) if scale else (),
            columns=tuple(version.get("additionalPrinterColumns", ())), crd=crd,
        ))
    return kinds


def load_crds(paths: Iterable[str | os.PathLike[str]]) -> list[Obj]:
    """CustomResourceDefinitions from YAML files or directories of them (missing paths are skipped)."""
    crds = []
    for path in map(Path, paths):
        files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            with file.open() as stream:
                docs = list(yaml.load_all(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
            crds += [doc for doc in docs if doc and doc.get("kind") == "CustomResourceDefinition"]
    return crds


def default_crds() -> list[Obj]:
    """What `tiered cluster` serves unless told otherwise: the tiered CRDs generated in-process from the
    operator's models (`crds/` is generated from the same functions, so there is one source) and KubeRay's
    RayService CRD, vendored as package data. Nothing is read from a checkout."""
    from tiered_operator.api.crds import inference_tier_crd, routing_policy_crd

    from tiered_devstack.data import KUBERAY_CRD

    return [inference_tier_crd(), routing_policy_crd(), *load_crds([KUBERAY_CRD])]


# Declared when no RayService CRD is given (in-process emulators in tests skip parsing KubeRay's 1 MB file).
RAYSERVICE_FALLBACK_CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "rayservices.ray.io"},
    "spec": {"group": "ray.io", "scope": "Namespaced",
             "names": {"kind": "RayService", "plural": "rayservices", "singular": "rayservice"},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}
