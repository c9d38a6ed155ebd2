"""Typed specs of the `tiered.dev/v1alpha1` custom resources: the one source of the CRDs.

Each custom resource is parsed once into a frozen pydantic model; nothing deeper indexes raw dicts.
Field descriptions, bounds and defaults become the CRD's OpenAPI schema (`tiered_operator.api.crds`), and the
cross-field rules are CEL expressions attached with `cel(...)`, enforced by the API server (and by
`crd_validation` offline), so they are written once.

Pure: no kopf, kubernetes or HTTP imports.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

GROUP = "tiered.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules as (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


class Spec(BaseModel):
    """Base of every spec model: camelCase on the wire, frozen, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid", use_enum_values=True
    )


Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]

# Kubernetes label syntax (k8s.io/apimachinery validation): a key is an optional DNS-1123 subdomain prefix
# (at most 253) and '/', then a name of at most 63; a value is at most 63, possibly empty. No backslashes:
# the patterns are also CEL string literals.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_KEY_MAX = 253 + 1 + 63
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]

# What the children derive from an object's name, which the API server must refuse up front (CEL on
# `self.metadata.name` at the CRD's root). KubeRay refuses a RayService name over 47 characters or not a
# DNS-1035 label (its RayCluster is `<name>-xxxxx`, at most 53 so that the cluster's `-serve-svc` Service
# stays within 63); the tier's name is also the `tiered.dev/tier` label value (≤ 63). A policy's router objects are
# `tiered-router-<name>` (a Service name: DNS-1035, ≤ 63) and labelled `tiered.dev/policy: <name>`.
TIER_NAME_MAX = 47
POLICY_NAME_MAX = 63 - len("tiered-router-")
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def name_rules(max_length: int, pattern: str, why: str, syntax: str) -> list[dict[str, str]]:
    """Root-level CEL rules bounding `metadata.name` by what the operator derives from it."""
    assert "'" not in why, "`why` goes into a CEL string literal"
    size = "size(self.metadata.name)"
    return [
        {
            "rule": f"{size} <= {max_length}",
            "message": f"metadata.name must be at most {max_length} characters: {why}",
            "messageExpression": f"'metadata.name must be at most {max_length} characters (it has ' + "
            f"string({size}) + '): {why}'",
        },
        {
            "rule": f"self.metadata.name.matches('{pattern}')",
            "message": f"metadata.name must be {syntax}: {why}",
        },
    ]


TIER_NAME_RULES = name_rules(
    TIER_NAME_MAX,
    DNS1035_LABEL,
    "KubeRay names the RayCluster of the tier <name>-xxxxx and its Service <name>-serve-svc",
    "a DNS-1035 label (lower-case letters, digits and '-', starting with a letter)",
)
POLICY_NAME_RULES = name_rules(
    POLICY_NAME_MAX,
    DNS1123_LABEL,
    "the router Service of the policy is tiered-router-<name>, a DNS-1035 label of at most 63",
    "a DNS-1123 label (lower-case letters, digits and '-', no dots)",
)


class SecretKeyRef(Spec):
    """A key in a Secret in the object's namespace."""

    name: Name = Field(description="Secret name.")
    key: str = Field(min_length=1, max_length=253, description="Key inside the Secret.")


# ---------------------------------------------------------------------------------------------------------
# InferenceTier

Quantization = Literal["awq", "gptq", "fp8", "gguf", "none"]
Engine = Literal["vllm", "llama-cpp"]
AcceleratorType = Literal["H100", "H200", "B200", "CPU"]
PARAMETERS_PATTERN = r"^[0-9]{1,5}(\.[0-9]{1,3})?[MB]$"


