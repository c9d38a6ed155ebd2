"""Admission through the real emulator and the real kubectl: what the CRDs refuse never reaches the operator.

The same cases as tests/unit/test_admission_schema.py (offline validator), sent as `kubectl apply`; the emulator
validates with the CRD's schema and CEL rules and answers 422 with the message kubectl prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from bed import EmulatorProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_admission_schema import TIER, TIER_NAME_WHY, mutate

ROOT = Path(__file__).resolve().parents[2]

REFUSED = [
    ("name-64", "metadata.name", "t" * 64,
     "metadata.name must be at most 47 characters (it has 64): " + TIER_NAME_WHY),
    ("name-253", "metadata.name", "t" * 253,
     "metadata.name must be at most 47 characters (it has 253): " + TIER_NAME_WHY),
    ("tolerationSeconds-string", "spec.tolerations.0.tolerationSeconds", "30",
     'spec.tolerations[0].tolerationSeconds: Invalid value: "string": spec.tolerations[0].tolerationSeconds in '
     'body must be of type integer: "string"'),
    ("gpus-unquoted-fraction", "spec.accelerator.gpusPerReplica", 0.5,
     'spec.accelerator.gpusPerReplica: Invalid value: "number": spec.accelerator.gpusPerReplica in body must be '
     'of type integer,string: "number"'),
    ("gpus-too-many", "spec.accelerator.gpusPerReplica", 16,
     "spec.accelerator.gpusPerReplica in body should be less than or equal to 8"),
    ("parameters-401-digits", "spec.model.parameters", "1" + "0" * 400 + "B",
     "spec.model.parameters: Too long: may not be more than 12 bytes"),
]
ADMITTED = [
    ("gpus-int", "spec.accelerator.gpusPerReplica", 1),
    ("gpus-string-fraction", "spec.accelerator.gpusPerReplica", "0.5"),
    ("name-47", "metadata.name", "t" * 47),
]


def apply(emulator: EmulatorProcess, obj: dict[str, Any]) -> Any:
    return emulator.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(obj), check=False)


@pytest.fixture
def cluster(emulator: EmulatorProcess, kubectl_binary: None) -> EmulatorProcess:
    emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "crds"))
    return emulator


def test_refused_at_apply_with_the_message(cluster: EmulatorProcess) -> None:
    for case, path, value, message in REFUSED:
        result = apply(cluster, mutate(TIER, path, value))
        assert result.returncode != 0, case
        assert "is invalid" in result.stderr and message in result.stderr, (case, result.stderr)
    listed = json.loads(cluster.kubectl("get", "itier", "-o", "json").stdout)
    assert listed["items"] == []  # nothing half-accepted for the operator to loop on


def test_kubectl_forms_are_admitted_as_written(cluster: EmulatorProcess) -> None:
    for case, path, value in ADMITTED:
        obj = mutate(mutate(TIER, path, value), "metadata.name", value if path == "metadata.name" else case)
        result = apply(cluster, obj)
        assert result.returncode == 0, (case, result.stderr)
        stored = json.loads(cluster.kubectl("get", "itier", obj["metadata"]["name"], "-o", "json").stdout)
        assert stored["spec"]["accelerator"]["gpusPerReplica"] == obj["spec"]["accelerator"]["gpusPerReplica"]
    assert json.loads(cluster.kubectl("get", "itier", "gpus-int", "-o", "json").stdout)["spec"]["tolerations"] == \
        TIER["spec"]["tolerations"]
