"""`qajax eval` and `qajax predict` on a training workdir follow the run: its windows (task.max_seq_length,
doc_stride, max_query_length from its config.json) unless given, the checkpoint step they loaded said on
stderr, eval_results.json beside the prediction files, and `predict --file --out --skip-invalid`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qajax.pretrained import MINILM_INSTALL, minilm_dir
from qajax.tasks.squad import data
from qajax.tasks.squad.generate import generate_examples

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(minilm_dir() is None, reason=f"MiniLM checkpoint not installed ({MINILM_INSTALL})")
# configs/demo.py (windows 64 / 16 / 16), made tiny: 8 passages, 2 steps.
OVERRIDES = ("task.generated_passages=8", "train.epochs=0", "train.steps=2", "train.batch_size=4",
             "train.eval_batch_size=8", "log.tensorboard=false", "checkpoint.asynchronous=false")  # fmt: skip


def qajax(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "qajax", *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("follow")
    sets = [a for o in (*OVERRIDES, f"task.cache_dir={root / 'features'}") for a in ("--set", o)]
    qajax("train", "configs/demo.py", "--workdir", str(root / "run"), *sets)
    examples = generate_examples(4, 1)
    document = data.to_squad_json(examples)
    (root / "dev.json").write_text(json.dumps(document))
    broken = json.loads(json.dumps(document))
    del broken["data"][0]["paragraphs"][0]["qas"][0]["question"]  # one malformed question
    (root / "broken.json").write_text(json.dumps(broken))
    return root, examples


def test_eval_uses_the_runs_windows_and_writes_eval_results(run):
    root, examples = run
    result = qajax("eval", str(root / "run"), str(root / "dev.json"), "--out", str(root / "eval"))
    windows = "max_seq_length=64, doc_stride=16, max_query_length=16 (options, else the run's config.json)"
    assert windows in result.stderr
    assert "loaded the checkpoint of step 2" in result.stderr
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    saved = json.loads((root / "eval" / "eval_results.json").read_text())
    assert saved["metrics"] == printed and saved["checkpoint_step"] == 2 and saved["null_threshold"] == 0.0
    assert saved["max_seq_length"] == 64 and saved["doc_stride"] == 16
    assert printed["total"] == len(examples)
    predictions = json.loads((root / "eval" / "predictions.json").read_text())
    assert sorted(predictions) == sorted(e.id for e in examples)

    given = qajax("eval", str(root / "run"), str(root / "dev.json"), "--max-seq-length", "48", "--doc-stride", "8")
    assert "max_seq_length=48, doc_stride=8, max_query_length=16" in given.stderr


def test_predict_file_writes_predictions_and_skips_invalid_questions(run):
    root, examples = run
    out = root / "answers"
    result = qajax("predict", str(root / "run"), "--file", str(root / "broken.json"), "--out", str(out),
                   "--skip-invalid")  # fmt: skip
    assert "loaded the checkpoint of step 2" in result.stderr
    assert "skipped 1" in result.stderr, result.stderr
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == len(examples) - 1 and set(predictions) < {e.id for e in examples}
    assert (out / "null_odds.json").is_file()
