"""Each `qajax bench` entry as (step, state, batch), built on one `Shape`, and the attention path it takes.

qajax       our jitted step (the engine's `make_train_step`, AdamW, dropout on)
qajax-eval  the forward pass alone, as evaluation runs it
techniques  the qajax step with one technique switched on (`TECHNIQUE_ENTRIES`), and multitask-pcgrad
hf-flax     transformers' FlaxBertForQuestionAnswering with an optax AdamW step under jax.jit
hf-pytorch  transformers' BertForQuestionAnswering, eager forward/backward/AdamW step
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from qajax.bench.shape import Shape, synthetic_batch
from qajax.errors import ConfigError
from qajax.models import attention
from qajax.models.heads import build_model, init_params
from qajax.tasks.span import span_loss
from qajax.train.parallel import PMAP_AXIS, Parallel
from qajax.train.state import TrainState
from qajax.train.step import make_train_step

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


PLAIN_STEP_ENTRIES = ("qajax", "qajax-eval", "hf-flax", "hf-pytorch")  # same model work: MFU applies

# The references run transformers' own attention: FlaxBert's einsum and softmax, and BertForQuestionAnswering's
# default, torch's scaled_dot_product_attention (transformers 4.57 takes sdpa wherever torch has it).
REFERENCE_ATTENTION = {"hf-flax": "hf einsum", "hf-pytorch": "hf sdpa"}


def entry_builders(shape: Shape, mode: str) -> dict[str, Callable]:
    """Entry name -> a function building its (step, state, batch)."""
    return {
        "qajax": lambda: qajax_step(shape, mode),
        "qajax-eval": lambda: qajax_eval(shape, mode),
        **{name: (lambda t=t: qajax_step(shape, mode, t)) for name, t in TECHNIQUE_ENTRIES.items()},
        "multitask-pcgrad": lambda: qajax_step(shape, mode, make_task=multitask_task),
        "hf-flax": lambda: hf_flax_step(shape),
        "hf-pytorch": lambda: hf_pytorch_step(shape),
    }


def planned_attention(name: str, shape: Shape) -> str:
    """The attention path of an entry as the model plans it (`qajax.models.attention.plan`): the train steps
    with their attention dropout (on the CPU, `auto` = xla falls back to explicit for it), the forward alone
    without; the references' own attention."""
    if name in REFERENCE_ATTENTION:
        return REFERENCE_ATTENTION[name]
    encoder = shape.encoder()
    training = not name.endswith("-eval")
    path, _ = attention.plan_for(encoder, training=training)
    return path


# The fused kernels, the backends that run them and who they are (pallas: the TPU window and splash kernels).
KERNEL_HOSTS = {
    "cudnn": (("gpu", "cuda"), "an NVIDIA GPU"),
    "pallas": (("tpu", "cpu"), "a TPU (or the CPU, in Pallas' interpreter: slow)"),
}
FUSED_KERNELS = tuple(KERNEL_HOSTS)  # what a compiled program shows as a custom call (`qajax.compile.hlo`)


def ran_attention(planned: str, kernel: str | None) -> str:
    """The fused kernel the compiled program calls, where it calls one (the plan is made outside the step's
    trace: under a TPU mesh `auto` takes pallas where it planned xla); else the plan, since xla and explicit
    both compile to XLA's own fusions and Pallas interpreted on a CPU calls no kernel."""
    return kernel if kernel in FUSED_KERNELS else planned


def check_attention_platform(shape: Shape) -> None:
    """A fused kernel asked for on a host that cannot run it fails here, in one line, before any compile."""
    backends, host = KERNEL_HOSTS.get(shape.attention_implementation or "auto", ((), ""))
    if backends and jax.default_backend() not in backends:
        raise ConfigError(
            f"--attention-implementation {shape.attention_implementation} runs on {host}; "
            f"this host's backend is {jax.default_backend()}"
        )