class ModelSpec(Spec):
    """The model a tier serves."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.quantization != 'fp8' || self.bits == 8", "fp8 quantization stores 8 bits: set bits: 8"),
            ("self.quantization != 'none' || self.bits == 16", "an unquantized model has bits: 16"),
            (
                "!(self.quantization in ['awq', 'gptq']) || self.bits in [4, 8]",
                "awq and gptq models are 4- or 8-bit: set bits to 4 or 8",
            ),
        )
    )

    id: str = Field(
        min_length=1, max_length=128, description="Model name clients use (OpenAI `model` field upstream)."
    )
    source: str = Field(
        max_length=2048,
        pattern=r"^(hf|s3|gs|pvc|file|pkg)://.+",
        description="Where the weights come from: hf://org/repo, s3://bucket/path, gs://…, pvc://claim/path, "
        "file:///path (on the worker), or pkg://<python package>/<file> (a GGUF shipped in a package installed "
        "in the serving image; llama-cpp only).",
    )
    sha256: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 of the GGUF file (llama-cpp): a replica whose file differs refuses to "
        "serve, and the tier's Degraded condition says why.",
    )
    parameters: str = Field(
        max_length=12,
        pattern=PARAMETERS_PATTERN,
        description="Parameter count with unit, e.g. 8B, 0.5B or 135M (sizes the plan): at most 5 digits, "
        "3 decimals.",
    )
    quantization: Quantization = Field(
        default="none",
        description="Format the weights at `source` are stored in: awq, gptq or fp8 for a checkpoint already "
        "quantized (it carries its quantization_config, which vLLM reads itself, so none is passed; 16-bit "
        "weights are not quantized on load), gguf for llama-cpp, none for 16-bit weights.",
    )
    bits: Literal[4, 8, 16] = Field(default=16, description="Bits per weight after quantization.")
    max_model_len: int = Field(
        default=8192, ge=256, le=1_048_576, description="Longest context (prompt + output) in tokens."
    )
    secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret holding a token for the weight source (e.g. HF_TOKEN)."
    )

    @property
    def parameters_billions(self) -> float:
        match = re.fullmatch(PARAMETERS_PATTERN, self.parameters)
        assert match, "the schema pattern guarantees a parameter count"
        number = float(self.parameters[:-1])
        return number if self.parameters.endswith("B") else number / 1000


GPUS_PATTERN = r"^(auto|[0-9]{1,2}(\.[0-9]{1,4})?)$"
# An integer or a string, as kubectl users write it (`1`, "0.5", auto): `x-kubernetes-int-or-string` in the CRD.
GpusPerReplica = (
    Annotated[int, Field(ge=1, le=8)] | Annotated[str, Field(min_length=1, max_length=7, pattern=GPUS_PATTERN)]
)


class Toleration(Spec):
    """A Kubernetes toleration (core/v1 Toleration), typed and checked as the API server checks pods."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                "a toleration without a key must use operator: Exists (it then tolerates every taint)",
            ),
            (
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "a toleration with operator: Exists must not set a value",
            ),
            (
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds applies only to effect: NoExecute",
            ),
        )
    )

    key: str | None = Field(
        default=None, max_length=LABEL_KEY_MAX, pattern=r"^$|" + LABEL_KEY_PATTERN,
        description="Taint key (label-key syntax); empty with operator Exists matches every taint.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Equal (default) or Exists.")
    value: LabelValue | None = Field(default=None, description="Taint value (label-value syntax).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; unset tolerates every effect."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, le=2**31 - 1,
        description="How long a NoExecute taint is tolerated before eviction, in whole seconds.",
    )


class AcceleratorSpec(Spec):
    """Where replicas run and how much of a device each takes."""

    type: AcceleratorType = Field(default="H100", description="GPU product, or CPU (llama-cpp only).")
    gpus_per_replica: GpusPerReplica = Field(
        default="auto",
        description="GPUs per replica: 'auto' (planned from model size), a fraction < 1 as a string "
        "(\"0.5\") to pack several replicas per GPU, or a whole number (1, 2, 4, 8) for tensor parallelism. "
        "Packed replicas (a fraction, or what auto plans for a small model) are experimental (Ray's fractional-GPU "
        "serving): their engines run in eager mode.",
    )
    memory_utilization: float = Field(
        default=0.9, ge=0.1, le=0.98, description="Share of each GPU's memory the engine may use."
    )
    cpus_per_replica: int = Field(default=2, ge=1, le=64, description="CPU cores per replica (CPU tiers).")


