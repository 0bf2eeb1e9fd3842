"""Multitask on real data: fine-tune the pretrained MiniLM on subsets of SST-5, Quora and STS-B (the minBERT
files of ../shared/data/minbert), evaluate on the dev files, and compare with the majority/zero baseline
(the training set's majority class for SST and Quora, a constant for STS: Pearson 0).

    .venv/bin/python scripts/experiments/multitask_minilm.py --workdir runs/multitask_minilm

Trains configs/multitask.py with SETTINGS below (then any --set, which win), writes the dev predictions
(input format) and confusion matrices to WORKDIR/predictions and the per-task curves to
WORKDIR/multitask_curves.png, and prints one JSON line with the scores and the baseline. Sized for a busy
2-core CPU: sequences of 64 tokens, batch 16, a few hundred steps, dev subsets.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from qajax.host_memory import keep_freed_host_memory

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/multitask.py"
SETTINGS = (
    "task.max_seq_length=64",
    "task.max_eval_examples=500",  # 500 random rows of each dev file (seeded)
    "task.pooling=mean",  # MiniLM (all-MiniLM-L6-v2) was trained as a mean-pooled sentence encoder
    "task.sts.form=cosine",  # ... so its cosine already ranks STS pairs; report 003's siamese cosine head
    "task.schedule=shuffled",
    "train.epochs=0.0",
    "train.steps=240",
    "train.batch_size=16",
    "train.log_every=20",
    "train.eval_every=0",  # at the end only
    "optimizer.learning_rate=1e-4",
    "optimizer.warmup_ratio=0.1",
    "checkpoint.every_steps=1000",
    "checkpoint.best_metric=",
    "log.progress=false",
)


def run(workdir: str | Path, overrides=(), *, command: str = "") -> dict:
    """Trains SETTINGS (then `overrides`) in `workdir`; returns the scores, the baseline on the same rows,
    the seconds and the command."""
    from qajax import config as config_lib
    from qajax.run import train
    from qajax.tasks.multitask import data, metrics, report
    from qajax.tasks.multitask.task import subset

    workdir = Path(workdir)
    overrides = [*SETTINGS, f"task.predictions_dir={workdir / 'predictions'}", *overrides]
    config = config_lib.load(CONFIG, overrides)
    command = command or shlex.join(
        ["qajax", "train", CONFIG, "--workdir", str(workdir)] + [f"--set={o}" for o in overrides]
    )
    print("command:", command)
    started = time.perf_counter()
    summary = train(config, workdir)
    seconds = time.perf_counter() - started

    t = config.task
    root = Path(t.data_dir)

    def labels(name, split, file, limit):  # the examples the run used
        examples = subset(data.read(root / file, name, skipped=[]), limit, config.seed, name, split)
        return [e.label for e in examples]

    train_labels = {n: labels(n, "train", t[n].train_file, t.max_train_examples) for n in ("sst", "quora")}
    eval_labels = {n: labels(n, "eval", t[n].eval_file, t.max_eval_examples) for n in ("sst", "quora")}
    baseline = metrics.majority_baseline(train_labels, eval_labels)
    report.plot_task_curves(workdir)
    scores = {k: v for k, v in summary.items() if k.startswith("eval/")}
    return {
        "command": command,
        "seed": config.seed,
        "scores": scores,
        "baseline": baseline,
        "seconds": round(seconds),
        "compilations": summary["compilations"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/multitask_minilm")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    keep_freed_host_memory()  # see qajax/host_memory.py: before the first JAX computation
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    result = run(args.workdir, args.set)
    print(json.dumps({k: v for k, v in result.items() if k not in ("command", "seed")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
