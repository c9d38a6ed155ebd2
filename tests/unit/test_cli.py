"""`tiered render` and `tiered plan` as a person runs them: real subprocesses, exit codes, messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TIERED = Path(sys.executable).with_name("tiered")
TIER = """apiVersion: tiered.dev/v1alpha1
kind: InferenceTier
metadata: {name: small}
spec:
  model: {id: m, source: "hf://org/m", parameters: 8B, quantization: awq, bits: 4}
  replicas: {min: 1, max: 2}
"""


def tiered(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TIERED), *args], capture_output=True, text=True, timeout=60)


def test_render_prints_a_rayservice_per_tier_and_a_router_configmap_per_policy() -> None:
    result = tiered("render", "-f", str(ROOT / "examples"))
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    assert [(d["kind"], d["metadata"]["name"]) for d in documents] == [
        ("RayService", "triage"), ("RayService", "extract"), ("RayService", "edge"),
        ("ConfigMap", "tiered-router-default")]
    router = yaml.safe_load(documents[-1]["data"]["router.yaml"])
    assert router["tiers"][0]["pricing"] == {"gpuHourUSD": 3.5, "gpusPerReplica": 0.25, "tokensPerSecond": 2400.0}


def test_plan_prints_a_table() -> None:
    result = tiered("plan", "-f", str(ROOT / "examples" / "tier-gptq-b200.yaml"))
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split()[:4] == ["NAMESPACE", "NAME", "MODEL", "ACCELERATOR"]
    assert row.split()[1] == "extract" and "B200" in row and "0.3333" in row


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read {path}: No such file or directory"),
        ("kind: [", "{path}: malformed YAML"),
        (TIER.replace("max: 2", "max: 0"),
         "{path}: InferenceTier/small: spec.replicas.max: Invalid value: 0: spec.replicas.max in body should be "
         "greater than or equal to 1"),
        (TIER.replace("bits: 4", "bits: 16"),
         '{path}: InferenceTier/small: spec.model: Invalid value: "object": awq and gptq models are 4- or 8-bit'),
        (TIER.replace("parameters: 8B", "parameters: 700B").replace("quantization: awq", "quantization: none")
         .replace("bits: 4", "bits: 16"),
         "{path}: InferenceTier/small: spec: 700B at 16 bits needs ~1473 GiB per replica; one H100 offers 72 GiB "
         "(90% of 80), so it needs 32 GPUs"),
        ("- just\n- a list\n", "{path} document 1: not a YAML mapping"),
    ],
    ids=["missing", "malformed", "schema", "cel", "does-not-fit", "not-a-mapping"],
)
@pytest.mark.parametrize("command", ["render", "plan"])
def test_bad_input_exits_2_with_a_message_naming_file_object_and_field(
    tmp_path: Path, command: str, content: str | None, expected: str
) -> None:
    path = tmp_path / "tiers.yaml"
    if content is not None:
        path.write_text(content)
    result = tiered(command, "-f", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"tiered {command}: " + expected.format(path=path)), result.stderr
