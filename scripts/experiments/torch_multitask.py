"""The PyTorch arm of parity_multitask.py: a plain PyTorch loop that trains what qajax's multitask task trains.

    encoder   transformers.BertModel.from_pretrained(<the folder qajax loads>), fp32, train-mode dropout
              (hidden and attention, as the checkpoint's config says: 0.1 and 0.1)
    pooling   the task's (`task.pooling`): mean over the real tokens, or [CLS]
    heads     as qajax.tasks.multitask.model with shared_layers = task_layers = 0:
              sentence (SST):       dropout(head_dropout) -> Linear(hidden, classes)
              pair, form "cross":   dropout(head_dropout) -> Linear(hidden, 1) on the cross-encoded pair
              pair, form "cosine",  max_value * cos(u, v) of the two sentences encoded apart (no parameters)
              regression (STS):
              Linear weights ~ N(0, initializer_range), biases 0: the scheme of qajax's `dense` (and of HF).
    losses    mean cross-entropy / BCE with logits / squared error per task, times task.<name>.weight
    optimizer torch.optim.AdamW with qajax's optimizer section: betas, eps, weight decay on every parameter but
              biases and LayerNorm weights (qajax's optimizer.no_decay), the learning rate of step k set to
              qajax's own schedule(k) (`qajax.train.optim.make_schedule`), gradients clipped by their global
              norm as qajax clips them (factor 1 below the limit, limit / norm above)

The data are qajax's: its readers, seeded subsets and tokenisation (`load_task_data`) and its schedule's
batches (`MultitaskBatches` with the arguments `qajax.run.prepare` passes), so that for a seed both arms
see the same examples in the same order. Predictions are scored by qajax's `MultitaskEvaluation`.
What differs between the arms is only what the frameworks draw themselves: the heads' initial weights and
the dropout masks (seeded by the same seed in each framework's own generator), and float32 rounding.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def pool(last_hidden, mask, pooler_output, pooling: str):
    """qajax.tasks.multitask.model.pool in torch."""
    if pooling == "cls":
        return last_hidden[:, 0]
    if pooling == "pooler":
        return pooler_output
    mask = mask[..., None].to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def cosine(u, v, eps: float = 1e-8):
    """qajax.tasks.multitask.model.cosine in torch (one clamp on the product of the norms)."""
    return (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(eps)


class TorchMultitask(nn.Module):
    """A BertModel and one head per task; forward(batch) -> {task: score}, the `score` of qajax's heads."""

    def __init__(self, encoder: nn.Module, specs, *, pooling: str, head_dropout: float, initializer_range: float):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.specs = {s.name: s for s in specs}
        self.dropout = nn.Dropout(head_dropout)
        self.heads = nn.ModuleDict()
        hidden = encoder.config.hidden_size
        for s in specs:
            if s.kind == "classes":
                features = s.num_classes
            elif s.form == "cross":
                features = 1
            elif s.form == "cosine" and s.kind == "regression":
                continue  # max_value * cos: no parameters
            else:
                raise NotImplementedError(f"task {s.name}: the torch arm has no {s.kind} head of form {s.form!r}")
            linear = nn.Linear(hidden, features)
            nn.init.normal_(linear.weight, std=initializer_range)
            nn.init.zeros_(linear.bias)
            self.heads[s.name] = linear

    def embed(self, ids, mask, types):  # [..., seq] -> [..., hidden]
        lead = ids.shape[:-1]
        flat = lambda x: x.reshape(-1, x.shape[-1])
        out = self.encoder(input_ids=flat(ids), attention_mask=flat(mask), token_type_ids=flat(types))
        pooled = pool(out.last_hidden_state, flat(mask), out.pooler_output, self.pooling)
        return pooled.reshape(*lead, pooled.shape[-1])

    def forward(self, batch: dict) -> dict:
        outputs = {}
        for name, spec in self.specs.items():
            if f"{name}/input_ids" not in batch:
                continue
            x = self.embed(*(batch[f"{name}/{k}"] for k in INPUTS))
            if not spec.is_pair:
                outputs[name] = self.heads[name](self.dropout(x)).float()
            elif spec.form == "cross":
                outputs[name] = self.heads[name](self.dropout(x))[:, 0].float()
            else:  # siamese cosine on the label's scale
                outputs[name] = spec.max_value * cosine(x[:, 0].float(), x[:, 1].float())
        return outputs


