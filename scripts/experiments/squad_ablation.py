"""The SQuAD ablations of reports 000, 001 and 004 on real data: the SQuAD 2.0 article split of
squad_split.py (8 train, 1 dev, 3 held out) trained once per variant with everything else equal, so the rows
differ only in the technique.

    .venv/bin/python scripts/experiments/squad_ablation.py --workdir runs/ablation --variants baseline,sda,sdv

Variants (VARIANTS below): baseline, weighted (start loss x2, report 000's loss weighting), eda (the 0 -> 10%
rate schedule), sda (parameter-averaged teacher of the last 3 steps), sdv (output-averaged teacher of the
last 3 steps), smart; report 001's lora and prompt; report 004's span heads (scalar_mix, layer_attention,
bilinear_layer_attention, extra_layer). Each trains squad_split.SETTINGS (`--epochs` to change its 5, then
any --set), is scored as squad_split.run scores it (official v2.0 metric), and becomes one row of
docs/results/squad_ablation.md (rows of earlier runs are kept in squad_ablation.jsonl) with a PNG of F1,
HasAns F1 and the always-answer HasAns F1 per variant.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import squad_split  # noqa: E402  (the scripts beside this one)
from ablation import rows_per_variant, run_variants, save_figure  # noqa: E402

REPORT = squad_split.REPO / "docs" / "results" / "squad_ablation.md"
VARIANTS = {
    "baseline": (),
    "weighted": ("task.start_weight=2.0",),
    "eda": ("techniques.eda.enabled=true",),
    "sda": ("techniques.sda.enabled=true", "techniques.sda.window=3"),
    "sdv": ("techniques.sdv.enabled=true", "techniques.sdv.window=3"),
    "smart": ("techniques.smart.enabled=true",),
    # report 001: parameter-efficient fine-tuning (adapters / soft prompt and the span head train)
    "lora": ("techniques.lora.enabled=true", "techniques.lora.rank=8"),
    "prompt": ("techniques.prompt.enabled=true",),
    # report 004: span heads over the layers instead of the last one
    "scalar_mix": ("task.span_head=scalar_mix",),
    "layer_attention": ("task.span_head=layer_attention",),
    "bilinear_layer_attention": ("task.span_head=bilinear_layer_attention",),
    "extra_layer": ("task.span_head=extra_layer",),
}
COLUMNS = (
    ("F1", "f1"),
    ("EM", "exact"),
    ("HasAns_f1", "HasAns_f1"),
    ("NoAns_f1", "NoAns_f1"),
    ("F1@0", "f1_at_0"),
    ("always-answer HasAns_f1", "always_answer_HasAns_f1"),
    ("tuned F1 (upper bound)", "tuned_f1"),
)


SETTINGS_KEYS = ("epochs", "max_seq_length", "doc_stride", "batch_size", "learning_rate")


def write_report(rows: list[dict], path: Path) -> None:
    from qajax.files import atomic_write_text

    lines = [
        "# Ablations of reports 000, 001 and 004 on SQuAD 2.0 (8 articles train, 1 dev, 3 held out; real data)",
        "",
        "Written by `scripts/experiments/squad_ablation.py` from the runs it made (rows: `squad_ablation.jsonl`).",
        "Same data, model (pretrained MiniLM-L6-H384, fresh span head), settings and seed in every row of one",
        "command; only the technique differs. F1, EM, HasAns_f1, NoAns_f1: the final model on the held-out",
        "questions at the null threshold chosen on the dev article (Imperialism, in neither training nor",
        "evaluation). F1@0: the model's own null decision. Tuned: the sweep on the held-out questions",
        "themselves, an upper bound and not a result. Always-null baseline F1: "
        + (f"{rows[-1]['baseline_f1']:.2f}." if rows else "-"),
        "",
        "| command | date | variant | seed | steps | minutes | " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|---" * (6 + len(COLUMNS)) + "|",
    ]
    for r in rows:
        cells = [f"`{r['command']}`", r["date"], r["variant"], str(r["seed"]), str(r["steps"])]
        cells += [f"{r['seconds'] / 60:.0f}"] + [f"{r[key]:.2f}" for _, key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    groups = _by_settings(rows)
    for same in groups.values():
        r = same[0]
        lines += [
            "",
            f"Settings: {r['epochs']} epochs, max_seq_length {r['max_seq_length']}, doc_stride {r['doc_stride']}, "
            f"batch {r['batch_size']}, learning rate {r['learning_rate']}, on {r['machine']}.",
            "Mean over the seeds run with them (one value per seed in brackets):",
            "",
            "| variant | seeds | F1 | HasAns_f1 | always-answer HasAns_f1 | tuned F1 |",
            "|---|---|---|---|---|---|",
        ]
        for variant, runs in rows_per_variant(same).items():
            cells = [variant, ", ".join(str(x["seed"]) for x in runs)]
            for key in ("f1", "HasAns_f1", "always_answer_HasAns_f1", "tuned_f1"):
                values = [x[key] for x in runs]
                cells.append(f"{sum(values) / len(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})")
            lines.append("| " + " | ".join(cells) + " |")
    if groups:
        # The plot: the settings most variants were compared under (the latest of equals).
        plotted = max(reversed(list(groups.values())), key=lambda same: len(rows_per_variant(same)))
        lines += [
            "",
            f"The plot: the {plotted[0]['epochs']}-epoch, learning-rate {plotted[0]['learning_rate']} "
            "settings, the most variants.",
            "",
            f"![F1 per variant]({path.with_suffix('.png').name})",
        ]
        plot(plotted, path.with_suffix(".png"))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _by_settings(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows grouped by their SETTINGS_KEYS values, groups in first-seen order: rows comparable with each other."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in SETTINGS_KEYS), []).append(r)
    return groups


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = (("f1", "F1"), ("HasAns_f1", "HasAns F1"), ("always_answer_HasAns_f1", "always-answer HasAns F1"))
    groups = rows_per_variant(rows)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 + 1.4 * len(groups)), 3.8))
    for i, (key, label) in enumerate(keys):
        values = [[r[key] for r in runs] for runs in groups.values()]
        offset = x + (i - 1) * 0.27
        ax.bar(offset, [np.mean(v) for v in values], 0.27, label=label)
        for xi, v in zip(offset, values, strict=True):  # each seed as a dot on its bar
            ax.plot([xi] * len(v), v, "k.", ms=4)
    ax.axhline(rows[0]["baseline_f1"], color="k", ls="--", lw=1, label="always-null F1")
    ax.set_xticks(x, list(groups))
    ax.set_ylabel("score (held-out 3 articles)")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    save_figure(fig, path)


def _run_one(workdir: Path, overrides: list[str], command: str, args) -> dict:
    epochs = [f"train.epochs={args.epochs}"] if args.epochs else []  # else squad_split's
    overrides = [*epochs, "train.eval_every=0", *overrides]  # the final model only
    return squad_split.run(workdir, overrides, report=None, command=command)


def main(argv=None) -> int:
    return run_variants(
        argv, doc=__doc__, script="scripts/experiments/squad_ablation.py", variants=VARIANTS,
        default="baseline,sda,sdv", report=REPORT, run_one=_run_one, write_report=write_report,
        add_arguments=lambda parser: parser.add_argument("--epochs", type=float, help="default: squad_split's"),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
