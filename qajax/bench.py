"""`qajax bench`: train-step throughput side by side with the references, compile time, memory and MFU.

Every entry trains the same shape on the same batch in the same process; a speed claim is the ratio of
step times measured here, never an absolute number from another run. Entries:
  qajax       our jitted step (the engine's `make_train_step`, AdamW, dropout on)
  hf-flax     transformers' FlaxBertForQuestionAnswering with an optax AdamW step under jax.jit
  hf-pytorch  transformers' BertForQuestionAnswering, eager forward/backward/AdamW step
"""

from __future__ import annotations

import dataclasses
import json
import platform
import resource
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from qajax import host_memory
from qajax.errors import ConfigError
from qajax.models.config import EncoderConfig
from qajax.models.flops import train_flops
from qajax.models.heads import build_model, init_params
from qajax.tasks.span import span_loss
from qajax.train.parallel import PMAP_AXIS, Parallel
from qajax.train.state import TrainState
from qajax.train.step import make_train_step

# Dense peak FLOP/s per device kind (bf16 tensor cores for GPUs), from the vendors' data sheets.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12, "TPU v5": 459e12}


@dataclasses.dataclass(frozen=True)
class Shape:
    num_layers: int = 6  # MiniLM-L6-H384: the reference shape of the brief
    hidden_size: int = 384
    num_heads: int = 12
    intermediate_size: int = 1536
    vocab_size: int = 30522
    seq_len: int = 128
    batch_size: int = 16
    dtype: str = "float32"

    def encoder(self, **options) -> EncoderConfig:
        return EncoderConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            dtype=self.dtype,
            **options,
        )

    def hf_config(self):
        import transformers

        return transformers.BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
        )

    def train_flops(self) -> float:
        """Model FLOPs of one train step (`qajax.models.flops.train_flops`)."""
        return train_flops(self.encoder(), self.batch_size, self.seq_len)


