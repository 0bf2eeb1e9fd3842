"""Span QA (SQuAD v1.1/v2.0, multi-context): data -> windows -> span loss -> n-best -> official metric."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import ml_collections
import numpy as np

from qajax.checkpoints.factory import load_or_init
from qajax.data import packing
from qajax.data.epochs import PerEpochBatches, fit_rows
from qajax.errors import ConfigError
from qajax.tasks.span import LABELS, MODEL_INPUTS, WINDOW_WEIGHT, span_task
from qajax.tasks.squad import data, postprocess, splits
from qajax.tasks.squad.eda import EdaConfig, augment_examples
from qajax.tasks.squad.features import DOC_STRIDE, MAX_QUERY_LENGTH, MAX_SEQ_LENGTH, FeatureConfig, featurize_cached
from qajax.tasks.squad.generate import generate_examples
from qajax.tasks.squad.postprocess import MAX_ANSWER_LENGTH, N_BEST
from qajax.tasks.squad.scoring import score_predictions
from qajax.train.task import Task, count_input_ids

log = logging.getLogger(__name__)
GENERATED = "generated"  # task.train_file / eval_file: the run-time generated data set of the demo
APPLIES_TECHNIQUES = ("eda",)  # techniques.eda: the training contexts, augmented per epoch (eda_batches)
FIT_STREAM = 1  # rng stream of the rows an augmented epoch drops or repeats (see eda_batches)


def default_config() -> ml_collections.ConfigDict:
    """The `task` section of span-QA configs (configs/squad.py, configs/demo.py start from it)."""
    t = ml_collections.ConfigDict()
    t.name = "squad"
    t.version = "v2.0"  # v1.1: unanswerable questions are dropped, no null answers
    t.train_file = ""  # a SQuAD/multi-context .json, a hub name (squad_v2), tfds:<name>, or "generated"
    t.eval_file = ""  # '' with eval_titles: held-out articles of train_file
    t.eval_titles = ()  # articles of train_file held out for evaluation
    t.dev_titles = ()  # articles of train_file held out of both (for choices like the null threshold)
    t.generated_passages = 300  # with "generated": passages of 4 questions each
    t.skip_invalid = False  # True: skip malformed questions and report them
    t.contexts_per_question = 1  # > 1: report 000's open-domain setting (distractor passages)
    t.tokenizer = ""  # '' = the model's own tokenizer files
    t.max_seq_length = MAX_SEQ_LENGTH  # 384
    t.doc_stride = DOC_STRIDE  # 128 tokens of overlap between windows of a long context
    t.max_query_length = MAX_QUERY_LENGTH  # 64
    t.start_weight = 1.0  # report 000's weighted-loss ablation: start_weight=2
    t.end_weight = 1.0
    t.span_head = "linear"  # report 004's layer combinations: scalar_mix | layer_attention | bilinear_layer_attention
    # | extra_layer (qajax.models.layer_heads); only "linear" exports to Hugging Face
    t.n_best = N_BEST  # 20
    t.max_answer_length = MAX_ANSWER_LENGTH  # 30 tokens
    t.null_threshold = 0.0  # predict "" when null score - best span score > this
    t.cache_dir = "~/.cache/qajax/features"
    return t


def eda_batches(config, examples, featurize, num_rows: int):
    """Task.make_train_batches for EDA: epoch e's batches come from `featurize(augmented examples of e)`,
    cut or topped up to the plain run's `num_rows` windows so that every epoch has the same steps. The
    section is `techniques.eda` (qajax.techniques.eda)."""
    e, train = config.techniques.eda, config.train
    ramp_epochs = e.ramp_epochs
    if not ramp_epochs:
        steps_per_epoch = max(1, num_rows // train.batch_size)
        ramp_epochs = math.ceil(train.epochs) if train.epochs > 0 else math.ceil(train.steps / steps_per_epoch)
    eda_config = EdaConfig(
        e.schedule, float(e.start_rate), float(e.end_rate), max(1, int(ramp_epochs)), e.swap, e.delete, e.duplicate
    )

    def arrays_for_epoch(epoch: int):
        augmented = augment_examples(examples, eda_config, seed=config.seed, epoch=epoch)
        log.info("squad: epoch %d, EDA rate %.4f", epoch, eda_config.rate(epoch))
        return fit_rows(featurize(augmented), num_rows, np.random.default_rng([config.seed, epoch, FIT_STREAM]))

    return lambda **iterator_args: PerEpochBatches(arrays_for_epoch, num_rows, **iterator_args)


def load_tokenizer(spec, fallback: str = ""):
    import transformers

    source = spec.tokenizer_dir or fallback
    if not source:
        raise ConfigError("the model has no tokenizer files; set task.tokenizer to an HF tokenizer folder")
    return transformers.AutoTokenizer.from_pretrained(source)


def read_splits(t, seed: int) -> tuple[list, list, list]:
    """(train, eval, dev) examples from the task config: files, a hub name, a title split, or generated.
    Dev holds the articles of `task.dev_titles` (SQuAD v2.0), kept out of training and evaluation alike, for
    choices such as the null threshold; it is prepared as the evaluation set is (multi-context included)."""

    def read(source, split, offset):
        if source == GENERATED:
            return generate_examples(t.generated_passages, seed + offset)
        examples, skipped = data.load(source, split, skip_invalid=t.skip_invalid)
        if len(skipped):
            log.warning("%s: %s", source, skipped.summary())
        return examples

    train, dev = read(t.train_file, "train", 0), []
    if t.dev_titles:  # neither trained nor evaluated on
        train, dev = splits.split_by_title(train, tuple(t.dev_titles))
        if t.version == "v1.1":
            log.warning("task.dev_titles %s: left out of training, and unused (SQuAD v1.1 has no threshold)",
                        list(t.dev_titles))  # fmt: skip
            dev = []
    if t.eval_titles:
        train, held_out = splits.split_by_title(train, tuple(t.eval_titles))
    else:
        held_out = read(t.eval_file, "validation", 1) if t.eval_file else []
    if t.version == "v1.1":
        train = [e for e in train if not e.is_impossible]
        held_out = [e for e in held_out if not e.is_impossible]
    if t.contexts_per_question > 1:
        train = splits.as_multi_context(train, t.contexts_per_question, seed)
        held_out = splits.as_multi_context(held_out, t.contexts_per_question, seed + 1)
        dev = splits.as_multi_context(dev, t.contexts_per_question, seed + 2) if dev else dev
    return train, held_out, dev


def read_examples(t, seed: int) -> tuple[list, list]:
    """(train, eval) examples of `read_splits`."""
    return read_splits(t, seed)[:2]


class SquadEvaluation:
    """Logits of every window -> n-best predictions -> official v2.0 (or v1.1) metrics."""

    def __init__(self, examples, features, t):
        self.examples, self.features, self.t = examples, features, t

    def __call__(self, outputs, arrays, null_threshold: float | None = None) -> dict[str, float]:
        """Scores at `null_threshold` (task.null_threshold when None); logits of packed rows are unpacked to
        their windows first."""
        if arrays is not None and "window_index" in arrays:
            outputs = unpack_logits(outputs, arrays, self.features["offsets"].shape[:2])
        version_2 = self.t.version == "v2.0"
        cut = self.t.null_threshold if null_threshold is None else null_threshold
        predicted = postprocess.postprocess(
            self.examples,
            self.features,
            outputs["start_logits"],
            outputs["end_logits"],
            n_best=self.t.n_best,
            max_answer_length=self.t.max_answer_length,
            null_threshold=cut,
            version_2=version_2,
        )
        scores = score_predictions(self.examples, *predicted, null_threshold=cut, version_2=version_2)
        return {f"eval/{k}": float(v) for k, v in scores.items()}


class DevThresholdEvaluation:
    """SQuAD v2.0 evaluation with the null threshold chosen on dev articles (task.dev_titles, kept out of
    training): the official best-F1 sweep on dev, then the held-out questions scored at that threshold.
    `eval/*` are the held-out scores at the chosen threshold (`eval/null_threshold`, or `eval/null_everywhere`
    1 when no cut beats "no answer" on dev), `eval/f1_at_0` the model's own decision, `dev/*` the dev scores;
    `checkpoint.best_metric=dev/best_f1` keeps the checkpoint dev prefers, so that neither the threshold nor
    the checkpoint is chosen on the held-out questions."""

    def __init__(self, held_out: SquadEvaluation, dev: SquadEvaluation):
        self.held_out, self.dev = held_out, dev

    def __call__(self, outputs: dict, eval_sets: dict) -> dict[str, float]:
        dev = self.dev(outputs["dev"], eval_sets["dev"], null_threshold=0.0)
        threshold = dev["eval/best_f1_thresh"]
        all_null = 100.0 * dev.get("eval/NoAns_total", 0.0) / dev["eval/total"]  # no NoAns_* without one
        if dev["eval/best_f1"] <= all_null:
            threshold = -math.inf  # no cut beats "no answer" everywhere on dev: that is the chosen rule
        metrics = self.held_out(outputs["eval"], eval_sets["eval"], null_threshold=threshold)
        metrics["eval/null_everywhere"] = float(threshold == -math.inf)  # logged metrics stay finite
        if threshold != -math.inf:
            metrics["eval/null_threshold"] = threshold
        metrics.update({"dev/" + k.removeprefix("eval/"): v for k, v in dev.items()})
        return metrics


def packed_arrays(features: dict, t, windows_per_row: int, *, for_training: bool) -> dict[str, np.ndarray]:
    """The windows of `features` packed into rows of task.max_seq_length (qajax.data.packing); training keeps
    what the step reads, evaluation also the layout that `unpack_logits` reads."""
    lengths = packing.window_lengths(features["attention_mask"])
    table = packing.pack_windows(lengths, t.max_seq_length, windows_per_row)
    packed = packing.pack(features, table, token_keys=MODEL_INPUTS, label_keys=LABELS)
    if for_training:
        return {k: packed[k] for k in MODEL_INPUTS + packing.PACKING_KEYS + LABELS + (WINDOW_WEIGHT,)}
    return packed


def unpack_logits(outputs: dict, packed: dict, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per-row start/end logits -> [windows, seq] in the windows' order, for the n-best unchanged."""
    return {k: packing.unpack(outputs[k], packed, *shape) for k in ("start_logits", "end_logits")}


