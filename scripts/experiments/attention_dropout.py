"""Attention dropout 0.1 vs 0.0 on real data: what the Pallas TPU flash-attention kernel (no dropout inside it)
costs against the explicit path and cuDNN (dropout on the attention probabilities).

    .venv/bin/python scripts/experiments/attention_dropout.py --task multitask --workdir runs/ad_mt_s0 --set seed=0
    .venv/bin/python scripts/experiments/attention_dropout.py --task squad --workdir runs/ad_sq_s0 --set seed=0

Each variant is one run of multitask_minilm.py (its standard settings) or of squad_split.py (the reduced
protocol SQUAD below) with `model.attention_dropout` set and everything else equal; both variants force
`model.attention_implementation=explicit`, so that training and evaluation run the same attention code and
only the dropout on the probabilities differs (`auto` on CPU would pick XLA's fused attention wherever the
rate is 0). Rows: docs/results/attention_dropout.jsonl; report: attention_dropout.md with a PNG beside it.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import multitask_minilm  # noqa: E402  (the scripts beside this one)
import squad_split  # noqa: E402
from ablation import run_variants, save_figure  # noqa: E402

REPORT = multitask_minilm.REPO / "docs" / "results" / "attention_dropout.md"
COMMON = ("model.attention_implementation=explicit",)
VARIANTS = {
    "0.1": (*COMMON, "model.attention_dropout=0.1"),
    "0.0": (*COMMON, "model.attention_dropout=0.0"),
}
# squad_split.py's settings but 1 epoch (211 steps instead of 1,070; the schedule's warmup and decay follow),
# evaluated once at the end: 5 epochs take ~50 minutes a run, too long for seeds x variants on 2 cores.
SQUAD = ("train.epochs=1.0", "train.eval_every=0")
MULTITASK_SCORES = (("SST-5 acc", "eval/sst_accuracy"), ("Quora acc", "eval/quora_accuracy"),
                    ("STS-B Pearson", "eval/sts_pearson"), ("composite", "eval/composite"))  # fmt: skip
SQUAD_SCORES = (("F1", "f1"), ("EM", "exact"), ("HasAns F1", "HasAns_f1"), ("NoAns F1", "NoAns_f1"),
                ("always-answer HasAns F1", "always_answer_HasAns_f1"))  # fmt: skip


def _run_one(workdir: Path, overrides: list[str], command: str, args) -> dict:
    if args.task == "multitask":
        result = multitask_minilm.run(workdir, overrides, command=command)
        result["date"] = datetime.date.today().isoformat()
    else:
        result = squad_split.run(workdir, [*SQUAD, *overrides], report=None, command=command)
        result.pop("evaluations", None)  # one, at the end: its numbers are the row's
    result["task"] = args.task
    return result


def score(row: dict, key: str) -> float:
    return row["scores"][key] if row["task"] == "multitask" else row[key]


def main(argv=None) -> int:
    return run_variants(
        argv, doc=__doc__, script="scripts/experiments/attention_dropout.py", variants=VARIANTS,
        default="0.1,0.0", report=REPORT, run_one=_run_one, write_report=write_report,
        add_arguments=lambda parser: parser.add_argument("--task", choices=("multitask", "squad"), required=True),
    )  # fmt: skip


def write_report(rows: list[dict], path: Path) -> None:
    from qajax.files import atomic_write_text

    atomic_write_text(path, "\n".join(str(r) for r in rows) + "\n")  # replaced by the full report below


if __name__ == "__main__":
    sys.exit(main())
