"""The multitask `Task`: SST-5, Quora and STS-B files -> one shared encoder with three heads.

Config (the `task` section, defaults in `default_config`): which tasks train, each task's files, head form
and loss weight; the shared and task-specific layers; the batch schedule. PCGrad is `techniques.pcgrad`
(qajax.techniques.pcgrad), which this task applies in its loss (`MultitaskTask.loss_fn`). The task hands the loop
its own batch iterator (`make_train_batches`, see schedule.py) and one eval set per task (`eval_sets`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import ml_collections
import numpy as np

from qajax import tree
from qajax.checkpoints.factory import load_or_init
from qajax.errors import ConfigError
from qajax.models.merge import merge_params
from qajax.tasks.multitask import data, losses, metrics, report
from qajax.tasks.multitask.features import featurize
from qajax.tasks.multitask.model import FORMS, POOLINGS, HeadSpec, MultitaskModel, init_params
from qajax.tasks.multitask.pcgrad import pcgrad_loss
from qajax.tasks.multitask.schedule import SCHEDULES, MultitaskBatches
from qajax.train.task import Task

log = logging.getLogger(__name__)
TASKS = ("sst", "quora", "sts")
KINDS = {"sst": "classes", "quora": "binary", "sts": "regression"}


def _task_section(prefix: str, loss: str, form: str | None) -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict()
    s.train_file = f"{prefix}-train.csv"  # relative to task.data_dir
    s.eval_file = f"{prefix}-dev.csv"
    s.loss = loss  # see losses.LOSSES
    s.weight = 1.0  # multiplies this task's mean loss
    if form is not None:
        s.form = form  # concat | cosine | cross
    return s


def default_config() -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.name = "multitask"
    t.data_dir = "../shared/data/minbert"  # relative to the working directory (the repo root)
    t.tasks = TASKS  # which of them train (and are evaluated)
    t.sst = _task_section("ids-sst", "cross_entropy", None)
    t.quora = _task_section("quora", "bce", "cross")
    t.sts = _task_section("sts", "mse", "cross")
    t.skip_invalid = False  # True: leave malformed rows out (logged) instead of failing on the first
    t.max_train_examples = 0  # per task, a random subset of N rows of each file, seeded by config.seed (0: all)
    t.max_eval_examples = 0
    t.tokenizer = ""  # '' = the model's own tokenizer files
    t.max_seq_length = 128  # tokens of a sentence, or of a cross-encoded pair
    t.pooling = "cls"  # cls | mean | pooler
    t.shared_layers = 0  # linear + ReLU layers shared by every task (report 003: 1)
    t.task_layers = 0  # linear + ReLU layers of each task's own before its output (report 002: 2)
    t.head_dropout = 0.1
    t.schedule = "shuffled"  # see schedule.SCHEDULES
    t.cosine_margin = 0.0  # cosine_embedding: negatives are pushed below this cosine
    t.mnr_scale = 20.0  # mnr: scores are scale * cosine
    t.positive_threshold = 3.0  # sts with cosine_embedding / mnr: similarity >= this is a positive pair
    t.cosine_threshold = 0.5  # quora trained by a cosine loss: a duplicate when cos > this
    # quora's cosine form with a BCE loss has logit = scale * cos + bias. Two scalars at the encoder's learning
    # rate move ~lr a step under Adam: at 1e-4 they stayed at their initial cut (cos > 0, "duplicate" for
    # nearly every pair) and Quora accuracy was 0.47 (docs/results/multitask_ablation.md). They learn at
    # learning_rate x this instead, and without weight decay.
    t.affine_lr_multiplier = 1000.0
    t.predictions_dir = ""  # if set, each evaluation writes predictions CSVs and confusion PNGs here
    return t


def head_specs(t) -> tuple[HeadSpec, ...]:
    specs = []
    for name in t.tasks:
        if name not in TASKS:
            raise ConfigError(f"task.tasks has {name!r}: expected some of {TASKS}")
        section = t[name]
        form = section.get("form")
        if form is not None and form not in FORMS:
            raise ConfigError(f"task.{name}.form={form!r}: expected one of {FORMS}")
        spec = HeadSpec(name, KINDS[name], num_classes=5 if name == "sst" else 2, form=form, max_value=5.0)
        losses.check(spec, section.loss)
        specs.append(spec)
    if not specs:
        raise ConfigError("task.tasks is empty")
    return tuple(specs)


def subset(examples: list, limit: int, seed: int, name: str, split: str) -> list:
    """`limit` examples drawn at random (seeded), in file order; all when limit is 0. Not the first rows: the
    SST dev file is sorted by label (its first 500 rows are 46% class 3)."""
    if not limit or limit >= len(examples):
        return examples
    rng = np.random.default_rng([seed, TASKS.index(name), split == "eval"])
    return [examples[i] for i in sorted(rng.permutation(len(examples))[:limit])]


def load_task_data(t, tokenizer, specs, seed: int) -> tuple[dict, dict, dict]:
    """(train arrays, eval arrays, eval examples) per task; eval keys prefixed with the task's name (the
    schedule prefixes training batches)."""
    root = Path(t.data_dir)
    if not root.is_dir():
        raise ConfigError(
            f"task.data_dir={t.data_dir!r}: no such folder (from {Path.cwd()}); the minBERT files "
            "(ids-sst-*.csv, quora-*.csv, sts-*.csv) live in ../shared/data/minbert of the project"
        )
    train, held_out, eval_examples = {}, {}, {}
    for spec in specs:
        section = t[spec.name]
        options = dict(
            max_seq_length=t.max_seq_length,
            separate=spec.form in ("concat", "cosine"),
            label_dtype=np.int32 if spec.kind == "classes" else np.float32,
        )
        for split, file, limit, out in (
            ("train", section.train_file, t.max_train_examples, train),
            ("eval", section.eval_file, t.max_eval_examples, held_out),
        ):
            if not file:
                continue
            skipped = [] if t.skip_invalid else None
            examples = data.read(root / file, spec.name, skipped=skipped)
            if skipped:
                log.warning("%s: skipped %d malformed rows, the first: %s", file, len(skipped), skipped[0])
            examples = subset(examples, limit, seed, spec.name, split)
            arrays = featurize(examples, tokenizer, **options)
            if split == "eval":  # eval batches reach the model as they are: keys carry the task's name
                arrays = {f"{spec.name}/{k}": v for k, v in arrays.items()}
                eval_examples[spec.name] = examples
            out[spec.name] = arrays
        log.info(
            "%s: %d train, %d eval examples",
            spec.name,
            len(train[spec.name]["labels"]),
            len(eval_examples.get(spec.name, ())),
        )
    return train, held_out, eval_examples


class MultitaskEvaluation:
    """Per-task predictions -> accuracy / Pearson / composite (and the files of `predictions_dir`)."""

    def __init__(self, specs, eval_examples, predictions_dir: str = ""):
        self.specs = {s.name: s for s in specs}
        self.examples, self.predictions_dir = eval_examples, predictions_dir
        self.last: dict[str, np.ndarray] = {}

    def __call__(self, outputs: dict, eval_sets: dict) -> dict[str, float]:
        scores = {}
        for name, out in outputs.items():
            predicted, labels = out[f"{name}/prediction"], eval_sets[name][f"{name}/labels"]
            self.last[name] = predicted
            if name == "sts":
                scores["eval/sts_pearson"] = metrics.pearson(predicted, labels)
            else:
                scores[f"eval/{name}_accuracy"] = metrics.accuracy(labels, predicted)
        if {"eval/sst_accuracy", "eval/quora_accuracy", "eval/sts_pearson"} <= set(scores):
            scores["eval/composite"] = metrics.composite(
                scores["eval/sst_accuracy"], scores["eval/quora_accuracy"], scores["eval/sts_pearson"]
            )
        if self.predictions_dir:
            self.write(self.predictions_dir, eval_sets)
        return scores

    def write(self, out_dir: str | Path, eval_sets: dict) -> None:
        for name, predicted in self.last.items():
            report.write_predictions(out_dir, name, self.examples[name], predicted)
            spec = self.specs[name]
            if spec.kind != "regression":
                labels = eval_sets[name][f"{name}/labels"]
                matrix = metrics.confusion_matrix(labels, predicted, spec.num_classes)
                report.plot_confusion(matrix, f"{name}: dev confusion", Path(out_dir) / f"{name}-confusion.png")


@dataclasses.dataclass
class MultitaskTask(Task):
    """A Task whose loss, with `pcgrad` (techniques.pcgrad.enabled), projects the task gradients of a step
    with several tasks."""

    pcgrad: bool = False

    @property
    def loss_fn(self):
        plain = super().loss_fn
        if not self.pcgrad:
            return plain

        def loss_fn(params, batch, rng, extras):
            names = tasks_in(batch)
            if len(names) < 2:
                return plain(params, batch, rng, extras)

            def one_task(name, index):
                part = {k: v for k, v in batch.items() if k.startswith(f"{name}/")}
                task_rng = jax.random.fold_in(rng, index)
                return lambda p: self.output_loss(self.forward(p, part, task_rng, deterministic=False), part)

            fns = [one_task(name, i) for i, name in enumerate(names)]
            loss, auxes = pcgrad_loss(fns, params, jax.random.fold_in(rng, len(names)))
            aux = {k: v for a in auxes for k, v in a.items() if k != "weight"}
            aux["weight"] = sum(a["weight"] for a in auxes)
            return loss, aux

        return loss_fn


def tasks_in(batch) -> list[str]:
    return sorted({k.split("/")[0] for k in batch if "/" in k and k.endswith("/input_ids")})


def count_fed(batch: dict, batch_size: int, tokens_per_example: int) -> tuple[int, int]:
    """(examples, tokens) of one step: `batch_size` examples for every task's `{name}/input_ids` in the batch
    (schedule "together" has one per task), each at its own width; a pair encoded apart ([N, 2, T]) counts
    one sentence."""
    widths = [batch[f"{name}/input_ids"].shape[-1] for name in tasks_in(batch)]
    if not widths:
        return batch_size, batch_size * tokens_per_example
    return batch_size * len(widths), batch_size * sum(widths)


def build(config) -> Task:
    t = config.task
    if t.schedule not in SCHEDULES:
        raise ConfigError(f"task.schedule={t.schedule!r}: expected one of {SCHEDULES}")
    if t.pooling not in POOLINGS:
        raise ConfigError(f"task.pooling={t.pooling!r}: expected one of {POOLINGS}")
    specs = head_specs(t)

    # -- the model: the (pretrained) encoder merged into a fresh multitask tree -------------------------
    encoder_spec, encoder_params = load_or_init(config.model, "encoder", seed=config.seed)
    model = MultitaskModel(encoder_spec.encoder, specs, t.shared_layers, t.task_layers, t.head_dropout, t.pooling)
    fresh = jax.tree.map(np.asarray, init_params(model, jax.random.key(config.seed)))
    family = encoder_spec.encoder.family
    new_parts = [r"shared/.*", *(rf"{s.name}/.*" for s in specs), rf"{family}/pooler/.*"]
    params, _ = merge_params(fresh, tree.flatten(encoder_params), may_be_missing=new_parts, source="model")

    # -- data ---------------------------------------------------------------------------------------
    from qajax.tasks.squad.task import load_tokenizer

    tokenizer = load_tokenizer(encoder_spec, t.tokenizer)
    train, held_out, eval_examples = load_task_data(t, tokenizer, specs, config.seed)
    pcgrad = config.techniques.pcgrad.enabled
    return assemble(t, encoder_spec, model, params, train, held_out, eval_examples, pcgrad=pcgrad)


def head_options(t, specs) -> dict:
    """{task name: (head spec, loss name, loss weight)} from the task section."""
    return {s.name: (s, t[s.name].loss, t[s.name].weight) for s in specs}


def make_forward(model: MultitaskModel):
    def forward(params, batch, rng=None, *, deterministic=True, **model_options):
        rngs = {} if deterministic else {"dropout": rng}
        return model.apply({"params": params}, batch, deterministic=deterministic, rngs=rngs, **model_options)

    return forward


def make_output_loss(t, specs):
    """output_loss(outputs, batch): the weighted sum of each task's mean loss, and each in aux."""
    options = head_options(t, specs)
    loss_kwargs = dict(margin=t.cosine_margin, scale=t.mnr_scale, positive_threshold=t.positive_threshold)

    def output_loss(outputs, batch):
        if not outputs:
            raise ValueError(f"the batch holds no task's inputs ({sorted(batch)}); expected keys like sst/input_ids")
        total, aux, count = 0.0, {}, 0
        for name, out in outputs.items():
            spec, loss_name, weight = options[name]
            labels = batch[f"{name}/labels"]
            value = losses.task_loss(spec, loss_name, out, labels, **loss_kwargs)
            total = total + weight * value
            aux[f"{name}_loss"] = value
            count += labels.shape[0]
        aux["weight"] = float(count)  # examples in this batch (training batches have no padding)
        return total, aux

    return output_loss