def task_loss(loss: str, score, labels):
    """qajax.tasks.multitask.losses.task_loss for the losses with a torch twin here (batch means)."""
    if loss == "cross_entropy":
        return F.cross_entropy(score, labels.long())
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(score, labels.float())
    if loss == "mse":
        return F.mse_loss(score, labels.float())
    raise NotImplementedError(f"loss {loss!r} has no torch twin here")


def total_loss(outputs: dict, batch: dict, options: dict):
    """The weighted sum of each task's mean loss and the per-task values; options: {task: (loss, weight)}."""
    total, parts = 0.0, {}
    for name, score in outputs.items():
        loss_name, weight = options[name]
        value = task_loss(loss_name, score, batch[f"{name}/labels"])
        total = total + weight * value
        parts[f"{name}_loss"] = float(value.detach())
    return total, parts


def predict(spec, score) -> np.ndarray:
    """qajax.tasks.multitask.losses.predict for trained heads: a class, 0/1 (logit > 0), or the value."""
    if spec.kind == "classes":
        return score.argmax(-1).to(torch.int32).numpy()
    if spec.kind == "binary":
        return (score > 0).to(torch.int32).numpy()
    return score.numpy()


def no_decay(name: str) -> bool:
    """qajax's default optimizer.no_decay, `.*/bias` and `.*(LayerNorm|layer_norm)/scale`, in torch names."""
    return name.endswith(".bias") or name.endswith("LayerNorm.weight")


def to_torch(batch: dict) -> dict:
    return {k: torch.from_numpy(np.asarray(v)).long() if not k.endswith("/labels") else torch.from_numpy(np.asarray(v))
            for k, v in batch.items()}  # fmt: skip


def clip_by_global_norm(parameters, max_norm: float) -> float:
    """qajax's clip (qajax.train.fused_update): grads x (1 if norm < max_norm else max_norm / norm)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    if max_norm and norm >= max_norm:
        for g in grads:
            g.mul_(max_norm / norm)
    return norm


def qajax_counts(encoder_config, specs, t, no_decay_patterns) -> tuple[int, int]:
    """(parameters, weight-decayed parameters) of qajax's multitask tree for these heads (shapes only)."""
    import jax

    from qajax import tree
    from qajax.tasks.multitask.model import MultitaskModel, init_params
    from qajax.train.optim import decay_mask

    model = MultitaskModel(encoder_config, tuple(specs), t.shared_layers, t.task_layers, t.head_dropout, t.pooling)
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    sizes = {path: int(np.prod(s.shape)) for path, s in tree.flatten(shapes).items()}
    decays = tree.flatten(decay_mask(shapes, no_decay_patterns))
    return sum(sizes.values()), sum(n for path, n in sizes.items() if decays[path])


