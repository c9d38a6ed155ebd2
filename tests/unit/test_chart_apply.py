"""`helm template` output applied with the real kubectl to the real emulator (`tiered cluster`).

The emulator stores RBAC and NetworkPolicy objects without enforcing them; PodMonitor's CRD belongs to the
Prometheus Operator, which a cluster with monitoring has installed: a schema-less stand-in is declared here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from bed import EmulatorProcess

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tiered"
HELM = ROOT / ".bin" / "helm"
PODMONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"kind": "PodMonitor", "plural": "podmonitors", "singular": "podmonitor"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("values", sorted((CHART / "ci").glob("*.yaml")), ids=lambda p: p.stem)
def test_rendered_chart_applies_to_the_emulator(values: Path, emulator: EmulatorProcess, tmp_path: Path) -> None:
    assert HELM.exists(), f"{HELM} is missing: run `make setup`"
    rendered = subprocess.run(
        [str(HELM), "template", "tiered", str(CHART), "--namespace", "tiered-system", "--include-crds",
         "-f", str(values)], capture_output=True, text=True, timeout=60, check=True).stdout
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(rendered)
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    namespaces = {"tiered-system"} | {doc["metadata"]["namespace"] for doc in docs
                                      if doc.get("metadata", {}).get("namespace")}
    setup = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}} for name in sorted(namespaces)]
    (tmp_path / "setup.yaml").write_text(yaml.safe_dump_all([*setup, PODMONITOR_CRD]))
    emulator.kubectl("apply", "--validate=false", "-f", str(tmp_path / "setup.yaml"))

    # CRDs first (what helm does with crds/), then everything else once their kinds are served.
    crds = [doc for doc in docs if doc["kind"] == "CustomResourceDefinition"]
    (tmp_path / "crds.yaml").write_text(yaml.safe_dump_all(crds))
    emulator.kubectl("apply", "--validate=false", "-f", str(tmp_path / "crds.yaml"))
    result = emulator.kubectl("apply", "--validate=false", "-f", str(manifest))

    applied = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(applied) == len(docs), result.stdout
    for doc in docs:
        if doc["kind"] == "CustomResourceDefinition":
            continue
        args = ["get", f"{doc['kind'].lower()}.{doc['apiVersion'].split('/')[0]}"
                if "/" in doc["apiVersion"] else doc["kind"].lower(), doc["metadata"]["name"], "-o", "name"]
        if namespace := doc["metadata"].get("namespace"):
            args += ["-n", namespace]
        assert emulator.kubectl(*args).stdout.strip(), doc["metadata"]