def predictor(t, specs):
    """make_predict(forward) -> predict_fn(params, batch): each task's predictions."""
    options = head_options(t, specs)

    def make_predict(forward):
        def predict_fn(params, batch):
            outputs = forward(params, batch)
            return {
                f"{name}/prediction": losses.predict(options[name][0], options[name][1], out, t.cosine_threshold)
                for name, out in outputs.items()
            }

        return predict_fn

    return make_predict


def assemble(t, encoder_spec, model: MultitaskModel, params, train: dict, held_out: dict, eval_examples: dict,
             *, pcgrad: bool):  # fmt: skip
    """The task from its parts: the `task` config section, the model and its params, the arrays per task
    (train, eval) and the eval examples. `build` reads them from files; the benchmark makes them up.
    `pcgrad`: `techniques.pcgrad.enabled`."""
    specs = model.heads
    forward, make_predict = make_forward(model), predictor(t, specs)

    def make_train_batches(**iterator_args):
        return MultitaskBatches(train, schedule=t.schedule, **iterator_args)

    # The learned affine cut of a cosine-BCE head (see task.affine_lr_multiplier).
    affine = tuple(
        f"{spec.name}/logit_(scale|bias)"
        for spec in specs
        if spec.is_pair and spec.form == "cosine" and spec.kind == "binary"
    )

    return MultitaskTask(
        spec=encoder_spec,
        model=model,
        initial_params=params,
        forward=forward,
        output_loss=make_output_loss(t, specs),
        logits=lambda outputs: {name: out["score"] for name, out in outputs.items()},
        train_arrays={},
        eval_arrays=None,
        evaluate=MultitaskEvaluation(specs, eval_examples, t.predictions_dir) if held_out else None,
        predict_fn=make_predict(forward),
        tokens_per_example=t.max_seq_length,
        count_fed=count_fed,
        make_predict=make_predict,
        make_train_batches=make_train_batches,
        eval_sets=held_out or None,
        pcgrad=pcgrad,
        applies_techniques=("pcgrad",),
        output_kinds={spec.name: spec.kind for spec in specs},
        lr_multipliers=tuple((pattern, float(t.affine_lr_multiplier)) for pattern in affine),
        no_decay=affine,  # a temperature and an offset (as CLIP's logit scale), not weights to shrink
    )
