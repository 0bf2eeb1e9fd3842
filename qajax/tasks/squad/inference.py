"""Span QA on new data with a trained model: `qajax eval` (metrics + prediction files) and `qajax predict`."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from qajax.data.batches import eval_batches
from qajax.errors import CheckpointError
from qajax.tasks.span import MODEL_INPUTS
from qajax.tasks.squad import postprocess
from qajax.tasks.squad.data import Example
from qajax.tasks.squad.features import FeatureConfig, featurize
from qajax.tasks.squad.postprocess import MAX_ANSWER_LENGTH, N_BEST
from qajax.tasks.squad.scoring import metric_dataset, score_predictions
from qajax.tasks.squad.task import load_tokenizer


def load_qa_model(path: str | Path, **runtime):
    """(model, params, spec) from a training workdir, a qajax model checkpoint or an HF folder."""
    path = Path(path)
    if (path / "spec.json").is_file():
        from qajax.checkpoints.saved import load_model

        model, params, spec = load_model(path, **runtime)
    else:
        import qajax.hf

        model, params, spec = qajax.hf.from_pretrained(path, head="qa", **runtime)
    if spec.head != "qa":
        raise CheckpointError(f"{path}: a {spec.head} model; span QA needs a qa head")
    return model, params, spec


def dev_null_threshold(path: str | Path, step: int | None = None) -> tuple[float, int] | None:
    """(threshold, step): the null threshold a training run chose on its dev articles (task.dev_titles) at the
    evaluation of the checkpoint that `load_qa_model(path)` restores (or of `step`), from its metrics.jsonl;
    -inf when dev preferred "no answer" everywhere. None for anything else: an HF folder, a model checkpoint,
    a run without dev articles or without an evaluation at that step."""
    import math

    from qajax.checkpoints.saved import training_step
    from qajax.train.logs import METRICS_FILE, read_metrics

    path = Path(path)
    if not (path / "spec.json").is_file() or not (path / METRICS_FILE).is_file():
        return None
    chosen = training_step(path, step)
    if chosen is None:
        return None
    found = None
    for record in read_metrics(path / METRICS_FILE):  # a resumed run may log a step twice: the last counts
        if record["step"] != chosen:
            continue
        if record.get("eval/null_everywhere") == 1:
            found = (-math.inf, chosen)
        elif "eval/null_threshold" in record:
            found = (float(record["eval/null_threshold"]), chosen)
    return found


class SpanPredictor:
    """Windows -> logits (one compiled shape: the last batch is padded) -> n-best answers."""

    def __init__(self, model, params, spec, *, feature_config: FeatureConfig, batch_size: int = 32, tokenizer=None):
        self.params, self.feature_config, self.batch_size = params, feature_config, batch_size
        self.tokenizer = tokenizer or load_tokenizer(spec)
        self.logits = jax.jit(
            lambda params, batch: model.apply({"params": params}, *(batch[k] for k in MODEL_INPUTS))[:2]
        )

    def __call__(
        self, examples, *, n_best=N_BEST, max_answer_length=MAX_ANSWER_LENGTH, null_threshold=0.0, version_2=True
    ):
        features = featurize(examples, self.tokenizer, self.feature_config, for_training=False)
        starts, ends = [], []
        for batch in eval_batches({k: features[k] for k in MODEL_INPUTS}, batch_size=self.batch_size):
            start, end = jax.device_get(self.logits(self.params, batch))
            starts.append(start)
            ends.append(end)
        count = len(features["input_ids"])
        start_logits, end_logits = np.concatenate(starts)[:count], np.concatenate(ends)[:count]
        return postprocess.postprocess(
            examples,
            features,
            start_logits,
            end_logits,
            n_best=n_best,
            max_answer_length=max_answer_length,
            null_threshold=null_threshold,
            version_2=version_2,
        )


def evaluate(
    predictor: SpanPredictor, examples, *, out_dir=None, version_2=True, null_threshold=0.0, bertscore=None, **options
) -> dict:
    """Official metrics of the predictions (`scoring.score_predictions`); `bertscore`
    (`tasks.squad.bertscore.evaluate_bertscore` with its scorer and options bound) adds the BERTScore keys,
    judged with the same na_probs."""
    predictions, nbest, null_odds = predictor(examples, version_2=version_2, null_threshold=null_threshold, **options)
    if out_dir is not None:
        postprocess.write_predictions(out_dir, predictions, nbest, null_odds)
    scores = score_predictions(
        examples, predictions, nbest, null_odds, null_threshold=null_threshold, version_2=version_2
    )
    if bertscore is not None:
        # The "no answer" cut is the one the predictions were made with (the metric's default, 1.0, would blank
        # answers kept by a higher null_threshold).
        judged = dict(na_probs=null_odds, na_prob_thresh=null_threshold) if version_2 else dict(na_probs=None)
        scores.update(bertscore(metric_dataset(examples), predictions, version_2=version_2, **judged))
    return scores


def answer(predictor: SpanPredictor, question: str, context: str | list[str], **options) -> dict:
    """The best answer to one question over one or several contexts: text, score, span, no-answer odds."""
    contexts = (context,) if isinstance(context, str) else tuple(context)
    example = Example("question", question, contexts, ())
    predictions, nbest, null_odds = predictor([example], **options)
    best = next((n for n in nbest["question"] if n["char_start"] >= 0), None)
    result = {"question": question, "answer": predictions["question"], "null_odds": null_odds.get("question")}
    if best is not None:
        result.update(
            best_span=best["text"],
            score=best["start_logit"] + best["end_logit"],
            probability=best["probability"],
            context_index=best["context_index"],
            char_start=best["char_start"],
            char_end=best["char_end"],
        )
    return result