class ReplicasSpec(Spec):
    """Replica bounds. `desired` is what the /scale subresource writes (KEDA, HPA, kubectl scale)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.min <= self.max", "replicas.min must be less than or equal to replicas.max"),
            (
                "!has(self.desired) || (self.desired >= self.min && self.desired <= self.max)",
                "replicas.desired must lie between replicas.min and replicas.max",
            ),
        )
    )

    min: int = Field(default=1, ge=0, le=512, description="Fewest replicas.")
    max: int = Field(default=1, ge=1, le=512, description="Most replicas.")
    desired: int | None = Field(
        default=None,
        ge=0,
        le=512,
        description="Fixed replica count when autoscaling is off; written by the /scale subresource.",
    )


class AutoscalingSpec(Spec):
    """Replica autoscaling from a GPU signal read from Prometheus."""

    enabled: bool = Field(default=True, description="Scale between min and max from the signal.")
    metric: Literal["gpu-utilization", "engine-active", "queue-depth"] = Field(
        default="gpu-utilization",
        description="gpu-utilization: DCGM_FI_DEV_GPU_UTIL; engine-active: DCGM_FI_PROF_GR_ENGINE_ACTIVE; "
        "queue-depth: the engine's waiting requests per replica.",
    )
    query: str | None = Field(
        default=None,
        max_length=4096,
        description="PromQL overriding the metric; must return one number on the target's scale.",
    )
    target: float = Field(default=70, gt=0, le=1000, description="Signal value each replica should run at.")
    tolerance: float = Field(
        default=0.1, ge=0, le=1, description="No scaling while |signal/target - 1| stays within this."
    )
    scale_up_stabilization_seconds: int = Field(
        default=0, ge=0, le=3600, description="Scale up to the lowest recommendation of this window."
    )
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, le=3600, description="Scale down to the highest recommendation of this window."
    )
    max_step: int = Field(default=4, ge=1, le=64, description="Most replicas added or removed at once.")
    interval_seconds: int = Field(default=15, ge=1, le=3600, description="How often the signal is read.")
    stale_after_seconds: int = Field(
        default=120, ge=5, le=3600, description="Samples older than this are ignored (hold steady)."
    )


class PricingSpec(Spec):
    """What a self-hosted replica costs; tokens are priced from it by measured throughput."""

    gpu_hour_usd: float = Field(
        default=0, ge=0, alias="gpuHourUSD", description="Price of one GPU (or CPU node) for an hour."
    )
    tokens_per_second: float = Field(
        default=1000,
        gt=0,
        description="Tokens (input + output) one replica serves per second at full load; self-hosted tokens "
        "cost gpuHourUSD × GPUs per replica / (3600 × this).",
    )


class InferenceTierSpec(Spec):
    """A tier of self-hosted models: one KubeRay RayService running a Ray Serve LLM app."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "(self.model.quantization == 'gguf') == (self.engine == 'llama-cpp')",
                "gguf weights run only on engine llama-cpp, and llama-cpp runs only gguf weights",
            ),
            (
                "(self.accelerator.type == 'CPU') == (self.engine == 'llama-cpp')",
                "accelerator CPU needs engine llama-cpp; GPU accelerators run engine vllm",
            ),
            (
                "!has(self.model.sha256) || self.engine == 'llama-cpp'",
                "model.sha256 is checked by the llama-cpp engine only (vLLM loads a repository, not one file)",
            ),
            (
                "!self.model.source.startsWith('pkg://') || self.engine == 'llama-cpp'",
                "pkg:// sources (a GGUF file shipped in a Python package) are served by the llama-cpp engine only",
            ),
        )
    )

    model: ModelSpec
    engine: Engine = Field(default="vllm", description="vllm (Ray Serve LLM) or llama-cpp (CPU, GGUF).")
    accelerator: AcceleratorSpec = Field(default_factory=AcceleratorSpec)
    replicas: ReplicasSpec = Field(default_factory=ReplicasSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    pricing: PricingSpec = Field(default_factory=PricingSpec)
    max_ongoing_requests: int = Field(
        default=64, ge=1, le=4096, description="Concurrent requests one replica accepts."
    )
    ray_version: str = Field(
        default="2.60.0", max_length=32, pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$", description="Ray version."
    )
    image: str | None = Field(
        default=None, max_length=512, description="Container image; defaults follow engine and Ray."
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra node labels for the worker pods (label keys and values).",
        json_schema_extra=cel(
            (
                f"self.all(k, size(k) <= {LABEL_KEY_MAX} && k.matches('{LABEL_KEY_PATTERN}'))",
                "every nodeSelector key must be a label key: an optional DNS subdomain prefix and '/', then a "
                "name of at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric",
            )
        ),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Extra tolerations for the worker pods."
    )

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if len(k) > LABEL_KEY_MAX or not re.fullmatch(LABEL_KEY_PATTERN, k)]
        if bad:
            raise ValueError(f"nodeSelector keys must be label keys: {', '.join(map(repr, bad))}")
        return value


