"""The multitask ablations of reports 002 and 003 on real data (SST-5, Quora, STS-B with MiniLM): the runs
of multitask_minilm.py, once per variant with everything else equal.

    .venv/bin/python scripts/experiments/multitask_ablation.py --workdir runs/mt_ablation --variants base,smart

Variants (VARIANTS below). Report 002: freezing depth (the top 2 or 4 of the 6 layers train, embeddings
frozen) and the learning-rate grid (5e-5, 1e-4 = base, 3e-4). Report 003: SMART on, and the pair-head forms
(Quora as a [u; v; |u-v|] concat head or a cosine, STS-B cross-encoded instead of the siamese cosine).
Each variant is one row of docs/results/multitask_ablation.md (all rows kept in multitask_ablation.jsonl)
with a PNG of the per-task scores; the majority/zero baseline of the same dev rows is printed beside them.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import multitask_minilm  # noqa: E402  (the scripts beside this one)
from ablation import rows_per_variant, run_variants, save_figure  # noqa: E402

REPORT = multitask_minilm.REPO / "docs" / "results" / "multitask_ablation.md"
VARIANTS = {
    "base": (),
    "freeze-top2": ("techniques.freeze.enabled=true", "techniques.freeze.num_trainable_layers=2"),
    "freeze-top4": ("techniques.freeze.enabled=true", "techniques.freeze.num_trainable_layers=4"),
    "lr-5e-5": ("optimizer.learning_rate=5e-5",),
    "lr-3e-4": ("optimizer.learning_rate=3e-4",),
    "smart": ("techniques.smart.enabled=true",),
    "quora-concat": ("task.quora.form=concat",),
    "quora-cosine": ("task.quora.form=cosine",),
    "sts-cross": ("task.sts.form=cross",),
}
SCORES = (("SST-5 acc", "eval/sst_accuracy"), ("Quora acc", "eval/quora_accuracy"),
          ("STS-B Pearson", "eval/sts_pearson"), ("composite", "eval/composite"))  # fmt: skip


def write_report(rows: list[dict], path: Path) -> None:
    from qajax.files import atomic_write_text

    base = rows[-1]["baseline"] if rows else {}
    lines = [
        "# Ablations of reports 002 and 003 on SST-5, Quora and STS-B (real data)",
        "",
        "Written by `scripts/experiments/multitask_ablation.py` from the runs it made (rows:",
        "`multitask_ablation.jsonl`). Settings: `scripts/experiments/multitask_minilm.py` (MiniLM-L6-H384, 64",
        "tokens, batch 16, 240 steps of the shuffled schedule, 500 dev rows per task); one change per variant.",
        "Composite = mean(SST accuracy, Quora accuracy, (Pearson + 1) / 2).",
        "",
        "| command | date | seed | variant | minutes | " + " | ".join(name for name, _ in SCORES) + " |",
        "|---" * (5 + len(SCORES)) + "|",
    ]
    notes = []
    for r in rows:
        variant = r["variant"]
        if r.get("note"):  # added to a row afterwards, e.g. when a later change superseded it
            notes.append(r["note"])
            variant += f" [{len(notes)}]"
        cells = [f"`{r['command']}`", r["date"], str(r["seed"]), variant, f"{r['seconds'] / 60:.1f}"]
        cells += [f"{r['scores'][key]:.3f}" for _, key in SCORES]
        lines.append("| " + " | ".join(cells) + " |")
    if base:
        lines.append(
            f"| majority / zero baseline | | | | | {base['sst']:.3f} | {base['quora']:.3f} | 0.000 | "
            f"{base['composite']:.3f} |"
        )
        lines += [""] + [f"[{i}] {note}" for i, note in enumerate(notes, 1)] + [""] * bool(notes)
        groups = rows_per_variant(rows)
        lines += [
            "Mean over seeds per variant (one value per seed in brackets; a seed run twice counts its latest row,",
            "rows with a note are left out):",
            "",
            "| variant | seeds | " + " | ".join(name for name, _ in SCORES) + " |",
            "|---" * (2 + len(SCORES)) + "|",
        ]
        for variant, runs in groups.items():
            cells = [variant, ", ".join(str(r["seed"]) for r in runs)]
            for _, key in SCORES:
                values = [r["scores"][key] for r in runs]
                cells.append(f"{np.mean(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![scores per variant]({path.with_suffix('.png').name})"]
        plot(groups, path.with_suffix(".png"))
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot(groups: dict[str, list[dict]], path: Path) -> None:
    """Mean score per variant as bars, each seed as a dot on its bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(groups))
    width = 0.8 / len(SCORES)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 + 1.2 * len(groups)), 3.8))
    for i, (label, key) in enumerate(SCORES):
        values = [[r["scores"][key] for r in runs] for runs in groups.values()]
        offset = x + (i - (len(SCORES) - 1) / 2) * width
        ax.bar(offset, [np.mean(v) for v in values], width, label=label)
        for xi, v in zip(offset, values, strict=True):
            ax.plot([xi] * len(v), v, "k.", ms=4)
    first = next(iter(groups.values()))[0]
    ax.axhline(first["baseline"]["composite"], color="k", ls="--", lw=1, label="baseline composite")
    ax.set_xticks(x, list(groups), rotation=20)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=5, frameon=False)
    save_figure(fig, path)


def _run_one(workdir: Path, overrides: list[str], command: str, args) -> dict:
    result = multitask_minilm.run(workdir, overrides, command=command)
    result["date"] = datetime.date.today().isoformat()
    return result


def main(argv=None) -> int:
    return run_variants(
        argv, doc=__doc__, script="scripts/experiments/multitask_ablation.py", variants=VARIANTS,
        default="base,smart", report=REPORT, run_one=_run_one, write_report=write_report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
