"""Real SQuAD 2.0 (../shared/data): MiniLM fine-tuned on 8 dev articles, its null threshold chosen on a 9th
(Imperialism), against the always-null baseline on the 3 held-out ones. Runs scripts/experiments/squad_split.py
with its own settings (about 55 minutes on 2 idle CPU cores) and writes its report into the test's folder,
not docs/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from qajax.pretrained import MINILM_INSTALL, minilm_dir

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / ".." / "shared" / "data" / "squad2" / "dev-part.json"
SCRIPT = REPO / "scripts" / "experiments" / "squad_split.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_file(), reason=f"real SQuAD 2.0 data absent: {DATA.resolve()}"),
    pytest.mark.skipif(minilm_dir() is None, reason=f"MiniLM checkpoint not installed ({MINILM_INSTALL})"),
]


def _script():
    spec = importlib.util.spec_from_file_location("squad_split", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.xfail(
    strict=True,
    reason="the plain fine-tune does not meet the bar (2026-11-30: F1 48.99 vs 49.21 always-null); SDV at 1.5 epochs "
    "does on the mean over seeds, narrowly (docs/results/squad_confirmation.md, squad_sdv_seeds.md)",
)
def test_fine_tuned_minilm_beats_the_always_null_baseline(tmp_path):
    script = _script()
    report = tmp_path / "squad_split.md"
    overrides = [f"task.cache_dir={tmp_path / 'features'}"]
    result = script.run(tmp_path / "run", overrides, report=report, command="tests/tasks/squad/test_real_squad.py")

    assert result["eval_titles"] == ["Normans", "Scottish_Parliament", "Yuan_dynasty"]  # configs/squad.py
    assert (result["train_questions"], result["eval_questions"]) == (3237, 1010)
    assert result["threshold_chosen_on"] == "dev articles Imperialism"
    # The baseline's F1 is the unanswerable share: "" scores 1 on those and 0 on the rest.
    assert result["baseline_f1"] == pytest.approx(result["noans_share"]) == pytest.approx(100 * 497 / 1010)
    # The result: the evaluation (about one an epoch) and the null threshold that the dev article prefers,
    # applied to the held-out questions. The final model's threshold from scripts' own sweep agrees with the
    # training loop's evaluation (two code paths).
    picked = result["dev_picked"]
    assert result["train_threshold_f1"] == pytest.approx(result["evaluations"][result["steps"]]["f1"], abs=0.01)
    assert result["always_answer_HasAns_f1"] > 40, result  # the spans themselves
    text = report.read_text()
    assert f"{picked['f1']:.2f}" in text and f"{result['baseline_f1']:.2f}" in text
    # The bar (docs/results/squad_split.md); remove the xfail once a run meets it.
    assert picked["f1"] > result["baseline_f1"], picked