# ---------------------------------------------------------------------------------------------------------
# RoutingPolicy

TIER_NAMES = "self.tiers.map(t, t.name)"


class ExternalEndpoint(Spec):
    """A tier served by an external OpenAI- or Anthropic-compatible API."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!self.baseURL.endsWith('/completions')",
                "baseURL is the API's base (e.g. https://api.openai.com/v1), not an endpoint: the router appends "
                "/chat/completions or /completions itself",
            )
        )
    )

    base_url: str = Field(alias="baseURL", max_length=2048, pattern=r"^https?://.+", description="API base URL.")
    model: str = Field(min_length=1, max_length=256, description="Model name sent upstream.")
    provider: Literal["openai", "anthropic"] = Field(default="openai", description="API dialect.")
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, description="Secret holding the API key.")


class TokenPricing(Spec):
    """Price per million tokens."""

    input_per_m_tok: float = Field(default=0, ge=0, alias="inputPerMTok", description="USD per 1M input.")
    output_per_m_tok: float = Field(default=0, ge=0, alias="outputPerMTok", description="USD per 1M output.")
    cached_input_per_m_tok: float | None = Field(
        default=None, ge=0, alias="cachedInputPerMTok",
        description="USD per 1M prompt tokens read from the provider's prompt cache; default inputPerMTok.",
    )
    cache_write_per_m_tok: float | None = Field(
        default=None, ge=0, alias="cacheWritePerMTok",
        description="USD per 1M prompt tokens written to the provider's prompt cache; default inputPerMTok.",
    )


class PolicyTier(Spec):
    """A tier the router may send to: a local InferenceTier or an external API."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("has(self.tierRef) != has(self.external)", "a tier names exactly one of tierRef or external"),
            (
                "!has(self.external) || has(self.pricing)",
                "an external tier needs pricing (inputPerMTok, outputPerMTok): the router prices every token",
            ),
            (
                "!has(self.fallback) || !(self.name in self.fallback)",
                "a tier's fallback must not name the tier itself",
            ),
        )
    )

    name: Name = Field(description="Name used in rules, defaults and the OpenAI `model` field.")
    tier_ref: Name | None = Field(default=None, description="An InferenceTier in this namespace.")
    external: ExternalEndpoint | None = None
    pricing: TokenPricing | None = Field(default=None, description="Per-token price (external tiers).")
    max_concurrency: int | None = Field(
        default=None, ge=1, le=100000, description="Concurrency budget; beyond it, overflow may burst."
    )
    fallback: list[Name] = Field(default_factory=list, max_length=8, description="Tiers to try on failure.")


class SimilarTo(Spec):
    """Match prompts semantically close to examples."""

    examples: list[Annotated[str, Field(max_length=4096)]] = Field(min_length=1, max_length=256)
    threshold: float = Field(default=0.8, ge=0, le=1, description="Cosine similarity to match.")


class ClassifierMatch(Spec):
    """The learned router: match when the probability that a request needs the frontier is high enough."""

    head: str = Field(
        default="route-v1", max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$",
        description="Trained head shipped with the router (route-v1: the project's own, docs/router.md).",
    )
    threshold: float | None = Field(
        default=None, ge=0, le=1,
        description="Score at or above which the rule matches; default the head's trained operating point.",
    )


