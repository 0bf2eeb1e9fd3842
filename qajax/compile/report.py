"""`qajax compile`: the real train and eval steps of a config, compiled ahead of time for an accelerator that
is not here, sized (memory per device, does it fit) and costed (FLOPs, bytes, the roofline bound on MFU).

The roofline bound of a step is

    roofline_step_seconds = max(xla_flops / peak_flops, xla_bytes / memory_bandwidth)   (per device)
    roofline_mfu          = model_flops per device / (roofline_step_seconds * peak_flops)

so a step that moves more bytes than its FLOPs can hide is bounded below 1 by memory. TPU compiles give XLA's
own cost analysis; deviceless GPU compiles give none, so there the bytes are estimated from the optimized
HLO (`qajax.compile.hlo`) and the FLOPs taken as the model's matmul count.
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax

from qajax.compile import hlo
from qajax.compile.targets import Target
from qajax.config import apply_overrides
from qajax.errors import ConfigError
from qajax.models.flops import train_flops
from qajax.run import prepare_for_shapes
from qajax.train.evaluator import make_eval_predict

MEMORY_KEYS = ("arguments", "outputs", "temporaries", "total")


@dataclasses.dataclass
class Compiled:
    """One compiled program's figures."""

    memory: dict  # MEMORY_KEYS -> bytes per device
    flops: float | None  # per device, XLA's cost analysis (None where it gives none)
    bytes: float | None
    hlo_text: str
    seconds: float
    refused: bool = False  # the compiler itself refused it for memory (memory holds what it said it needs)


def compile_config(config, target: Target, *, devices=None, eval_step: bool = True) -> dict:
    """The report of one config on one target (see the module docstring and `qajax compile --help`)."""
    devices = target.devices() if devices is None else devices
    _with_attention_platform(config, target)
    prepared, batch_shapes = prepare_for_shapes(config, devices)
    parallel, t = prepared.parallel, config.train
    started = time.perf_counter()
    train = compile_train_step(prepared, batch_shapes)
    evaluation = _compile_eval(prepared, batch_shapes) if eval_step and not train.refused else None
    compile_seconds = time.perf_counter() - started

    chip = target.per_device(len(devices))
    encoder = prepared.task.spec.encoder
    peak = chip.fp32_flops if encoder.dtype == "float32" else chip.bf16_flops
    num_devices = parallel.num_batch_shards
    seq_len = prepared.task.tokens_per_example
    model_flops = train_flops(encoder, t.batch_size, seq_len, head_outputs=2)
    stats = hlo.program_stats(train.hlo_text)
    # XLA counts no FLOPs inside custom calls (the fused attention kernels): never less than the model's.
    flops = max(train.flops or 0.0, model_flops / num_devices)
    bytes_moved = train.bytes if train.bytes else stats.bytes_accessed
    step_seconds = max(flops / peak, bytes_moved / chip.memory_bandwidth)
    report = {
        "target": target.name,
        "device_kind": getattr(devices[0], "device_kind", target.chip.name),
        "devices": len(devices),
        "processes": len({getattr(d, "process_index", 0) for d in devices}),
        "mesh": dict(parallel.mesh.shape) if parallel.mesh is not None else {"pmap": num_devices},
        "batch_size": t.batch_size,
        "examples_per_device": t.batch_size // num_devices,
        "seq_len": seq_len,
        "dtype": encoder.dtype,
        "per_device_memory_bytes": train.memory,
        "hbm_bytes_per_device": chip.hbm_bytes,
        "fits": not train.refused and train.memory["total"] <= chip.hbm_bytes,
        "model_flops_per_step": model_flops,
        "xla_flops_per_step": train.flops,
        "xla_bytes_per_step": train.bytes,
        "hlo_bytes_estimate_per_step": stats.bytes_accessed,
        "peak_flops": peak,
        "memory_bandwidth": chip.memory_bandwidth,
        "roofline_step_seconds": step_seconds,
        "roofline_mfu": (model_flops / num_devices) / (step_seconds * peak),
        "roofline_bound": "memory" if bytes_moved / chip.memory_bandwidth > flops / peak else "compute",
        "cost_source": "xla" if train.bytes else "hlo-estimate",
        "attention_kernel": hlo.attention_kernel(train.hlo_text),
        "collectives": {k: stats.collectives.get(k, {"count": 0, "bytes": 0}) for k in hlo.COLLECTIVES.values()},
        "compile_seconds": compile_seconds,
    }
    if evaluation is not None:
        report["eval_step"] = {
            "per_device_memory_bytes": evaluation.memory,
            "batch_size": t.eval_batch_size,
            "attention_kernel": hlo.attention_kernel(evaluation.hlo_text),
        }
    return report


def _with_attention_platform(config, target: Target) -> None:
    """`model.attention_implementation=auto` picks the kernel of the platform compiled for, not this host's."""
    with config.unlocked():
        config.model.attention_platform = "gpu" if target.platform == "cuda" else target.platform


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    arguments, outputs = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
    temporaries, aliased = int(m.temp_size_in_bytes), int(m.alias_size_in_bytes)
    total = arguments + outputs - aliased + temporaries
    return dict(zip(MEMORY_KEYS, (arguments, outputs, temporaries, total), strict=True))


