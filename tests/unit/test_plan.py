"""Capacity planning: table of model sizes × accelerators, and the numbers in every rejection."""

from __future__ import annotations

import pytest
from tiered_operator.api.model import InferenceTierSpec
from tiered_operator.core.plan import PlanError, plan_capacity, replica_memory_gib


def spec(parameters: str, bits: int, quantization: str = "none", accelerator: str = "H100",
         gpus: str = "auto", engine: str = "vllm", max_len: int = 8192) -> InferenceTierSpec:
    return InferenceTierSpec.model_validate({
        "model": {"id": "m", "source": "hf://org/m", "parameters": parameters, "bits": bits,
                  "quantization": quantization, "maxModelLen": max_len},
        "engine": engine,
        "accelerator": {"type": accelerator, "gpusPerReplica": gpus},
    })


def test_weights_follow_parameters_times_bits() -> None:
    for bits, bytes_per_param in ((16, 2), (8, 1), (4, 0.5)):
        weights, _, _ = replica_memory_gib(spec("8B", bits, "none" if bits == 16 else "gptq"))
        assert weights == pytest.approx(8e9 * bytes_per_param / 2**30)


@pytest.mark.parametrize(
    ("parameters", "bits", "quantization", "accelerator", "gpus", "per_gpu", "gpus_per_replica", "tp"),
    [
        ("8B", 4, "awq", "H100", "auto", 4, 0.25, 1),         # ~9.6 GiB: four share an H100 (capped at 4)
        ("8B", 16, "none", "H100", "auto", 3, 0.3333, 1),     # ~22 GiB
        ("14B", 8, "gptq", "B200", "0.333", 3, 0.3333, 1),    # explicit packing
        ("70B", 4, "awq", "H100", "auto", 1, 1.0, 1),         # ~49 GiB: one per GPU
        ("70B", 16, "none", "H100", "auto", 1, 4.0, 4),       # ~157 GiB: tensor-parallel over 4
        ("70B", 16, "none", "B200", "auto", 1, 1.0, 1),       # fits one B200 (173 GiB usable)
        ("70B", 8, "fp8", "H200", "auto", 1, 1.0, 1),
        ("8B", 16, "none", "H100", "2", 1, 2.0, 2),           # explicit tensor parallelism
    ],
)
def test_packing(parameters, bits, quantization, accelerator, gpus, per_gpu, gpus_per_replica, tp) -> None:
    plan = plan_capacity(spec(parameters, bits, quantization, accelerator, gpus))
    assert (plan.replicas_per_gpu, plan.gpus_per_replica, plan.tensor_parallel_size) == (
        per_gpu, gpus_per_replica, tp)
    assert plan.replica_gib <= plan.device_gib * 0.9 * plan.gpus_per_replica + 1e-9


def test_packed_replicas_split_engine_memory() -> None:
    plan = plan_capacity(spec("8B", 4, "awq"))
    assert plan.engine_memory_utilization == pytest.approx(0.9 / 4)
    assert plan.worker_gpus(5) == 2


@pytest.mark.parametrize(
    ("parameters", "bits", "quantization", "gpus", "message"),
    [
        ("70B", 16, "none", "1", "70B at 16 bits needs ~157 GiB per replica; one H100 offers 72 GiB "
         "(90% of 80); set gpusPerReplica ≥ 4 or quantize to 4 bits (~49 GiB)"),
        ("405B", 16, "none", "auto", "405B at 16 bits needs ~860 GiB per replica; one H100 offers 72 GiB "
         "(90% of 80), so it needs 16 GPUs, more than one node's 8; quantize to 4 bits (~237 GiB)"),
        ("70B", 4, "awq", "0.5", "70B at 4 bits needs ~49 GiB per replica; gpusPerReplica 0.5 gives 36 GiB "
         "of H100; raise gpusPerReplica to at least 1 or use a larger accelerator or a smaller model"),
        ("8B", 4, "awq", "3", "gpusPerReplica 3 must be a fraction below 1 or a power of two (1, 2, 4, 8) "
         "for tensor parallelism"),
        ("8B", 4, "awq", "16", "gpusPerReplica 16 exceeds one node's 8 GPUs"),
    ],
)
def test_impossible_specs_say_why_with_numbers(parameters, bits, quantization, gpus, message) -> None:
    with pytest.raises(PlanError) as error:
        plan_capacity(spec(parameters, bits, quantization, gpus=gpus))
    assert str(error.value) == message


def test_cpu_tier_plans_cores_not_gpus() -> None:
    plan = plan_capacity(spec("135M", 4, "gguf", "CPU", engine="llama-cpp", max_len=2048))
    assert not plan.on_gpu
    assert plan.cpus_per_replica == 2
    assert plan.worker_gpus(4) == 0
    assert plan.replica_gib < 2


def test_cpu_tiers_fit_one_large_cpu_node() -> None:
    plan = plan_capacity(spec("405B", 4, "gguf", "CPU", engine="llama-cpp"))
    assert plan.replica_gib == pytest.approx(237.41)  # a 4-bit 405B fits one 512 GiB node
    with pytest.raises(PlanError) as error:
        plan_capacity(spec("405B", 8, "gguf", "CPU", engine="llama-cpp", max_len=131072))
    assert str(error.value) == (
        "405B at 8 bits needs ~872 GiB per replica (weights 377, KV cache 455 at maxModelLen 131072, runtime 39); "
        "a CPU replica runs in one pod on one node, at most 480 GiB; lower maxModelLen, use a smaller model, "
        "or run it on GPUs")
    with pytest.raises(PlanError, match=r"needs ~860 GiB per replica .* quantize to 4 bits \(~237 GiB\)"):
        plan_capacity(spec("405B", 16, "gguf", "CPU", engine="llama-cpp"))
