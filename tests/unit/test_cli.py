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
        (TIER.replace("name: small", "name: " + "s" * 64),
         '{path}: InferenceTier/' + "s" * 64 + ': <nil>: Invalid value: "object": metadata.name must be at most 47 '
         "characters (it has 64): KubeRay names the RayCluster of the tier <name>-xxxxx and its Service "
         "<name>-serve-svc"),
        (TIER.replace("replicas:", "tolerations: [{key: k, effect: NoExecute, tolerationSeconds: '30'}]\n  replicas:"),
         '{path}: InferenceTier/small: spec.tolerations[0].tolerationSeconds: Invalid value: "string": '
         'spec.tolerations[0].tolerationSeconds in body must be of type integer: "string"'),
        (TIER.replace("parameters: 8B", "parameters: 1" + "0" * 400 + "B"),
         "{path}: InferenceTier/small: spec.model.parameters: Too long: may not be more than 12 bytes"),
        (TIER.replace("accelerator: ", "").replace("replicas:", "accelerator: {gpusPerReplica: 0.5}\n  replicas:"),
         '{path}: InferenceTier/small: spec.accelerator.gpusPerReplica: Invalid value: "number": '
         'spec.accelerator.gpusPerReplica in body must be of type integer,string: "number"'),
    ],
    ids=["missing", "malformed", "schema", "cel", "does-not-fit", "not-a-mapping", "name-64",
         "tolerationSeconds-string", "parameters-401-digits", "gpus-unquoted-fraction"],
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


POLICY = """apiVersion: tiered.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: default}
spec:
  tiers:
  - {name: small, tierRef: small}
  - name: big
    external: {baseURL: "https://api.example.com/v1", model: big}
    pricing: {inputPerMTok: 2, outputPerMTok: 8}
  default: small
  rules:
  - {match: {regex: "(?i)invoice"}, tier: big}
  burst: {from: small, to: big}
"""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('regex: "(?i)invoice"', 'regex: "(unclosed"',
         "spec: the router would reject this policy: rules[0].match: regex '(unclosed' does not compile: missing ), "
         "unterminated subpattern at position 0"),
        ("burst: {from: small, to: big}", "burst: {from: small, to: small}",
         'spec.burst: Invalid value: "object": burst.to must be another tier than burst.from'),
        ("burst: {from: small, to: big}", "burst: {from: big, to: small}",
         'spec: Invalid value: "object": burst.from must be a local tier (tierRef)'),
        ("  - {name: small, tierRef: small}", "  - {name: small, tierRef: small, fallback: [small]}",
         "spec.tiers[0]: Invalid value: \"object\": a tier's fallback must not name the tier itself"),
        ("    pricing: {inputPerMTok: 2, outputPerMTok: 8}\n", "",
         'spec.tiers[1]: Invalid value: "object": an external tier needs pricing'),
    ],
    ids=["regex-does-not-compile", "burst-to-itself", "burst-from-external", "fallback-to-itself",
         "external-without-pricing"],
)
def test_a_policy_the_router_would_reject_exits_2_with_one_line(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in POLICY
    (tmp_path / "tier.yaml").write_text(TIER)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.replace(old, new))
    result = tiered("render", "-f", str(tmp_path))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"tiered render: {path}: RoutingPolicy/default: {expected}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_the_base_policy_renders(tmp_path: Path) -> None:
    (tmp_path / "tier.yaml").write_text(TIER)
    (tmp_path / "policy.yaml").write_text(POLICY)
    result = tiered("render", "-f", str(tmp_path))
    assert result.returncode == 0, result.stderr
