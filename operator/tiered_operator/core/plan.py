"""Capacity planning: how much memory a replica needs and how replicas map onto GPUs (or CPU nodes).

Memory per replica = weights + KV-cache reserve + runtime overhead:
- weights: parameters × bits / 8 bytes (16 bits → 2 B, 8 → 1 B, 4 → 0.5 B per parameter);
- KV cache: room for `KV_SEQUENCES` full-length sequences at ~128 KiB per token for an 8B model, scaled by
  √(parameters / 8B) — close to Llama-3 (GQA) and SmolLM2 layouts and conservative for others;
- runtime: CUDA context, activations and allocator slack: 1.5 GiB + 10% of the weights.
A GPU offers `memoryUtilization` of its memory. When a replica needs at most half of that, several share
one GPU (fractional `num_gpus`); when it needs more than one GPU, it gets a power-of-two tensor-parallel
group of up to `MAX_GPUS_PER_NODE`. A CPU replica is one pod on one node, so it may ask for at most
`CPU_REPLICA_MAX_GIB` (what a large memory-optimised CPU node offers to pods, e.g. a 64-vCPU / 512 GiB
AWS r7i.16xlarge or GCP n2-highmem-64, less system reservations). A spec that cannot fit raises
`PlanError` with the numbers.

Pure: no I/O.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from tiered_operator.api.model import InferenceTierSpec, gpus_per_replica_value

GPU_MEMORY_GIB = {"H100": 80.0, "H200": 141.0, "B200": 192.0}
MAX_GPUS_PER_NODE = 8
MAX_REPLICAS_PER_GPU = 4
KV_SEQUENCES = 4
KV_KIB_PER_TOKEN_8B = 128.0
RUNTIME_BASE_GIB = 1.5
RUNTIME_SHARE_OF_WEIGHTS = 0.10
GIB = 1024**3
CPU_REPLICA_MAX_GIB = 480.0


class PlanError(ValueError):
    """The spec cannot be placed; the message says why, with numbers, and what to change."""


class CapacityPlan(BaseModel):
    """Where replicas go. For CPU tiers the GPU fields are 0 and `cpus_per_replica` is set."""

    model_config = ConfigDict(frozen=True)

    weights_gib: float
    kv_cache_gib: float
    overhead_gib: float
    replica_gib: float
    device_gib: float
    replicas_per_gpu: int
    gpus_per_replica: float
    tensor_parallel_size: int
    engine_memory_utilization: float
    cpus_per_replica: int = 0

    @property
    def on_gpu(self) -> bool:
        return self.gpus_per_replica > 0

    def worker_gpus(self, replicas: int) -> int:
        """Whole GPUs needed for `replicas` replicas."""
        if not self.on_gpu:
            return 0
        if self.replicas_per_gpu > 1:
            return math.ceil(replicas / self.replicas_per_gpu)
        return replicas * self.tensor_parallel_size


def _round(value: float) -> float:
    return round(value, 2)


def replica_memory_gib(spec: InferenceTierSpec) -> tuple[float, float, float]:
    """(weights, KV-cache reserve, runtime overhead) in GiB for one replica."""
    params = spec.model.parameters_billions
    weights = params * 1e9 * spec.model.bits / 8 / GIB
    kv_per_token_kib = KV_KIB_PER_TOKEN_8B * math.sqrt(params / 8)
    kv = kv_per_token_kib * 1024 * spec.model.max_model_len * KV_SEQUENCES / GIB
    overhead = RUNTIME_BASE_GIB + RUNTIME_SHARE_OF_WEIGHTS * weights
    return weights, kv, overhead


def _quantize_hint(spec: InferenceTierSpec, usable: float) -> str:
    if spec.model.bits <= 4:
        return "use a larger accelerator or a smaller model"
    at_4_bits = spec.model_copy(update={"model": spec.model.model_copy(update={"bits": 4})})
    total_4 = sum(replica_memory_gib(at_4_bits))
    return f"quantize to 4 bits (~{total_4:.0f} GiB)" if total_4 <= usable else "use a smaller model"


def plan_capacity(spec: InferenceTierSpec) -> CapacityPlan:
    """Plan one tier. Raises PlanError when the spec cannot be placed."""
    weights, kv, overhead = replica_memory_gib(spec)
    need = weights + kv + overhead
    model = spec.model
    label = f"{model.parameters} at {model.bits} bits"
    accelerator = spec.accelerator

    if accelerator.type == "CPU":
        if need > CPU_REPLICA_MAX_GIB:
            raise PlanError(
                f"{label} needs ~{need:.0f} GiB per replica (weights {weights:.0f}, KV cache {kv:.0f} at "
                f"maxModelLen {model.max_model_len}, runtime {overhead:.0f}); a CPU replica runs in one pod on "
                f"one node, at most {CPU_REPLICA_MAX_GIB:.0f} GiB; lower maxModelLen, "
                f"{_quantize_hint(spec, CPU_REPLICA_MAX_GIB)}, or run it on GPUs"
            )
        return CapacityPlan(
            weights_gib=_round(weights),
            kv_cache_gib=_round(kv),
            overhead_gib=_round(overhead),
            replica_gib=_round(need),
            device_gib=0,
            replicas_per_gpu=0,
            gpus_per_replica=0,
            tensor_parallel_size=0,
            engine_memory_utilization=0,
            cpus_per_replica=accelerator.cpus_per_replica,
        )

    device = GPU_MEMORY_GIB[accelerator.type]
    usable = device * accelerator.memory_utilization
    requested = gpus_per_replica_value(accelerator)
    where = f"one {accelerator.type} offers {usable:.0f} GiB ({accelerator.memory_utilization:.0%} of {device:.0f})"

    if requested is None:
        if need <= usable:
            per_gpu = min(MAX_REPLICAS_PER_GPU, int(usable // need))
            gpus = 1 / per_gpu
        else:
            tensor_parallel = 2 ** math.ceil(math.log2(need / usable))
            if tensor_parallel > MAX_GPUS_PER_NODE:
                raise PlanError(
                    f"{label} needs ~{need:.0f} GiB per replica; {where}, so it needs "
                    f"{tensor_parallel} GPUs, more than one node's {MAX_GPUS_PER_NODE}; "
                    f"{_quantize_hint(spec, usable * MAX_GPUS_PER_NODE)}"
                )
            per_gpu, gpus = 1, float(tensor_parallel)
    elif requested < 1:
        if need > usable * requested:
            raise PlanError(
                f"{label} needs ~{need:.0f} GiB per replica; gpusPerReplica {requested:g} gives "
                f"{usable * requested:.0f} GiB of {accelerator.type}; raise gpusPerReplica to at least "
                f"{_fraction_that_fits(need, usable)} or {_quantize_hint(spec, usable * requested)}"
            )
        per_gpu = int(1 / requested)
        gpus = 1 / per_gpu
    else:
        tensor_parallel = int(requested)
        if tensor_parallel != requested or tensor_parallel & (tensor_parallel - 1):
            raise PlanError(
                f"gpusPerReplica {requested:g} must be a fraction below 1 or a power of two (1, 2, 4, 8) "
                "for tensor parallelism"
            )
        if tensor_parallel > MAX_GPUS_PER_NODE:
            raise PlanError(
                f"gpusPerReplica {tensor_parallel} exceeds one node's {MAX_GPUS_PER_NODE} GPUs"
            )
        if need > usable * tensor_parallel:
            minimum = 2 ** math.ceil(math.log2(need / usable))
            raise PlanError(
                f"{label} needs ~{need:.0f} GiB per replica; {where}; "
                f"set gpusPerReplica ≥ {minimum} or {_quantize_hint(spec, usable * tensor_parallel)}"
            )
        per_gpu, gpus = 1, float(tensor_parallel)

    return CapacityPlan(
        weights_gib=_round(weights),
        kv_cache_gib=_round(kv),
        overhead_gib=_round(overhead),
        replica_gib=_round(need),
        device_gib=device,
        replicas_per_gpu=per_gpu,
        gpus_per_replica=round(gpus, 4),
        tensor_parallel_size=max(1, int(gpus)),
        # vLLM's gpu_memory_utilization is a share of the whole GPU, so packed replicas split it.
        engine_memory_utilization=round(accelerator.memory_utilization / per_gpu, 4),
    )


def _fraction_that_fits(need: float, usable: float) -> str:
    for per_gpu in range(MAX_REPLICAS_PER_GPU, 0, -1):
        if need <= usable / per_gpu:
            return f"{1 / per_gpu:.4g}"
    return "1"
