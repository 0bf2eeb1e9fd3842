"""The experiment scripts' reports: every run row in the table, the PNG beside it, nothing made up."""

from __future__ import annotations

import math

import pytest

from tests.experiment_scripts import EXPERIMENTS, load_script


def _row(variant: str, f1: float, command: str = "scripts/experiments/squad_ablation.py --variants a,b", seed=0,
         epochs=1.5) -> dict:  # fmt: skip
    return dict(
        command=command, date="2026-11-24", variant=variant, steps=237, seconds=600.0, f1=f1, exact=f1 - 1,
        HasAns_f1=4.0, NoAns_f1=95.0, f1_at_0=48.5, always_answer_HasAns_f1=31.0, tuned_f1=52.0,
        baseline_f1=49.21, epochs=epochs, max_seq_length=384, doc_stride=128, batch_size=16, learning_rate=2e-4,
        seed=seed, machine="x86_64, 2 CPU cores",
    )  # fmt: skip


def test_ablation_report_lists_every_row_and_averages_the_seeds_of_each_settings(tmp_path):
    ablation = load_script("squad_ablation")
    rows = [
        _row("baseline", 40.0, command="other settings", epochs=1.0),
        _row("baseline", 47.5),
        _row("sdv", 51.25),
        _row("baseline", 49.0, command="seed 1", seed=1),
        _row("sdv", 50.75, command="seed 1", seed=1),
    ]
    report = tmp_path / "ablation.md"
    ablation.write_report(rows, report)
    text = report.read_text()
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(table) == 5 and "40.00" in table[0] and "51.25" in table[2]
    summaries = text.split("Settings: ")[1:]
    assert len(summaries) == 2 and summaries[0].startswith("1.0 epochs") and summaries[1].startswith("1.5 epochs")
    assert "| baseline | 0 | 40.00 (40.00) |" in summaries[0] and "sdv" not in summaries[0]
    means = {line.split(" | ")[0][2:]: line for line in summaries[1].splitlines() if line.startswith("| ")}
    # (47.5 + 49.0) / 2 and (51.25 + 50.75) / 2: the 1-epoch row has other settings and stays out
    assert means["baseline"].startswith("| baseline | 0, 1 | 48.25 (47.50, 49.00) |")
    assert means["sdv"].startswith("| sdv | 0, 1 | 51.00 (51.25, 50.75) |")
    assert "The plot: the 1.5-epoch" in text  # two variants there, one in the 1-epoch settings
    assert "Always-null baseline F1: 49.21" in text and "![F1 per variant](ablation.png)" in text
    assert (tmp_path / "ablation.png").stat().st_size > 5000
    assert not list(tmp_path.glob("*.tmp*"))


def test_ablation_refuses_unknown_variants(capsys):
    ablation = load_script("squad_ablation")
    with pytest.raises(SystemExit):
        ablation.main(["--workdir", "unused", "--variants", "baseline,nope"])
    assert "unknown variants ['nope']" in capsys.readouterr().err


def test_multitask_ablation_report_has_the_baseline_row_and_a_plot(tmp_path):
    ablation = load_script("multitask_ablation")
    scores = {
        "eval/sst_accuracy": 0.37,
        "eval/quora_accuracy": 0.772,
        "eval/sts_pearson": 0.838,
        "eval/composite": 0.687,
    }
    baseline = {"sst": 0.268, "quora": 0.604, "sts": 0.0, "composite": 0.457}
    row = lambda v, seed=0, **extra: dict(  # noqa: E731
        command="c", date="2026-11-24", seed=seed, variant=v, seconds=349, scores=scores, baseline=baseline, **extra
    )
    other = {**scores, "eval/composite": 0.601}
    rows = [
        row("base"),
        row("smart"),
        dict(row("smart", seed=1), scores=other),
        dict(row("base", seed=1), scores={**scores, "eval/composite": 0.1}, note="superseded"),
    ]
    ablation.write_report(rows, tmp_path / "mt.md")
    text = (tmp_path / "mt.md").read_text()
    assert text.count("| 0.370 | 0.772 | 0.838 | 0.687 |") == 2
    assert "| majority / zero baseline | | | | | 0.268 | 0.604 | 0.000 | 0.457 |" in text
    assert "| base [1] |" in text and "[1] superseded" in text
    # Means over seeds; the noted row stays out of them: (0.687 + 0.601) / 2 = 0.644.
    assert "| base | 0 | 0.370 (0.370) |" in text and text.rstrip().endswith("(mt.png)")
    assert (
        "| smart | 0, 1 | 0.370 (0.370, 0.370) | 0.772 (0.772, 0.772) | 0.838 (0.838, 0.838) | 0.644 (0.687, 0.601) |"
        in text
    )
    assert (tmp_path / "mt.png").stat().st_size > 5000


def test_dev_runs_take_their_span_scores_from_the_loop_evaluation():
    import types

    split = load_script("squad_split")
    summary = {"eval/always_answer_HasAns_f1": 40.0, "eval/best_f1": 51.0, "eval/best_f1_thresh": -2.0,
               "dev/total": 364, "eval/exact": 47.0, "eval/f1": 50.0, "eval/HasAns_f1": 20.0, "eval/NoAns_f1": 80.0,
               "eval/null_threshold": -1.5}  # fmt: skip
    scores = split.loop_span_scores(summary, types.SimpleNamespace(dev_titles=("Imperialism",)))
    assert scores["threshold_chosen_on"] == "dev articles Imperialism" and scores["train_sample"] == 364
    assert (scores["train_threshold"], scores["train_threshold_f1"], scores["tuned_f1"]) == (-1.5, 50.0, 51.0)
    del summary["eval/null_threshold"]  # dev preferred "" everywhere
    assert split.loop_span_scores(summary, types.SimpleNamespace(dev_titles=("X",)))["train_threshold"] == -math.inf