class RuleMatch(Spec):
    """Conditions of a rule; all given ones must hold."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.minPromptTokens) || !has(self.maxPromptTokens) "
                "|| self.minPromptTokens <= self.maxPromptTokens",
                "match.minPromptTokens must be less than or equal to match.maxPromptTokens",
            )
        )
    )

    task_types: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=64, description="x-tiered-task values."
    )
    min_prompt_tokens: int | None = Field(default=None, ge=0)
    max_prompt_tokens: int | None = Field(default=None, ge=0)
    keywords: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=256, description="Any of these as whole words, case-insensitive."
    )
    regex: str | None = Field(default=None, max_length=1024)
    scope: Literal["lastUser", "lastUserAndSystem", "conversation"] | None = Field(
        default=None,
        description="Text keywords and regex look at: the last user message (default), it and the system "
        "prompt, or the whole conversation.",
    )
    similar_to: SimilarTo | None = None
    classifier: ClassifierMatch | None = Field(
        default=None, description="Learned routing: the router's score that the request needs the frontier."
    )


class Rule(Spec):
    """Send matching `model: auto` requests to a tier. First match wins."""

    match: RuleMatch
    tier: Name
    max_tokens: int | None = Field(
        default=None, ge=1, le=10**7,
        description="Completion-token cap for matching requests: larger max_tokens / max_completion_tokens are "
        "clamped, chat requests without one get it (x-tiered-max-tokens).",
    )
    max_context_tokens: int | None = Field(
        default=None, ge=1, le=10**8,
        description="Prompt budget (estimated tokens) for matching chat requests: the oldest turns are dropped "
        "to fit; system messages and the last user turn stay (x-tiered-truncated).",
    )
    semantic_cache: bool | None = Field(
        default=None, description="Semantic cache for requests this rule routes: true opts in, false out."
    )


class Escalation(Spec):
    """Re-ask a stronger tier when the answer's confidence is low."""

    model_config = ConfigDict(
        json_schema_extra=cel(("self.from != self.to", "escalation.to must be another tier than escalation.from"))
    )

    from_: Name = Field(alias="from")
    to: Name
    min_confidence: float = Field(default=0.7, ge=0, le=1, description="Answers less confident are re-asked.")
    method: Literal["meanTokenProb", "minTokenProb", "firstTokenMargin"] = Field(
        default="meanTokenProb", description="How confidence is computed from the small tier's logprobs."
    )


class Burst(Spec):
    """Send a tier's overflow elsewhere while its GPU signal stays high."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.exitBelow <= self.utilizationAbove", "burst.exitBelow must not exceed burst.utilizationAbove"),
            ("self.from != self.to", "burst.to must be another tier than burst.from"),
        )
    )

    from_: Name = Field(alias="from")
    to: Name
    utilization_above: float = Field(default=85, ge=0, le=100, description="Enter at or above this %.")
    for_seconds: int = Field(default=300, ge=0, le=86400, description="…held for this long.")
    exit_below: float = Field(default=70, ge=0, le=100, description="Leave below this %.")
    exit_for_seconds: int = Field(default=300, ge=0, le=86400, description="…held for this long.")


class Privacy(Spec):
    """Traffic that must never leave the cluster."""

    private_teams: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list, max_length=256)
    private_header: str = Field(
        default="x-tiered-private", max_length=128, description="Header marking a request private."
    )


class Attribution(Spec):
    """Bounds on the team and feature values callers may claim (they become metric labels and cost rows)."""

    features: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list, max_length=256,
        description="With API keys: features a caller may name besides its key's own; others count as `other`.",
    )
    max_label_values: int | None = Field(
        default=None, ge=1, le=10000,
        description="Distinct values kept per label (team, feature, task) before new ones count as `other` "
        "(router default 100).",
    )


class ExactCache(Spec):
    """Answers kept by the exact request (team, privacy class, tier, sampling parameters, messages)."""

    ttl_seconds: int = Field(default=300, ge=1, le=604800, description="How long an answer is served.")
    max_bytes: int | None = Field(
        default=None, ge=1024, le=1 << 40, description="Size bound of stored answers per router (default 64 MiB)."
    )
    max_entry_bytes: int | None = Field(
        default=None, ge=256, le=1 << 30, description="Larger answers are not stored (default 1 MiB)."
    )


class SemanticCache(Spec):
    """Answers served to requests whose last user message means the same (needs the router's encoder)."""

    threshold: float = Field(default=0.95, ge=0, le=1, description="Cosine similarity at least this.")
    ttl_seconds: int | None = Field(default=None, ge=1, le=604800, description="How long (default 300 s).")
    max_entries: int | None = Field(default=None, ge=1, le=10**7, description="Entries per router (default 10000).")
    max_bytes: int | None = Field(
        default=None, ge=1024, le=1 << 40, description="Size bound of stored answers per router (default 64 MiB)."
    )
    serve_sampled: bool | None = Field(
        default=None, description="Serve requests with temperature > 0 or unset too (default false)."
    )
    all_requests: bool | None = Field(
        default=None,
        description="false: only requests routed by a rule with semanticCache: true (default true).",
    )


class Cache(Spec):
    exact: ExactCache | None = None
    semantic: SemanticCache | None = None


class Budget(Spec):
    """A spend cap on the requests matching all its given selectors (none given: every request)."""

    model_config = ConfigDict(json_schema_extra=cel(
        ("has(self.dailyUSD) || has(self.monthlyUSD)", "a budget needs dailyUSD, monthlyUSD or both"),
    ))

    team: str | None = Field(default=None, min_length=1, max_length=128, description="Requests of this team.")
    feature: str | None = Field(default=None, min_length=1, max_length=128, description="Requests of this feature.")
    api_key: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="Requests made with the API key of this `name` in the router's API keys file.",
    )
    daily_usd: float | None = Field(default=None, ge=0, le=1e9, alias="dailyUSD", description="USD per UTC day.")
    monthly_usd: float | None = Field(
        default=None, ge=0, le=1e9, alias="monthlyUSD", description="USD per UTC calendar month."
    )
    on_exceed: Literal["downgrade", "reject"] = Field(
        default="downgrade",
        description="downgrade: to the cheapest tier that fits (x-tiered-budget: downgraded); reject: 429.",
    )


