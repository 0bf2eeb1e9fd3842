"""What the device offers and what a step holds on it: peak FLOP/s (the denominator of MFU) and memory."""

from __future__ import annotations

import platform
import time

import jax
import jax.numpy as jnp

# Dense peak FLOP/s per device kind (bf16 tensor cores for GPUs), from the vendors' data sheets.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12, "TPU v5": 459e12}


def describe_device() -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind} x{jax.device_count()} ({platform.processor() or 'cpu'})"


def measure_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large fp32 matmul on the default device: the denominator of MFU on a CPU."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = matmul(a)
    out.block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def device_peak_flops(given: float | None) -> tuple[float, str]:
    if given:
        return given, "given"
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops, f"data sheet ({name})"
    return measure_peak_flops(), "measured fp32 matmul"


def step_memory_bytes(analysis) -> int | None:
    """Memory one step holds on each device at its peak, from XLA's buffer assignment: its inputs (state and batch),
    its temporaries, and the outputs that do not reuse a donated input."""
    if analysis is None:
        return None
    return int(
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes
    )


def peak_memory_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return None