def torch_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, weight-decayed parameters) of the torch model, decay as `no_decay` says."""
    named = list(model.named_parameters())
    return sum(p.numel() for _, p in named), sum(p.numel() for n, p in named if not no_decay(n))


class Prepared:
    """The torch model, optimizer, qajax's data and schedule for one config (everything but the loop)."""

    def __init__(self, config):
        import transformers

        from qajax.checkpoints.factory import load_or_init
        from qajax.run import resolve_steps
        from qajax.tasks.multitask.schedule import MultitaskBatches
        from qajax.tasks.multitask.task import MultitaskEvaluation, head_specs, load_task_data
        from qajax.tasks.squad.task import load_tokenizer
        from qajax.train import optim

        t, o = config.task, config.optimizer
        if t.shared_layers or t.task_layers:
            raise NotImplementedError("the torch arm has no shared or task layers (task.shared_layers/task_layers)")
        if o.name != "adamw" or o.lr_multipliers or o.frozen or config.train.accumulation_steps != 1:
            raise NotImplementedError("the torch arm is plain AdamW over every parameter, no accumulation")
        if config.model.dtype != "float32":
            raise NotImplementedError("the torch arm runs float32")
        self.config = config
        specs = head_specs(t)
        # The folder and tokenizer qajax uses.
        spec, _ = load_or_init(config.model, "encoder", seed=config.seed)
        folder = spec.tokenizer_dir
        tokenizer = load_tokenizer(spec, t.tokenizer)
        train, held_out, eval_examples = load_task_data(t, tokenizer, specs, config.seed)
        self.held_out, self.evaluation = held_out, MultitaskEvaluation(specs, eval_examples)
        # qajax.run.prepare's iterator arguments, one process.
        iterator_args = dict(global_batch_size=config.train.batch_size, seed=config.seed, process_index=0,
                             process_count=1, accumulation_steps=1)  # fmt: skip
        if config.train.length_bucket:
            iterator_args["length_bucket"] = config.train.length_bucket
        self.batches = MultitaskBatches(train, schedule=t.schedule, **iterator_args)
        self.total_steps = resolve_steps(config.train, self.batches.steps_per_epoch)
        self.schedule = optim.make_schedule(
            o, total_steps=self.total_steps, steps_per_epoch=self.batches.steps_per_epoch
        )

        torch.manual_seed(config.seed)  # the heads' init, then the dropout masks
        encoder = transformers.BertModel.from_pretrained(
            folder,
            hidden_dropout_prob=config.model.hidden_dropout,
            attention_probs_dropout_prob=config.model.attention_dropout,
        ).float()
        self.model = TorchMultitask(encoder, specs, pooling=t.pooling, head_dropout=t.head_dropout,
                                    initializer_range=encoder.config.initializer_range)  # fmt: skip
        self.options = {s.name: (t[s.name].loss, t[s.name].weight) for s in specs}
        named = list(self.model.named_parameters())
        groups = [
            {"params": [p for n, p in named if not no_decay(n)], "weight_decay": o.weight_decay},
            {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(o.b1, o.b2), eps=o.eps)
        counts = qajax_counts(spec.encoder, specs, t, o.no_decay), torch_counts(self.model)
        log.info("parameters (all, weight-decayed): qajax %s, torch %s", *counts)
        if counts[0] != counts[1]:
            raise AssertionError(f"qajax's tree has {counts[0]} (all, decayed) parameters, torch {counts[1]}")

    def step(self, k: int, batch: dict) -> dict:
        """One update at step k (0-based): forward, loss, backward, clip, AdamW at qajax's schedule(k)."""
        self.model.train()
        lr = float(self.schedule(k))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = to_torch(batch)
        loss, parts = total_loss(self.model(batch), batch, self.options)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_by_global_norm(list(self.model.parameters()), self.config.optimizer.grad_clip_norm or 0.0)
        if not np.isfinite(norm) or not torch.isfinite(loss):
            raise FloatingPointError(f"step {k}: loss {float(loss)}, gradient norm {norm}")
        self.optimizer.step()
        return {"train/loss": float(loss.detach()), "train/grad_norm": norm, "learning_rate": lr, **parts}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """qajax's scores (MultitaskEvaluation) of the eval-mode model's predictions on the same dev rows."""
        self.model.eval()
        size, outputs = self.config.train.eval_batch_size, {}
        for name, arrays in self.held_out.items():
            spec, count = self.model.specs[name], len(arrays[f"{name}/labels"])
            predicted = []
            for start in range(0, count, size):
                chunk = to_torch({k: v[start : start + size] for k, v in arrays.items() if not k.endswith("/labels")})
                predicted.append(predict(spec, self.model(chunk)[name]))
            outputs[name] = {f"{name}/prediction": np.concatenate(predicted)}
        return self.evaluation(outputs, self.held_out)


def train(config, workdir: str | Path, *, log_every: int = 20, steps: int | None = None) -> dict:
    """Trains to the config's total steps (or `steps` of them, for timing) and evaluates at the end; writes
    WORKDIR/metrics.jsonl (the train metrics every `log_every` steps and the final scores). Returns the
    summary: the eval scores, seconds (set-up, training and evaluation, as qajax's run counts them), and
    the seconds of the steps after the first `log_every`."""
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = Prepared(config)
    steps = run.total_steps if steps is None else steps
    records, step_times, means = [], [], {}
    with open(workdir / "metrics.jsonl", "w", encoding="utf-8") as metrics_file:
        for k in range(steps):
            tick = time.perf_counter()
            metrics = run.step(k, next(run.batches))
            step_times.append(time.perf_counter() - tick)
            for key, value in metrics.items():
                means.setdefault(key, []).append(value)
            if (k + 1) % log_every == 0 or k + 1 == steps:
                record = {"step": k + 1, **{key: float(np.mean(v)) for key, v in means.items()}}
                record["steps_per_sec"] = len(means["train/loss"]) / sum(step_times[-len(means["train/loss"]) :])
                means = {}
                log.info("step %d: %s", k + 1, json.dumps({key: round(v, 4) for key, v in record.items()}))
                metrics_file.write(json.dumps(record) + "\n")
                records.append(record)
        scores = run.evaluate()
        metrics_file.write(json.dumps({"step": steps, **scores}) + "\n")
    seconds = time.perf_counter() - started
    later = step_times[log_every:] or step_times
    return {"scores": scores, "seconds": round(seconds), "seconds_per_step": float(np.mean(later)),
            "final_step": steps, "total_steps": run.total_steps}  # fmt: skip
