"""The few calls a notebook needs, each a thin wrapper over the modules that do the work (re-exported lazily
by `qajax/__init__.py`):

    import qajax
    config = qajax.load_config("configs/tiny.py", ["train.steps=50"])
    summary = qajax.fit(config, "runs/tiny")
    answerer = qajax.predictor("runs/squad")                 # a workdir, checkpoint, HF folder or hub id
    qajax.answer(answerer, "Who founded it?", "Ada Morrow founded Brindlewick.")
    scores = qajax.evaluate(answerer, "dev-v2.0.json")
"""

from __future__ import annotations

from pathlib import Path

WINDOW_KEYS = ("max_seq_length", "doc_stride", "max_query_length")


def _window_defaults() -> dict:
    """HF run_qa's windows, as qajax's span task defines them (`qajax.tasks.squad.features`)."""
    from qajax.tasks.squad import features

    return {
        "max_seq_length": features.MAX_SEQ_LENGTH,
        "doc_stride": features.DOC_STRIDE,
        "max_query_length": features.MAX_QUERY_LENGTH,
    }


def run_windows(ckpt: str | Path) -> dict:
    """task.max_seq_length / doc_stride / max_query_length of a training workdir's config.json; {} for
    anything else (a model checkpoint or an HF folder, whose config.json is the model's)."""
    from qajax import config as config_lib

    if not (Path(ckpt) / "spec.json").is_file() or not (Path(ckpt) / config_lib.SAVED_NAME).is_file():
        return {}
    task = config_lib.read_saved(ckpt).get("task", {})
    return {k: task[k] for k in WINDOW_KEYS if isinstance(task.get(k), int)}


def window_settings(ckpt: str | Path, **given) -> dict:
    """The windows `given` (None: unset), else those the run trained with, else run_qa's."""
    run = run_windows(ckpt)
    return {k: given[k] if given.get(k) is not None else run.get(k, _window_defaults()[k]) for k in WINDOW_KEYS}


def load_model(source: str | Path, head: str = "qa"):
    """(model, params, spec) from a training workdir, a qajax checkpoint, an HF folder or a hub id."""
    from qajax.hub import resolve

    path = resolve(source, what="model")
    if (path / "spec.json").is_file():
        from qajax.checkpoints.saved import load_model as load_saved

        return load_saved(path)
    import qajax.hf

    return qajax.hf.from_pretrained(path, head=head)


def predictor(source: str | Path, *, batch_size: int = 32, **windows):
    """A `SpanPredictor` for a QA model, with the windows its run trained with (or `windows`)."""
    from qajax.hub import resolve
    from qajax.tasks.squad.features import FeatureConfig
    from qajax.tasks.squad.inference import SpanPredictor, load_qa_model

    path = resolve(source, what="model")
    model, params, spec = load_qa_model(path)
    features = FeatureConfig(**window_settings(path, **windows))
    return SpanPredictor(model, params, spec, feature_config=features, batch_size=batch_size)


def answer(span_predictor, question: str, context: str | list[str], **options) -> dict:
    """The best answer to `question` over `context` (one passage or several): text, score, character span."""
    from qajax.tasks.squad.inference import answer as answer_one

    return answer_one(span_predictor, question, context, **options)


def evaluate(span_predictor, data: str | Path, *, version: str = "v2.0", out_dir=None, **options) -> dict:
    """Official SQuAD metrics of `span_predictor` on a SQuAD / multi-context .json (or hub data set)."""
    from qajax.tasks.squad import data as squad_data
    from qajax.tasks.squad.inference import evaluate as evaluate_examples

    examples, _ = squad_data.load(data, "validation")
    if version != "v2.0":
        examples = [e for e in examples if not e.is_impossible]
    return evaluate_examples(span_predictor, examples, out_dir=out_dir, version_2=version == "v2.0", **options)