def _cost(compiled) -> tuple[float | None, float | None]:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - deviceless GPU compiles raise instead of returning nothing
        return None, None
    cost = cost[0] if isinstance(cost, list) else cost
    if not cost:
        return None, None
    flops, moved = cost.get("flops"), cost.get("bytes accessed")
    return (float(flops) if flops else None), (float(moved) if moved else None)


# The TPU compiler refuses a program whose temporaries exceed the device's memory, saying how much it needs.
_OUT_OF_MEMORY = re.compile(r"memory required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _finish(lowered, started: float) -> Compiled:
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        match = _OUT_OF_MEMORY.search(str(e))
        if not match:
            raise
        temporaries = int(float(match.group(1)) * _UNITS[match.group(2)])
        memory = dict(zip(MEMORY_KEYS, (0, 0, temporaries, temporaries), strict=True))  # at least this much
        return Compiled(memory, None, None, "", time.perf_counter() - started, refused=True)
    flops, moved = _cost(compiled)
    return Compiled(_memory(compiled), flops, moved, compiled.as_text(), time.perf_counter() - started)


def compile_train_step(prepared, batch_shapes) -> Compiled:
    parallel, t = prepared.parallel, prepared.config.train
    started = time.perf_counter()
    if parallel.mode == "pmap":
        raise ConfigError("qajax compile builds mesh-mode steps; set parallel.mode=mesh (pmap runs the same program)")
    step = prepared.compiled_step()
    batch = batch_shapes(t.batch_size)
    if t.accumulation_steps > 1:
        k = t.accumulation_steps
        batch = {key: jax.ShapeDtypeStruct((k, s.shape[0] // k, *s.shape[1:]), s.dtype) for key, s in batch.items()}
    sharding = parallel.batch_sharding()
    batch = {key: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for key, s in batch.items()}
    return _finish(step.lower(prepared.abstract_state, batch), started)


def _compile_eval(prepared, batch_shapes) -> Compiled:
    parallel, task = prepared.parallel, prepared.task
    started = time.perf_counter()
    params = prepared.abstract_state.params
    shardings = parallel.param_shardings(prepared.abstract_state)
    predict = parallel.compile_predict(make_eval_predict(task, with_loss=False), shardings)
    sharding = parallel.batch_sharding(1)
    batch = batch_shapes(prepared.config.train.eval_batch_size)
    batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for k, s in batch.items() if k in
             ("input_ids", "attention_mask", "token_type_ids")}  # fmt: skip
    return _finish(predict.lower(params, batch), started)


def max_batch(config, target: Target, *, start: int = 1, limit: int = 4096) -> dict:
    """The largest examples-per-device that fits, by doubling then bisection over full train-step compiles
    (eval left out); returns {"max_examples_per_device", "reports": per tried size -> total bytes, fits}."""
    devices = target.devices()
    tried: dict[int, dict] = {}

    def fits(per_device: int) -> bool:
        sized = apply_overrides(config.copy_and_resolve_references(), [f"train.per_device_batch_size={per_device}"])
        report = compile_config(sized, target, devices=devices, eval_step=False)
        tried[per_device] = {"total": report["per_device_memory_bytes"]["total"], "fits": report["fits"]}
        return report["fits"]

    if not fits(start):
        return {"max_examples_per_device": 0, "tried": tried}
    low, high = start, start * 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return {"max_examples_per_device": low, "tried": tried}


def text(report: dict) -> str:
    """The report as lines for a person."""
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    memory = report["per_device_memory_bytes"]
    lines = [
        f"target {report['target']} ({report['device_kind']}): {report['devices']} devices, "
        f"{report['processes']} hosts, mesh {report['mesh']}",
        f"step: batch {report['batch_size']} ({report['examples_per_device']} per device) x {report['seq_len']} "
        f"tokens, {report['dtype']}",
        f"memory per device: arguments {gib(memory['arguments'])}, outputs {gib(memory['outputs'])}, temporaries "
        f"{gib(memory['temporaries'])}, total {gib(memory['total'])} of {gib(report['hbm_bytes_per_device'])}: "
        + ("fits" if report["fits"] else "DOES NOT FIT"),
        f"model FLOPs/step {report['model_flops_per_step']:.3e}; per device: XLA FLOPs "
        f"{_maybe(report['xla_flops_per_step'])}, bytes {_maybe(report['xla_bytes_per_step'])} "
        f"(HLO estimate {report['hlo_bytes_estimate_per_step']:.3e})",
        f"roofline: {report['roofline_step_seconds'] * 1e3:.1f} ms/step, MFU <= {report['roofline_mfu']:.2f} "
        f"({report['roofline_bound']}-bound; peak {report['peak_flops']:.3g} FLOP/s, "
        f"{report['memory_bandwidth']:.3g} B/s)",
        f"attention kernel: {report['attention_kernel']}; collectives: "
        + ", ".join(f"{k} {v['count']} ({v['bytes'] / 2**20:.1f} MiB)" for k, v in report["collectives"].items()),
        f"compiled in {report['compile_seconds']:.1f} s",
    ]
    return "\n".join(lines)


def max_batch_text(result: dict, target: Target) -> str:
    tried = ", ".join(
        f"{n}: {v['total'] / 2**30:.2f} GiB {'fits' if v['fits'] else 'no'}" for n, v in sorted(result["tried"].items())
    )
    return f"{target.name}: at most {result['max_examples_per_device']} examples per device fit ({tried})"


def _maybe(value) -> str:
    return "n/a" if value is None else f"{value:.3e}"