class BudgetSettings(Spec):
    """How the router enforces `budgets`."""

    local_tiers: Literal["exempt", "priced"] = Field(
        default="exempt", description="Self-hosted tiers: exempt from budgets (where downgrades go) or priced."
    )
    sync_seconds: float = Field(
        default=5, ge=0.5, le=300,
        description="Seconds between router replicas' syncs of the spend ConfigMap: the enforcement lag.",
    )


class TaskBudget(Spec):
    """Per task (`x-tiered-task-id`): tokens and cost summed over its calls."""

    model_config = ConfigDict(json_schema_extra=cel(
        ("has(self.maxTokens) || has(self.maxUSD)", "a task budget needs maxTokens, maxUSD or both"),
    ))

    max_tokens: int | None = Field(default=None, ge=1, le=10**12, description="Input + output tokens per task.")
    max_usd: float | None = Field(default=None, ge=0, le=1e9, alias="maxUSD", description="USD per task.")
    on_exceed: Literal["alert", "downgrade", "reject"] = Field(
        default="alert", description="alert (a metric and a log line), downgrade or reject."
    )
    ttl_seconds: int = Field(default=3600, ge=1, le=604800, description="A task idle this long is forgotten.")


Quantity = Annotated[str, Field(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")]


class ResourceList(Spec):
    """Kubernetes quantities per resource; unset ones are left out of the container."""

    cpu: Quantity | None = Field(default=None, description="e.g. 250m or 1.")
    memory: Quantity | None = Field(default=None, description="e.g. 256Mi.")
    ephemeral_storage: Quantity | None = Field(default=None, alias="ephemeral-storage", description="e.g. 1Gi.")


class RouterResources(Spec):
    """Requests and limits of the router container."""

    requests: ResourceList | None = None
    limits: ResourceList | None = None


class ParentRef(Spec):
    """A Gateway (or other parent) the router's HTTPRoute attaches to."""

    name: str = Field(min_length=1, max_length=253, description="Parent name, e.g. the Gateway.")
    namespace: Name | None = Field(default=None, description="Parent namespace; default: the policy's.")
    section_name: Name | None = Field(default=None, description="Listener name on the Gateway.")


class HTTPRouteSpec(Spec):
    """A Gateway API HTTPRoute in front of the router (gateway.networking.k8s.io/v1)."""

    parent_refs: list[ParentRef] = Field(min_length=1, max_length=32, description="Gateways to attach to.")
    hostnames: list[Annotated[str, Field(min_length=1, max_length=253)]] | None = Field(
        default=None, max_length=16, description="Host names the route answers for; default: all of the parent's."
    )


class RouterDeployment(Spec):
    """The router Deployment the operator runs for this policy."""

    replicas: int = Field(default=2, ge=1, le=100)
    image: str | None = Field(default=None, max_length=512, description="Router image; default: the operator's.")
    api_keys_secret_ref: Name | None = Field(
        default=None, description="Secret with the router's API keys file under the key `keys.yaml`."
    )
    resources: RouterResources | None = Field(
        default=None, description="Router container resources; default requests 250m/256Mi, limit 512Mi."
    )
    http_route: HTTPRouteSpec | None = Field(
        default=None, description="Also create an HTTPRoute to the router's Service."
    )


class RoutingPolicySpec(Spec):
    """How requests to one OpenAI-compatible endpoint are spread over tiers."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.default in " + TIER_NAMES, "default must name one of the tiers"),
            ("!has(self.baseline) || self.baseline in " + TIER_NAMES, "baseline must name one of the tiers"),
            ("self.tiers.all(t, self.tiers.exists_one(u, u.name == t.name))", "tier names must be unique"),
            (
                "self.tiers.all(t, t.name != 'auto')",
                "no tier may be named 'auto': model: auto asks the router to choose by rules",
            ),
            (
                "!has(self.rules) || self.rules.all(r, r.tier in " + TIER_NAMES + ")",
                "every rule's tier must name one of the tiers",
            ),
            (
                "self.tiers.all(t, !has(t.fallback) || t.fallback.all(f, f in " + TIER_NAMES + "))",
                "every fallback must name one of the tiers",
            ),
            (
                "!has(self.burst) || (self.burst.from in " + TIER_NAMES + " && self.burst.to in "
                + TIER_NAMES + ")",
                "burst.from and burst.to must name tiers",
            ),
            (
                "!has(self.escalation) || (self.escalation.from in " + TIER_NAMES
                + " && self.escalation.to in " + TIER_NAMES + ")",
                "escalation.from and escalation.to must name tiers",
            ),
            (
                "!has(self.burst) || self.tiers.exists(t, t.name == self.burst.from && has(t.tierRef))",
                "burst.from must be a local tier (tierRef): only InferenceTiers report the GPU signal burst needs",
            ),
            (
                "size(self.privacy.privateTeams) == 0 || self.tiers.exists(t, has(t.tierRef))",
                "privacy.privateTeams needs a local tier (tierRef): private traffic never leaves the cluster",
            ),
        )
    )

    tiers: list[PolicyTier] = Field(min_length=1, max_length=32)
    default: Name = Field(description="Tier for `model: auto` requests no rule matched.")
    baseline: Name | None = Field(default=None, description="Tier savings are measured against.")
    rules: list[Rule] = Field(default_factory=list, max_length=256)
    escalation: Escalation | None = None
    burst: Burst | None = None
    privacy: Privacy = Field(default_factory=Privacy)
    attribution: Attribution | None = None
    cache: Cache | None = None
    budgets: list[Budget] = Field(default_factory=list, max_length=256)
    budget_settings: BudgetSettings | None = None
    task_budget: TaskBudget | None = None
    router: RouterDeployment = Field(default_factory=RouterDeployment)

    def tier(self, name: str) -> PolicyTier:
        return next(t for t in self.tiers if t.name == name)


# ---------------------------------------------------------------------------------------------------------
# Objects


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)


class _Object(BaseModel):
    """A whole custom resource as read from the API or a file; status is the operator's, not parsed."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    metadata: ObjectMeta


class InferenceTier(_Object):
    kind: Literal["InferenceTier"] = "InferenceTier"
    spec: InferenceTierSpec

    NAME_RULES: ClassVar[list[dict[str, str]]] = TIER_NAME_RULES


class RoutingPolicy(_Object):
    kind: Literal["RoutingPolicy"] = "RoutingPolicy"
    spec: RoutingPolicySpec

    NAME_RULES: ClassVar[list[dict[str, str]]] = POLICY_NAME_RULES


def gpus_per_replica_value(spec: AcceleratorSpec) -> float | None:
    """The explicit GPUs per replica, or None for 'auto'."""
    if spec.gpus_per_replica == "auto":
        return None  # ints and numeric strings both parse as floats below
    value = float(spec.gpus_per_replica)
    return value if math.isfinite(value) else None