def build(config) -> Task:
    t = config.task
    if t.version not in ("v1.1", "v2.0"):
        raise ConfigError(f"task.version={t.version!r}: expected 'v1.1' or 'v2.0'")
    spec, params = load_or_init(config.model, "qa", seed=config.seed, span_head=t.span_head)
    tokenizer = load_tokenizer(spec, t.tokenizer)
    train_examples, eval_examples, dev_examples = read_splits(t, config.seed)
    feature_config = FeatureConfig(t.max_seq_length, t.doc_stride, t.max_query_length)
    cache = Path(t.cache_dir).expanduser()

    packed = config.train.packing

    def featurize_train(examples):  # cached per content: an augmented epoch has its own key
        features = featurize_cached(examples, tokenizer, feature_config, for_training=True, cache_dir=cache)
        if packed:
            return packed_arrays(features, t, config.train.windows_per_row, for_training=True)
        return {k: features[k] for k in MODEL_INPUTS + LABELS}

    def eval_arrays_of(features):  # with labels (the first reference answer): evaluation also reports eval/loss
        if packed:
            return packed_arrays(features, t, config.train.windows_per_row, for_training=False)
        return {k: features[k] for k in MODEL_INPUTS + LABELS}

    train_arrays = featurize_train(train_examples)
    num_train = len(train_arrays["input_ids"])
    make_train_batches = None
    if config.techniques.eda.enabled:  # the contexts augmented anew every epoch
        make_train_batches = eda_batches(config, train_examples, featurize_train, num_train)
    eval_features = None
    if eval_examples:
        eval_features = featurize_cached(eval_examples, tokenizer, feature_config, for_training=True, cache_dir=cache)
    if packed:
        windows = int(train_arrays[WINDOW_WEIGHT].sum())
        log.info("squad: %d train questions -> %d windows in %d packed rows", len(train_examples), windows, num_train)
    else:
        log.info("squad: %d train questions -> %d windows", len(train_examples), num_train)
    eval_arrays = eval_arrays_of(eval_features) if eval_examples else None
    evaluate = SquadEvaluation(eval_examples, eval_features, t) if eval_examples else None
    eval_sets = None
    if eval_examples and dev_examples:  # the null threshold of every evaluation is chosen on the dev articles
        dev_features = featurize_cached(dev_examples, tokenizer, feature_config, for_training=True, cache_dir=cache)
        eval_sets = {"eval": eval_arrays, "dev": eval_arrays_of(dev_features)}
        evaluate = DevThresholdEvaluation(evaluate, SquadEvaluation(dev_examples, dev_features, t))
        log.info("squad: null threshold chosen on %d dev questions (%s)", len(dev_examples), ", ".join(t.dev_titles))

    return span_task(
        spec,
        params,
        start_weight=t.start_weight,
        end_weight=t.end_weight,
        train_arrays=train_arrays,
        make_train_batches=make_train_batches,
        eval_arrays=eval_arrays,
        eval_sets=eval_sets,
        evaluate=evaluate,
        tokens_per_example=t.max_seq_length,
        applies_techniques=APPLIES_TECHNIQUES,
        count_fed=packing.count_fed if packed else count_input_ids,  # examples/s counts windows, not rows
    )


def build_for_shapes(config):
    """The task without data or weights, for ahead-of-time compiles (see `span_task_for_shapes`)."""
    from qajax.tasks.span import span_task_for_shapes

    task, batch_shapes = span_task_for_shapes(config, config.task.max_seq_length)
    return dataclasses.replace(task, applies_techniques=APPLIES_TECHNIQUES), batch_shapes
