"""A Kubernetes API emulator for tests and local use: `kmock.KubernetesEmulator` with the gaps filled.

Owns: an in-memory object store served over HTTP on loopback, close enough to kube-apiserver that the real
`kopf run` and the real `kubectl` work against it, plus the `tiered cluster` command that serves it (`cli`).
Must not: import the operator's own modules (except its CRD generation and the optional CRD validator), read
files outside this package (an installed copy has no checkout), or leave loopback.

Modules, by concern: `kinds` (the `v1 Status` error, Kinds, CRD loading) · `patch` (merge, strategic, JSON
patch) · `selectors` (label/field selectors, JSONPath) · `meta` (ObjectMeta validation) · `tables` (printer
columns) · `protobuf` (kubectl's protobuf bodies) · `server` (the `Emulator`: HTTP verbs, store, watches,
discovery) · `cli` (`tiered cluster`). The public names are importable from this package.

kmock provides the HTTP server, the request plumbing, discovery scaffolding and its DSL for ad-hoc routes
(`/readyz`, `/_emulator/...`). Everything under `/api/...` and `/apis/.../<plural>` is served here, because
kmock 0.8 gets most of it wrong for a real client (see ../shared/TESTING.md):

- ObjectMeta validation (names, labels, annotation size) for every kind; request bodies up to 3 MiB;
- objects get `uid`, `creationTimestamp`, `generation` and `resourceVersion` (one global counter);
  `generateName` works; a namespaced URL sets `metadata.namespace`; no-op writes change nothing;
- `generation` starts at 1 and grows when anything outside `metadata`/`status` changes (and when
  deletion starts, as in Kubernetes); with a `status` subresource, main writes keep `status` and `/status`
  writes change only `status`; `/scale` serves an `autoscaling/v1` Scale from the CRD's paths;
- PUT with optimistic concurrency (409); PATCH as JSON merge patch, JSON patch (a failed `test` → 422),
  strategic merge patch for built-in kinds (lists merged by the usual keys, 415 for custom resources as in
  Kubernetes) and server-side apply (as create-or-merge, no field ownership); kubectl's protobuf bodies for
  namespaces/configmaps/secrets/serviceaccounts; `fieldValidation=Strict` (kubectl's default) rejects
  fields the CRD schema would prune, via a stub OpenAPI v3 that tells kubectl to validate on the server;
- lists carry `kind`/`apiVersion`/`resourceVersion`; label selectors (`=`, `==`, `!=`, `in`, `notin`,
  `key`, `!key`) and field selectors (any dotted path, `=`/`!=`); `kubectl get` gets Tables built from
  `additionalPrinterColumns` (plus NAME and AGE);
- watches replay from the requested `resourceVersion` (410 when it fell out of the event log), else send
  the current objects as ADDED; events are ordered, none is lost while a watch starts; selectors apply to
  events (an object leaving a selector is DELETED for that watch); BOOKMARKs; `timeoutSeconds`;
- DELETE with finalizers sets `deletionTimestamp`; the object goes when the last finalizer is removed;
  removal garbage-collects dependents whose `ownerReferences` point at the removed `uid`; deleting a
  namespace deletes its contents; applying a CRD object registers (deleting it unregisters) its resources;
- an optional validator `validate(crd, new, old) -> list[str]` turns messages into 422 `Invalid`, and an
  optional defaulter `(crd, obj) -> obj` prunes and defaults (`tiered cluster` wires in crd_validation's);
- request counters by (verb, resource, subresource): `GET /_emulator/requests`, `POST .../reset`;
  injected failures: `POST /_emulator/faults` (`{"verb", "resource", "subresource", "code", "count"}`).

Not emulated (docs/emulator.md has the list): authn/authz, admission webhooks, field managers, other
protobuf bodies, pagination (`limit` returns everything), conversion between CRD versions (objects are
shared, only `apiVersion` is rewritten), controllers (no pods behind Deployments), namespace existence.

Throughput (`python tests/bed.py --bench`: 500 custom resources, 16 concurrent aiohttp clients in another
process, 2 cores shared with other work, validation off): 2,800-3,900 GET/s and 2,300-3,600 merge-PATCH/s.
Plain kmock 0.8 decays to ~50 GET/s because its root matches every request against the whole request
history: here resource requests bypass that matcher, and the routes kmock still serves keep only their
in-flight requests.
"""

from __future__ import annotations

from tiered_devstack.emulator.cli import add_cluster_arguments, cluster, write_kubeconfig
from tiered_devstack.emulator.kinds import (
    BUILTIN_KINDS,
    RAYSERVICE_FALLBACK_CRD,
    ApiError,
    Defaulter,
    Kind,
    Obj,
    Validator,
    default_crds,
    kinds_from_crd,
    load_crds,
)
from tiered_devstack.emulator.meta import metadata_errors
from tiered_devstack.emulator.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from tiered_devstack.emulator.protobuf import decode_protobuf
from tiered_devstack.emulator.selectors import jsonpath, parse_selector, selects
from tiered_devstack.emulator.server import Emulator, default_admission, parse_path, unknown_fields
from tiered_devstack.emulator.tables import human_age, table

__all__ = [
    "BUILTIN_KINDS", "RAYSERVICE_FALLBACK_CRD", "ApiError", "Defaulter", "Emulator", "Kind", "Obj", "PatchError",
    "Validator", "add_cluster_arguments", "cluster", "decode_protobuf", "default_admission", "default_crds",
    "human_age", "json_patch", "jsonpath", "kinds_from_crd", "load_crds", "merge_patch", "metadata_errors",
    "parse_path", "parse_selector", "selects", "strategic_merge_patch", "table", "unknown_fields",
    "write_kubeconfig",
]
