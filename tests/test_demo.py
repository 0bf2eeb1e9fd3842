"""`qajax demo` end to end (about 3 minutes on 2 CPU cores): the real MiniLM learns the generated SQuAD 2.0
data, answers the demo question, and its exported folder loads in transformers, Flax and PyTorch alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qajax import cli
from qajax.demo import CONTEXT, QUESTION
from qajax.pretrained import MINILM_INSTALL, minilm_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(minilm_dir() is None, reason=f"MiniLM checkpoint not installed ({MINILM_INSTALL})"),
]


def test_demo_learns_answers_and_exports_a_folder_transformers_loads(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp
    import transformers

    cache = f"task.cache_dir={tmp_path / 'features'}"  # featurized from scratch, as on a user's first run
    assert cli.main(["demo", "--workdir", str(tmp_path / "demo"), "--set", cache]) == 0
    report = json.loads(capsys.readouterr().out)

    before, after = report["before_training"]["f1"], report["after_training"]["f1"]
    assert after > before + 30 and after > 80, report
    assert report["prediction"]["answer"] == "Ada Morrow", report["prediction"]

    exported = report["exported_hf_folder"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    questions = [QUESTION, "What is Brindlewick known for?", "Who is the mayor of Brindlewick?"]
    encoded = tokenizer(questions, [CONTEXT] * 3, padding=True, return_tensors="np")
    flax_model = transformers.FlaxAutoModelForQuestionAnswering.from_pretrained(exported)
    flax_out = flax_model(**{k: jnp.asarray(v) for k, v in encoded.items()})
    torch_model = transformers.AutoModelForQuestionAnswering.from_pretrained(exported).eval()
    with torch.no_grad():
        torch_out = torch_model(**{k: torch.from_numpy(v).long() for k, v in encoded.items()})
    real = encoded["attention_mask"].astype(bool)  # padding positions mean nothing in either model
    np.testing.assert_allclose(torch_out.start_logits.numpy()[real], np.asarray(flax_out.start_logits)[real], atol=1e-4)
    np.testing.assert_allclose(torch_out.end_logits.numpy()[real], np.asarray(flax_out.end_logits)[real], atol=1e-4)

    # The PyTorch model finds the demo's answer too: the best span of the first question reads "Ada Morrow".
    offsets = tokenizer(QUESTION, CONTEXT, return_offsets_mapping=True)["offset_mapping"]
    start, end = int(torch_out.start_logits[0].argmax()), int(torch_out.end_logits[0].argmax())
    assert CONTEXT[offsets[start][0] : offsets[end][1]] == "Ada Morrow"


def test_demo_reruns_on_its_finished_workdir(tmp_path):
    """The second `qajax demo` trains nothing and reports the same numbers (it once died with KeyError)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    sets = ["task.generated_passages=8", "train.epochs=0", "train.steps=2", "train.batch_size=4",
            f"task.cache_dir={tmp_path / 'features'}"]  # fmt: skip
    command = [sys.executable, "-m", "qajax", "demo", "--workdir", str(tmp_path / "demo")]
    command += [arg for s in sets for arg in ("--set", s)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    repo = Path(__file__).resolve().parents[1]
    reports = []
    for _ in range(2):
        result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        reports.append(json.loads(result.stdout))
    assert "already finished at step 2" in result.stderr
    for key in ("before_training", "after_training", "train_steps", "prediction"):
        assert reports[1][key] == reports[0][key], key