def synthetic_batch(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, t = shape.batch_size, shape.seq_len
    return {
        "input_ids": rng.integers(min(1000, shape.vocab_size // 2), shape.vocab_size, (b, t)).astype(np.int32),
        "attention_mask": np.ones((b, t), np.int32),
        "token_type_ids": (np.arange(t)[None, :] >= t // 4).astype(np.int32).repeat(b, 0),
        "start_positions": rng.integers(0, t, b).astype(np.int32),
        "end_positions": rng.integers(0, t, b).astype(np.int32),
    }


# Technique entries: the config changes that switch each one on (sections of `config.techniques`).
TECHNIQUE_ENTRIES = {
    "sda": {"sda": dict(enabled=True, window=3)},
    "sdv-k3": {"sdv": dict(enabled=True, window=3)},
    "sdv-k5": {"sdv": dict(enabled=True, window=5)},
    "freeze-top2": {"freeze": dict(enabled=True, num_trainable_layers=2)},
    "lora-r8": {"lora": dict(enabled=True, rank=8)},
    "prompt": {"prompt": dict(enabled=True)},
    "smart-t1": {"smart": dict(enabled=True, steps=1)},
}


def span_qa_task(shape: Shape, **encoder_options):
    """Our span-QA task on `shape`, freshly initialised, and a synthetic batch for it."""
    from qajax.models.spec import ModelSpec
    from qajax.tasks.span import span_task

    spec = ModelSpec(shape.encoder(**encoder_options), "qa")
    params = jax.device_get(init_params(spec.build(), jax.random.key(0)))
    task = span_task(spec, params, start_weight=1.0, end_weight=1.0, train_arrays={}, eval_arrays=None,
                     evaluate=None, tokens_per_example=shape.seq_len)  # fmt: skip
    return task, synthetic_batch(shape)


def multitask_task(shape: Shape, pcgrad: bool = True):
    """The multitask task (SST-5, Quora, STS-B heads, cross-encoded pairs) on `shape` with PCGrad, and one
    step of the `together` schedule holding the plain step's batch_size examples split over the three tasks:
    the step pays a forward and backward pass per task and the projection of their gradients."""
    from qajax.models.spec import ModelSpec
    from qajax.tasks.multitask import model as multitask_model
    from qajax.tasks.multitask import task as multitask

    t = multitask.default_config()
    t.schedule = "together"
    specs = multitask.head_specs(t)
    model = multitask_model.MultitaskModel(shape.encoder(), specs, head_dropout=t.head_dropout)
    params = jax.device_get(multitask_model.init_params(model, jax.random.key(0)))
    task = multitask.assemble(t, ModelSpec(shape.encoder(), "encoder"), model, params, {}, {}, {}, pcgrad=pcgrad)
    rng = np.random.default_rng(0)
    batch = {}
    for i, spec in enumerate(specs):
        rows = dataclasses.replace(
            shape, batch_size=shape.batch_size // len(specs) + (i < shape.batch_size % len(specs))
        )
        inputs = synthetic_batch(rows, seed=i)
        batch.update({f"{spec.name}/{k}": inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
        if spec.kind == "classes":
            labels = rng.integers(0, spec.num_classes, rows.batch_size).astype(np.int32)
        elif spec.kind == "binary":
            labels = rng.integers(0, 2, rows.batch_size).astype(np.float32)
        else:
            labels = rng.uniform(0, spec.max_value, rows.batch_size).astype(np.float32)
        batch[f"{spec.name}/labels"] = labels
    return task, batch


def qajax_step(
    shape: Shape, mode: str = "mesh", techniques: dict | None = None, make_task: Callable = span_qa_task, **options
):
    """(step, state, batch) for our train step with the engine's optimizer and parallel layer (mesh or pmap);
    `techniques` = {section: overrides} switches techniques on exactly as a config does; `make_task(shape,
    **options)` gives the task and its batch (span QA by default)."""
    from qajax.techniques import apply_techniques, build_techniques, techniques_section
    from qajax.train import optim

    task, batch = make_task(shape, **options)
    config = ml_collections.ConfigDict({"techniques": techniques_section()})
    for section, overrides in (techniques or {}).items():
        config.techniques[section].update(overrides)
    built = build_techniques(config, task)
    optimizer = optim.default_config()
    task, optimizer, init_extras = apply_techniques(task, built, optimizer)
    tx, _ = optim.make_optimizer(optimizer, task.initial_params, total_steps=10_000, steps_per_epoch=1_000)
    parallel = Parallel(mode)
    make_state = lambda p: TrainState.create(p, tx, seed=0, extras=init_extras(p))
    abstract = parallel.abstract_state(make_state, task.initial_params)
    axis = PMAP_AXIS if mode == "pmap" else None
    step = make_train_step(task.loss_fn, tx, techniques=built, axis_name=axis)
    step = parallel.compile_step(step, abstract)
    state = parallel.create_state(make_state, task.initial_params)
    return step, state, parallel.place_batch(batch)


def qajax_eval(shape: Shape, mode: str = "mesh"):
    """(predict, params, batch): the forward pass alone, as evaluation runs it."""
    model = build_model(shape.encoder(), "qa")
    params = init_params(model, jax.random.key(0))
    parallel = Parallel(mode)
    predict = parallel.compile_predict(
        lambda p, b: model.apply({"params": p}, b["input_ids"], b["attention_mask"], b["token_type_ids"])[:2],
        None if mode == "pmap" else jax.tree.map(lambda _: NamedSharding(parallel.mesh, P()), params),
    )
    if mode == "pmap":
        params = parallel.place_state(params)
    step = lambda params, batch: (params, {"train/loss": predict(params, batch)[0]})
    if mode != "pmap":  # jitted (params passed through, donated: no copy) so that XLA reports its memory
        step = jax.jit(step, donate_argnums=0)
    return step, params, parallel.place_batch(synthetic_batch(shape))


def hf_flax_step(shape: Shape):
    import transformers

    config = shape.hf_config()
    model = transformers.FlaxBertForQuestionAnswering(config, seed=0, dtype=jnp.dtype(shape.dtype))
    tx = optax.adamw(3e-5)

    def step(carry, batch):
        params, opt_state, rng = carry
        rng, dropout_rng = jax.random.split(rng)

        def loss(p):
            out = model(
                batch["input_ids"],
                batch["attention_mask"],
                batch["token_type_ids"],
                params=p,
                dropout_rng=dropout_rng,
                train=True,
            )
            return span_loss(out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"])[0]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, rng), {"train/loss": value}

    carry = (model.params, tx.init(model.params), jax.random.PRNGKey(0))
    return jax.jit(step, donate_argnums=0), carry, jax.device_put(synthetic_batch(shape))


def hf_pytorch_step(shape: Shape):
    import torch
    import transformers

    torch.manual_seed(0)
    config = shape.hf_config()
    model = transformers.BertForQuestionAnswering(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    batch = {k: torch.tensor(v).long() for k, v in synthetic_batch(shape).items()}

    def step(state, batch):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        return state, {"train/loss": loss.detach()}

    return step, None, batch


class Timed:
    """One entry's step, compiled and warmed up; `time(steps)` gives the mean seconds of `steps` more."""

    def __init__(self, step: Callable, state, batch, *, warmup: int, sync: Callable):
        self.state, self.batch, self.sync = state, batch, sync
        self.memory_bytes = None
        start = time.perf_counter()
        jitted = hasattr(step, "lower")
        if jitted:  # compile ahead of time, and read the step's memory from XLA
            step = step.lower(state, batch).compile()
            self.memory_bytes = step_memory_bytes(step.memory_analysis())
        self.step = step
        if not jitted:  # eager (PyTorch) or a wrapper: the first call stands for the compile
            self._run(1)
        self.compile_seconds = time.perf_counter() - start
        self._run(warmup)

    def _run(self, steps: int) -> None:
        metrics = None
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        if metrics is not None:
            self.sync(metrics)  # one sync at the end: steps are dispatched back to back, as in training

    def time(self, steps: int) -> float:
        start = time.perf_counter()
        self._run(steps)
        return (time.perf_counter() - start) / steps


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


def peak_memory_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return None


def run(
    shape: Shape,
    names: list[str],
    *,
    steps: int = 10,
    warmup: int = 2,
    peak_flops: float | None = None,
    mode="mesh",
    rounds: int = 1,
) -> dict:
    """Times each entry's step. With `rounds` > 1 every entry is built first (all in memory at once), then
    timed `rounds` times in alternating order, and its fastest round counts: what ran before an entry (a
    busy allocator, a hot cache, the other process of a 2-core machine) weighs on every entry alike."""
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds}: expected at least 1")
    builders = {
        "qajax": lambda: qajax_step(shape, mode),
        "qajax-eval": lambda: qajax_eval(shape, mode),
        **{name: (lambda t=t: qajax_step(shape, mode, t)) for name, t in TECHNIQUE_ENTRIES.items()},
        "multitask-pcgrad": lambda: qajax_step(shape, mode, make_task=multitask_task),
        "hf-flax": lambda: hf_flax_step(shape),
        "hf-pytorch": lambda: hf_pytorch_step(shape),
    }
    unknown = sorted(set(names) - set(builders))
    if unknown or not names:
        known = ", ".join(sorted(builders))
        raise ConfigError(f"--entries: unknown entries {unknown or names}; expected some of {known}")
    peak, peak_source = device_peak_flops(peak_flops)
    flops = shape.train_flops()

    def prepare(name: str) -> Timed:
        sync = (lambda m: float(m["train/loss"])) if name == "hf-pytorch" else jax.block_until_ready
        return Timed(*builders[name](), warmup=warmup, sync=sync)

    seconds, compile_seconds, memory_bytes = {}, {}, {}
    if rounds == 1:  # one entry in memory at a time
        for name in names:
            timed = prepare(name)
            seconds[name], compile_seconds[name] = timed.time(steps), timed.compile_seconds
            memory_bytes[name] = timed.memory_bytes
            del timed
    else:
        entries = {name: prepare(name) for name in names}
        compile_seconds = {name: timed.compile_seconds for name, timed in entries.items()}
        memory_bytes = {name: timed.memory_bytes for name, timed in entries.items()}
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                seconds[name] = min(seconds.get(name, float("inf")), entries[name].time(steps))
        del entries
    results = []
    for name in names:
        step_flops = flops / 3 if name.endswith("-eval") else flops  # forward only
        # MFU counts the plain step's model FLOPs; a technique does more (SDV, SMART) or less (frozen, LoRA)
        # work than that, so its "MFU" would not be a utilization (freeze-top2 would pass 100%).
        mfu = step_flops / seconds[name] / peak if name in PLAIN_STEP_ENTRIES else None
        results.append(
            {
                "name": name,
                "examples_per_sec": shape.batch_size / seconds[name],
                "tokens_per_sec": shape.batch_size * shape.seq_len / seconds[name],
                "step_ms": 1e3 * seconds[name],
                "compile_seconds": compile_seconds[name],
                "step_memory_bytes": memory_bytes[name],
                "mfu": mfu,
            }
        )
    base = next((r["step_ms"] for r in results if r["name"] == "qajax"), results[0]["step_ms"])
    for r in results:
        r["ratio"] = r["step_ms"] / base  # step time relative to the plain qajax train step
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}:{device.device_kind} x{jax.device_count()} ({platform.processor() or 'cpu'})",
        "config": {**dataclasses.asdict(shape), "mode": mode, "steps": steps, "warmup": warmup, "rounds": rounds,
                   "train_flops_per_step": flops, "peak_flops": peak, "peak_flops_source": peak_source,
                   "host_allocator": "keeps freed memory" if host_memory.applied() else "system"},
        "results": results,
        "peak_device_memory_bytes": peak_memory_bytes(),
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }  # fmt: skip


PLAIN_STEP_ENTRIES = ("qajax", "qajax-eval", "hf-flax", "hf-pytorch")  # same model work: MFU applies

# The targets the project set itself, on step-time ratios to the plain qajax step: a reference must be this
# many times slower (">="), a technique at most this much slower or faster ("<="). SDV's is its arithmetic
# limit, (3 + K) / 3 forward-equivalents, with 5% slack; freeze-top2's is stated for 2 of 12 layers.
TARGETS = {
    "hf-flax": (">=", 1.25),
    "hf-pytorch": (">=", 1.5),
    "sda": ("<=", 1.40),
    "sdv-k3": ("<=", (3 + 3) / 3 * 1.05),
    "sdv-k5": ("<=", (3 + 5) / 3 * 1.05),
    "smart-t1": ("<=", 3.0),
    "lora-r8": ("<=", 0.80),
    "freeze-top2": ("<=", 0.50),
}


TARGET_DEPTH = {"freeze-top2": 12}  # targets stated for one depth only: not judged at another


def target_cell(name: str, ratio: float, num_layers: int | None = None) -> str:
    """'<= 1.40: met' / '>= 1.25: not met' / '' for an entry without a target (or 'n/a' at another depth)."""
    if name not in TARGETS:
        return ""
    op, bound = TARGETS[name]
    depth = TARGET_DEPTH.get(name)
    if depth is not None and num_layers is not None and num_layers != depth:
        return f"{op} {bound:.2f} at {depth} layers: n/a at {num_layers}"
    met = ratio >= bound if op == ">=" else ratio <= bound
    return f"{op} {bound:.2f}: {'met' if met else 'not met'}"


def markdown(report: dict) -> str:
    shape = {f.name: report["config"][f.name] for f in dataclasses.fields(Shape)}
    lines = [
        f"device: {report['device']}",
        f"shape: {json.dumps(shape)}; peak {report['config']['peak_flops'] / 1e9:.0f} GFLOP/s "
        f"({report['config']['peak_flops_source']}); host allocator: {report['config'].get('host_allocator', '?')}",
        "",
        "| name | examples/s | tokens/s | step ms | ratio | target (ratio) | MFU | compile s | MB per device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        memory = "" if r["step_memory_bytes"] is None else f"{r['step_memory_bytes'] / 2**20:.0f}"
        lines.append(
            f"| {r['name']} | {r['examples_per_sec']:.1f} | {r['tokens_per_sec']:.0f} | {r['step_ms']:.1f} | "
            f"{r['ratio']:.2f} | {target_cell(r['name'], r['ratio'], shape['num_layers'])} | {mfu} | "
            f"{r['compile_seconds']:.1f} | {memory} |"
        )
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    """Examples/s per entry as a bar chart (PNG), the table's numbers beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, ax = plt.subplots(figsize=(1.2 * len(results) + 3, 3.5))
    bars = ax.bar([r["name"] for r in results], [r["examples_per_sec"] for r in results], color="#4477aa")
    for bar, r in zip(bars, results, strict=True):
        ax.annotate(f"{r['ratio']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8)  # fmt: skip
    c = report["config"]
    ax.set_ylabel("train examples / s")
    shape = f"{c['num_layers']}L H{c['hidden_size']} seq {c['seq_len']} batch {c['batch_size']} {c['dtype']}"
    ax.set_title(f"{report['device']}\n{shape} ({c['mode']}); label: step time / qajax", fontsize=8)
    plt.xticks(rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
