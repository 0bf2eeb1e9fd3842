"""Accelerators to compile for without having them: TPU topologies (libtpu, the `tpu` extra) and GPU target
descriptions (the `cuda` extra), each with its public per-chip figures for the roofline.

    target = resolve("v5e:2x2")      # or "h100", "a100", "v5p:4x4x4", or a JSON file (see `from_file`)
    devices = target.devices()       # device objects of the absent hardware, usable in a Mesh
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from importlib import resources
from pathlib import Path

from qajax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip's data-sheet figures: dense bf16 matmul FLOP/s, FP32 matmul FLOP/s as JAX's default precision
    runs it (TPU: bf16 passes, so the bf16 peak; GPU: TF32 tensor cores), HBM bytes and bytes/s."""

    name: str
    bf16_flops: float
    fp32_flops: float
    hbm_bytes: int
    memory_bandwidth: float


GIB = 2**30
# Google Cloud's TPU system-architecture pages; NVIDIA's H100 SXM and A100 SXM4 80GB data sheets (dense, no sparsity).
TPU_CHIPS = {
    "v4": Chip("TPU v4", 275e12, 275e12, 32 * GIB, 1228e9),
    "v5e": Chip("TPU v5e", 197e12, 197e12, 16 * GIB, 819e9),
    "v5p": Chip("TPU v5p", 459e12, 459e12, 95 * GIB, 2765e9),
    "v6e": Chip("TPU v6e", 918e12, 918e12, 32 * GIB, 1640e9),
}
GPU_CHIPS = {
    "h100": Chip("NVIDIA H100 SXM 80GB", 989e12, 494e12, 84929347584, 3.35232e12),
    "a100": Chip("NVIDIA A100 SXM4 80GB", 312e12, 156e12, 85198045184, 2.039e12),
}
TPU_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")
EXAMPLES = ("v4:2x2x1", "v5e:2x2", "v5p:2x2x1", "v6e:2x2", "v5p:4x4x4", "v5e:16x16", "h100", "a100", "FILE.json")


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str  # "tpu" | "cuda"
    chip: Chip
    chips: int
    topology: str  # TPU: "2x2"...; GPU: "1x1x1" (hosts x devices per host x ...) as get_topology_desc takes it
    gpu_target_config: str = ""  # GpuTargetConfig text proto (cuda)

    def devices(self) -> list:
        """The target's devices, described by the plugin (nothing runs on them)."""
        quiet_host_for_compiles()
        from jax.experimental import topologies

        if self.platform == "tpu":
            _require("libtpu", "tpu")
            description = topologies.get_topology_desc(topology_name=self.name, platform="tpu")
        else:
            _require("jax_cuda12_plugin", "cuda")
            description = topologies.get_topology_desc(
                platform="cuda", target_config=self.gpu_target_config, topology=self.topology
            )
        return list(description.devices)

    def per_device(self, num_devices: int) -> Chip:
        """A device's share of its chip: TPU v4 shows each of a chip's two TensorCores as a device."""
        share = max(1, num_devices // self.chips)
        c = self.chip
        return Chip(
            c.name, c.bf16_flops / share, c.fp32_flops / share, c.hbm_bytes // share, c.memory_bandwidth / share
        )


def quiet_host_for_compiles() -> None:
    """Before JAX starts: this host only compiles, so its own backend is the CPU (no TPU or GPU runtime to start
    and complain), libtpu may be loaded by several processes at once (it takes a lock file otherwise), and the
    CUDA plugin does not look for a driver."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")


def resolve(name: str) -> Target:
    """A target by name (TPU `GEN:AxB[xC]`, `h100`, `a100`) or a JSON file describing one."""
    match = TPU_NAME.match(name)
    if match:
        generation, shape = match.groups()
        return Target(name, "tpu", TPU_CHIPS[generation], math.prod(int(d) for d in shape.split("x")), shape)
    if name in GPU_CHIPS:
        text = resources.files("qajax.accelerators").joinpath(f"{name}.txtpb").read_text()
        return Target(name, "cuda", GPU_CHIPS[name], 1, "1x1x1", text)
    if Path(name).suffix == ".json" and Path(name).is_file():
        return from_file(Path(name))
    raise ConfigError(
        f"--target {name!r}: unknown target; expected a TPU topology GEN:SHAPE with GEN one of {tuple(TPU_CHIPS)} "
        f"(e.g. {', '.join(EXAMPLES[:6])}), one of {tuple(GPU_CHIPS)}, or a target .json file"
    )


def from_file(path: Path) -> Target:
    """A target from JSON: {"platform": "tpu", "topology": "v5e:4x8"} or {"platform": "cuda",
    "target_config": "my_gpu.txtpb" (relative to the JSON file), "topology": "1x1x1"}, with the chip's
    "bf16_flops", "fp32_flops", "hbm_bytes" and "memory_bandwidth" (bytes/s)."""
    try:
        spec = json.loads(path.read_text())
        chip = Chip(
            spec.get("name", path.stem),
            float(spec["bf16_flops"]),
            float(spec["fp32_flops"]),
            int(spec["hbm_bytes"]),
            float(spec["memory_bandwidth"]),
        )
        platform, topology = spec["platform"], spec["topology"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(
            f"{path}: not a target description ({type(e).__name__}: {e}); see `qajax compile --help`"
        ) from e
    if platform == "tpu":
        match = TPU_NAME.match(topology)
        if not match:
            raise ConfigError(f"{path}: topology {topology!r}: expected GEN:SHAPE such as v5e:4x8")
        chips = math.prod(int(d) for d in match.group(2).split("x"))
        return Target(topology, "tpu", chip, chips, match.group(2))
    if platform == "cuda":
        config_file = path.parent / spec.get("target_config", "")
        if not config_file.is_file():
            raise ConfigError(f"{path}: target_config {str(config_file)!r} is not a file")
        chips = math.prod(int(d) for d in topology.split("x"))
        return Target(str(path), "cuda", chip, chips, topology, config_file.read_text())
    raise ConfigError(f"{path}: platform {platform!r}: expected 'tpu' or 'cuda'")


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"compiling for this target needs {module}: pip install 'qajax[{extra}]' (the wheels that match the "
            "pinned jax)"
        )
