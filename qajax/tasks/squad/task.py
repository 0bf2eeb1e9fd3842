"""Span QA (SQuAD v1.1/v2.0, multi-context): data -> windows -> span loss -> n-best -> official metric."""

from __future__ import annotations

import logging
from pathlib import Path

import ml_collections

from qajax.errors import ConfigError
from qajax.models.factory import load_or_init
from qajax.tasks.base import Task
from qajax.tasks.span import LABELS, MODEL_INPUTS, span_task
from qajax.tasks.squad import data, metric, postprocess
from qajax.tasks.squad.features import FeatureConfig, featurize_cached
from qajax.tasks.squad.generate import generate_examples

log = logging.getLogger(__name__)
GENERATED = "generated"  # task.train_file / eval_file: the run-time generated data set of the demo


def default_config() -> ml_collections.ConfigDict:
    """The `task` section of span-QA configs (configs/squad.py, configs/demo.py start from it)."""
    t = ml_collections.ConfigDict()
    t.name = "squad"
    t.version = "v2.0"  # v1.1: unanswerable questions are dropped, no null answers
    t.train_file = ""  # a SQuAD/multi-context .json, a hub name (squad_v2), tfds:<name>, or "generated"
    t.eval_file = ""  # '' with eval_titles: held-out articles of train_file
    t.eval_titles = ()  # articles of train_file held out for evaluation
    t.generated_passages = 300  # with "generated": passages of 4 questions each
    t.skip_invalid = False  # True: skip malformed questions and report them
    t.contexts_per_question = 1  # > 1: seed 000's open-domain setting (distractor passages)
    t.tokenizer = ""  # '' = the model's own tokenizer files
    t.max_seq_length = 384
    t.doc_stride = 128  # tokens of overlap between windows of a long context
    t.max_query_length = 64
    t.start_weight = 1.0  # seed 000's weighted-loss ablation: start_weight=2
    t.end_weight = 1.0
    t.n_best = 20
    t.max_answer_length = 30  # tokens
    t.null_threshold = 0.0  # predict "" when null score - best span score > this
    t.cache_dir = "~/.cache/qajax/features"
    return t


def load_tokenizer(spec, fallback: str = ""):
    import transformers

    source = spec.tokenizer_dir or fallback
    if not source:
        raise ConfigError("the model has no tokenizer files; set task.tokenizer to an HF tokenizer folder")
    return transformers.AutoTokenizer.from_pretrained(source)


def read_examples(t, seed: int) -> tuple[list, list]:
    """(train, eval) examples from the task config: files, a hub name, a title split, or generated."""

    def read(source, split, offset):
        if source == GENERATED:
            return generate_examples(t.generated_passages, seed + offset)
        examples, skipped = data.load(source, split, skip_invalid=t.skip_invalid)
        if len(skipped):
            log.warning("%s: %s", source, skipped.summary())
        return examples

    train = read(t.train_file, "train", 0)
    if t.eval_titles:
        train, held_out = data.split_by_title(train, tuple(t.eval_titles))
    else:
        held_out = read(t.eval_file, "validation", 1) if t.eval_file else []
    if t.version == "v1.1":
        train = [e for e in train if not e.is_impossible]
        held_out = [e for e in held_out if not e.is_impossible]
    if t.contexts_per_question > 1:
        train = data.as_multi_context(train, t.contexts_per_question, seed)
        held_out = data.as_multi_context(held_out, t.contexts_per_question, seed + 1)
    return train, held_out


def metric_dataset(examples) -> list[dict]:
    """The official metric's input (ids and reference texts are all it reads) for any examples,
    multi-context ones included."""
    qas = [
        {
            "id": e.id,
            "question": e.question,
            "answers": [{"text": a.text, "answer_start": a.start} for a in e.answers],
            "is_impossible": e.is_impossible,
        }
        for e in examples
    ]
    return [{"title": "", "paragraphs": [{"context": "", "qas": qas}]}]


class SquadEvaluation:
    """Logits of every window -> n-best predictions -> official v2.0 (or v1.1) metrics."""

    def __init__(self, examples, features, t):
        self.examples, self.features, self.t = examples, features, t
        self.dataset = metric_dataset(examples)
        self.last = None  # (predictions, nbest, null_odds) of the latest call, for the prediction files

    def __call__(self, outputs, arrays) -> dict[str, float]:
        version_2 = self.t.version == "v2.0"
        self.last = postprocess.postprocess(
            self.examples,
            self.features,
            outputs["start_logits"],
            outputs["end_logits"],
            n_best=self.t.n_best,
            max_answer_length=self.t.max_answer_length,
            null_threshold=self.t.null_threshold,
            version_2=version_2,
        )
        predictions, _, null_odds = self.last
        if version_2:
            scores = metric.evaluate_v2(self.dataset, predictions, na_probs=null_odds)
        else:
            scores = metric.evaluate_v1(self.dataset, predictions)
        return {f"eval/{k}": float(v) for k, v in scores.items()}

    def write(self, out_dir: str | Path) -> None:
        if self.last is None:
            raise ValueError("nothing evaluated yet")
        postprocess.write_predictions(out_dir, *self.last)


def build(config) -> Task:
    t = config.task
    if t.version not in ("v1.1", "v2.0"):
        raise ConfigError(f"task.version={t.version!r}: expected 'v1.1' or 'v2.0'")
    spec, params = load_or_init(config.model, "qa", seed=config.seed)
    tokenizer = load_tokenizer(spec, t.tokenizer)
    train_examples, eval_examples = read_examples(t, config.seed)
    feature_config = FeatureConfig(t.max_seq_length, t.doc_stride, t.max_query_length)
    cache = Path(t.cache_dir).expanduser()
    train_features = featurize_cached(train_examples, tokenizer, feature_config, for_training=True, cache_dir=cache)
    eval_features = None
    if eval_examples:
        # With labels (the first reference answer) so that evaluation also reports eval/loss.
        eval_features = featurize_cached(eval_examples, tokenizer, feature_config, for_training=True, cache_dir=cache)
    log.info("squad: %d train questions -> %d windows", len(train_examples), len(train_features["input_ids"]))

    return span_task(
        spec,
        params,
        start_weight=t.start_weight,
        end_weight=t.end_weight,
        train_arrays={k: train_features[k] for k in MODEL_INPUTS + LABELS},
        eval_arrays={k: eval_features[k] for k in MODEL_INPUTS + LABELS} if eval_examples else None,
        evaluate=SquadEvaluation(eval_examples, eval_features, t) if eval_examples else None,
        tokens_per_example=t.max_seq_length,
    )
