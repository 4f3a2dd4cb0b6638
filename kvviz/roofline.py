"""Hardware limits for the roofline view: a device's peak memory bandwidth and compute, and bytes moved per step.

Decoding one token reads every weight once and every cached key and value once, and does little arithmetic with
them, so small-batch decode is bound by memory bandwidth (or, for small models on big GPUs, by the CPU launching
kernels). Comparing the bytes a step must move with its measured time says how close a path comes to the limit.

- ``device_peak(device, dtype)``: peak bandwidth and compute, from a small table of known GPUs (vendor spec
  sheets, dense tensor-core figures for 16-bit types) or measured here: a large copy for bandwidth (on the CPU
  it is always measured, as no table can know the memory system) and a large matmul for compute.
- ``weight_bytes_read`` and ``step_bytes``: the bytes one forward call must move, counting weights and the K/V it
  reads and writes; activations are left out, so the figures are slight underestimates.

What it does not do: time a model (``bench.py``) or draw (``charts/speed.py``).
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from kvviz.bench_results import DevicePeak
from kvviz.kv_formula import ModelSpec, Precision, kv_bytes_per_token, kv_cache_bytes
from kvviz.timing import synchronize

# Bytes of the buffer copied to measure bandwidth: far larger than any CPU's last-level cache, so the copy streams
# from main memory rather than from cache.
COPY_BYTES = 256 * 2**20
MATMUL_SIZE_CPU = 1024
MATMUL_SIZE_GPU = 8192


@dataclass(frozen=True)
class KnownGpu:
    """Spec-sheet peaks: memory bandwidth (bytes/s) and dense bf16/fp16 tensor-core FLOP/s."""

    match: tuple[str, ...]  # all must be words of the CUDA device name (case-insensitive)
    label: str
    memory_bytes_per_s: float
    flops_16bit: float


# Order matters: the first entry whose words all occur in the device name wins (e.g. "H100 NVL" before "H100").
# Whole words, so that "L4" does not match an "L40".
KNOWN_GPUS: tuple[KnownGpu, ...] = (
    KnownGpu(("h200",), "NVIDIA H200", 4.8e12, 989e12),
    KnownGpu(("h100", "nvl"), "NVIDIA H100 NVL", 3.9e12, 835e12),
    KnownGpu(("h100", "pcie"), "NVIDIA H100 PCIe", 2.0e12, 756e12),
    KnownGpu(("h100",), "NVIDIA H100 SXM", 3.35e12, 989e12),
    KnownGpu(("a100", "80gb", "pcie"), "NVIDIA A100 80GB PCIe", 1.935e12, 312e12),
    KnownGpu(("a100", "80gb"), "NVIDIA A100 80GB SXM", 2.039e12, 312e12),
    KnownGpu(("a100",), "NVIDIA A100 40GB", 1.555e12, 312e12),
    KnownGpu(("l40s",), "NVIDIA L40S", 0.864e12, 362e12),
    KnownGpu(("l4",), "NVIDIA L4", 0.300e12, 121e12),
    KnownGpu(("4090",), "NVIDIA GeForce RTX 4090", 1.008e12, 165e12),
    KnownGpu(("v100",), "NVIDIA V100", 0.900e12, 125e12),
    KnownGpu(("t4",), "NVIDIA T4", 0.320e12, 65e12),
)


def device_name(device: torch.device | str) -> str:
    """A human name for the device: the GPU model, or the CPU model from /proc/cpuinfo."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def known_gpu(name: str) -> KnownGpu | None:
    """The table entry for a CUDA device name such as "NVIDIA A100-SXM4-80GB", or None."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    return next((gpu for gpu in KNOWN_GPUS if all(word in words for word in gpu.match)), None)


def measure_memory_bandwidth(device: torch.device | str, nbytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Bytes per second of the best of ``repeats`` large copies (each reads and writes ``nbytes``)."""
    device = torch.device(device)
    source = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    target = torch.empty_like(source)
    target.copy_(source)  # first touch: page faults and allocation are not bandwidth
    return 2.0 * source.nbytes / _best_seconds(device, lambda: target.copy_(source), repeats)


def measure_matmul_flops(device: torch.device | str, dtype: torch.dtype, repeats: int = 3) -> float:
    """FLOP/s of the best of ``repeats`` square matmuls in ``dtype`` (a practical compute roof, not the spec)."""
    device = torch.device(device)
    size = MATMUL_SIZE_GPU if device.type == "cuda" else MATMUL_SIZE_CPU
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    torch.matmul(a, b)
    return 2.0 * size**3 / _best_seconds(device, lambda: torch.matmul(a, b), repeats)


def _best_seconds(device: torch.device, work: Callable[[], object], repeats: int) -> float:
    """The shortest of ``repeats`` device-synchronised timings of ``work()``."""
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        work()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def device_peak(device: torch.device | str, dtype: torch.dtype) -> DevicePeak:
    """Table figures for a known GPU (16-bit compute only), measured figures otherwise; measured once per process
    for each device and dtype (the hardware does not change between two benchmarks)."""
    return _device_peak(str(torch.device(device)), dtype)


@functools.lru_cache(maxsize=8)
def _device_peak(device_text: str, dtype: torch.dtype) -> DevicePeak:
    device = torch.device(device_text)
    gpu = known_gpu(device_name(device)) if device.type == "cuda" else None
    if gpu is not None:
        memory, memory_source = gpu.memory_bytes_per_s, f"spec sheet: {gpu.label}"
    else:
        memory = measure_memory_bandwidth(device)
        memory_source = f"measured: best of 5 copies of {COPY_BYTES // 2**20} MiB on {device.type}"
    if gpu is not None and dtype in (torch.bfloat16, torch.float16):
        flops, flops_source = gpu.flops_16bit, f"spec sheet: {gpu.label}, dense 16-bit tensor cores"
    else:
        size = MATMUL_SIZE_GPU if device.type == "cuda" else MATMUL_SIZE_CPU
        flops = measure_matmul_flops(device, dtype)
        flops_source = f"measured: best of 3 {size}×{size} {str(dtype).removeprefix('torch.')} matmuls"
    return DevicePeak(memory, memory_source, flops, flops_source)


def weight_bytes_read(model: Any) -> int:
    """Bytes of weights one forward call reads: every parameter, except the embedding table when it is not tied
    to the LM head (a lookup reads only the rows of the tokens fed, which is negligible)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embeddings = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embeddings.weight.data_ptr()
    if not tied:
        total -= embeddings.weight.numel() * embeddings.weight.element_size()
    return total


def step_bytes(weights: int, spec: ModelSpec | None, precision: Precision, attended: int, new_tokens: int) -> float:
    """Bytes one call must move: all weights, the K/V each layer reads and the new K/V written.

    Each layer reads the K/V of ``attended`` positions, capped at its own window (``kvviz.kv_formula.kv_cache_bytes``):
    hybrid models mix layers that read everything with layers that read their window. ``spec`` None is a call
    that keeps no cache (the naive path): it moves the weights only.
    """
    if spec is None:
        return float(weights)
    read = kv_cache_bytes(spec, attended, 1, precision)
    written = new_tokens * kv_bytes_per_token(spec, precision)
    return float(weights + read + written)