def test_answerability_auc_and_curve_match_their_definitions():
    import numpy as np

    answerability = load_script("squad_answerability")
    rng = np.random.default_rng(0)
    odds = np.round(rng.normal(size=60), 1)  # rounded: ties between the two groups
    empty = rng.random(60) < 0.5
    span_f1 = np.where(empty, 0.0, rng.random(60))
    pos, neg = odds[empty], odds[~empty]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert answerability.roc_auc(pos, neg) == pytest.approx(pairs, abs=1e-12)
    assert answerability.roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0 and answerability.roc_auc([], [1.0]) != 0.5

    curve = answerability.answered_curve(odds, empty, span_f1, steps=4)
    assert [x for x, _ in curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    order = np.argsort(odds, kind="stable")
    for fraction, f1 in curve:  # the official score: answered questions score their span F1, the rest "" -> 1/0
        answered = np.zeros(60, bool)
        answered[order[: round(fraction * 60)]] = True
        official = np.where(answered, np.where(empty, 0.0, span_f1), empty.astype(float)).mean() * 100
        assert f1 == pytest.approx(official)
    assert curve[0][1] == pytest.approx(100 * empty.mean())  # nothing answered: always-null


def test_seed_mean_margin_and_its_bootstrap_interval():
    import numpy as np

    answerability = load_script("squad_answerability")
    null = np.array([1.0, 0.0, 1.0, 0.0])
    runs = [[1.0, 0.5, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]  # per question: +0, +0.75, -0.5, +0 over always-null
    mean, low, high = answerability.margin_interval(runs, null, draws=500)
    assert mean == pytest.approx(100 * 0.25 / 4)
    assert low < mean < high and low >= -50.0 and high <= 75.0
    assert answerability.margin_interval([[1.0, 1.0]], [0.0, 0.0]) == (100.0, 100.0, 100.0)

    def result(seed, scores):
        held = dict(ids=["a", "b", "c", "d"], empty=[True, False, True, False], scores_at_dev_threshold=scores,
                    f1_at_dev_threshold=100 * sum(scores) / 4)  # fmt: skip
        return {"seed": seed, "sets": {"held-out": held}}

    line = " ".join(answerability.seed_mean_lines([result(0, runs[0]), result(1, runs[1])]))
    assert "seed 0 37.50, seed 1 75.00" in line and "Mean over the 2 runs, question by question: 56.25" in line
    assert "margin of +6.25 F1" in line


def _dropout_rows() -> list[dict]:
    def mt(seed, variant, sst, composite):
        scores = {"eval/sst_accuracy": sst, "eval/quora_accuracy": 0.77, "eval/sts_pearson": 0.8,
                  "eval/composite": composite}  # fmt: skip
        return dict(task="multitask", command=f"mt {seed}", date="2026-12-07", commit="c", seed=seed, variant=variant,
                    seconds=360, scores=scores)  # fmt: skip

    def squad(seed, variant, always):
        return dict(task="squad", command=f"squad {seed}", date="2026-12-07", commit="c", seed=seed, variant=variant,
                    seconds=540, f1=49.21, exact=49.0, HasAns_f1=1.0, NoAns_f1=98.0,
                    always_answer_HasAns_f1=always)  # fmt: skip

    return [mt(0, "0.1", 0.37, 0.68), mt(0, "0.0", 0.38, 0.66), mt(1, "0.1", 0.36, 0.70), mt(1, "0.0", 0.39, 0.69),
            squad(0, "0.1", 30.0), squad(0, "0.0", 20.0), squad(1, "0.1", 10.0)]  # fmt: skip


def test_attention_dropout_report_has_every_run_the_means_and_the_paired_differences(tmp_path):
    report = load_script("attention_dropout")
    report.write_report(_dropout_rows(), tmp_path / "ad.md")
    text = (tmp_path / "ad.md").read_text()
    runs = [line for line in text.splitlines() if line.startswith("| 2026-12-07 |")]
    assert len(runs) == 7 and "| 0 | 0.0 | 6.0 | 0.380 | 0.770 | 0.800 | 0.660 |" in runs[1]
    # Means and sample standard deviations: composite 0.1 (0.68, 0.70) -> 0.690 ± 0.014.
    assert "| 0.1 | 0, 1 | 0.365 ± 0.007 | 0.770 ± 0.000 | 0.800 ± 0.000 | 0.690 ± 0.014 |" in text
    # Paired 0.0 - 0.1 composite: -0.02, -0.01 -> mean -0.015, 95% t interval ± 12.706 * 0.00707 / sqrt(2).
    assert "-0.015 [-0.079, 0.049] (-0.020, -0.010)" in text
    # SQuAD: seed 1 has one variant only, so it enters the means but no pair.
    assert "| 0.1 | 0, 1 | 49.21 ± 0.00 |" in text and "| 0.0 | 0 | 49.21 ± n/a |" in text
    assert "over seeds 0 (one value" in text and "-10.00 [n/a] (-10.00)" in text
    assert text.rstrip().endswith("(ad.png)") and (tmp_path / "ad.png").stat().st_size > 5000


def test_attention_dropout_report_is_the_one_its_rows_write(tmp_path):
    import json

    rows_file = EXPERIMENTS.parents[1] / "docs" / "results" / "attention_dropout.jsonl"
    if not rows_file.is_file():
        pytest.skip("no attention_dropout.jsonl: the experiment has not run in this checkout")
    report = load_script("attention_dropout")
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    report.write_report(rows, tmp_path / "attention_dropout.md")
    assert (tmp_path / "attention_dropout.md").read_text() == rows_file.with_suffix(".md").read_text()
