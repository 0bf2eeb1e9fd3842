"""A LoRA run as a PEFT adapter: `qajax export-hf --adapter-only` writes the folder, the `peft` package loads
it onto the transformers model exported from the same base and gives our logits; `qajax import-hf BASE OUT
--adapter DIR` brings it back. Every step is a real `python -m qajax` command on configs/tiny.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
LORA = ["techniques.lora.enabled=true", "train.steps=20", "optimizer.learning_rate=0.01", "train.log_every=10",
        "checkpoint.every_steps=20", "log.tensorboard=false"]  # fmt: skip


def qajax(*args: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "qajax", *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    qajax("train", "configs/tiny.py", "--workdir", str(root / "run"), *[a for o in LORA for a in ("--set", o)])
    qajax("export-hf", str(root / "run"), str(root / "base"), "--base-only", "--formats", "pt")
    qajax("export-hf", str(root / "run"), str(root / "adapter"), "--adapter-only")
    return root


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 64, size=(3, 24))
    mask = np.ones_like(ids)
    mask[1, 18:] = 0
    return ids, mask, np.zeros_like(ids)


def _our_logits(path):
    from qajax.checkpoints.saved import load_model

    model, params, _ = load_model(path)  # a LoRA workdir: adapters merged with its alpha / rank
    ids, mask, types = _inputs()
    start, end = model.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types)[:2]
    return np.asarray(start), np.asarray(end)


def test_the_adapter_folder_has_peft_names_and_shapes(exported):
    from safetensors.numpy import load_file

    config = json.loads((exported / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16.0
    assert config["modules_to_save"] == ["qa_outputs"]  # train_head: the head trained in full
    tensors = load_file(str(exported / "adapter" / "adapter_model.safetensors"))
    query = "base_model.model.bert.encoder.layer.0.attention.self.query"
    assert tensors[f"{query}.lora_A.weight"].shape == (8, 32)  # [r, in]
    assert tensors[f"{query}.lora_B.weight"].shape == (32, 8)  # [out, r]
    assert np.abs(tensors[f"{query}.lora_B.weight"]).max() > 1e-3  # B starts at zero: it trained
    assert len(config["target_modules"]) == 4  # query and value of 2 layers


def test_peft_on_the_exported_base_gives_our_logits(exported):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    import transformers

    base = transformers.AutoModelForQuestionAnswering.from_pretrained(exported / "base")
    model = peft.PeftModel.from_pretrained(base, exported / "adapter").eval()
    ids, mask, types = _inputs()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    token_type_ids=torch.from_numpy(types))  # fmt: skip
    start, end = _our_logits(exported / "run")
    real = mask.astype(bool)
    np.testing.assert_allclose(out.start_logits.numpy()[real], start[real], atol=1e-4)
    np.testing.assert_allclose(out.end_logits.numpy()[real], end[real], atol=1e-4)
    # Without the adapter the base answers differently: the comparison above can fail.
    with model.disable_adapter(), torch.no_grad():
        plain = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                      token_type_ids=torch.from_numpy(types))  # fmt: skip
    assert np.abs(plain.start_logits.numpy()[real] - start[real]).max() > 1e-3


def test_import_hf_merges_the_adapter_back(exported):
    out = exported / "reimported"
    printed = qajax("import-hf", str(exported / "base"), str(out), "--adapter", str(exported / "adapter"))
    assert "with the LoRA adapter" in printed
    ours, back = _our_logits(exported / "run"), _our_logits(out)
    np.testing.assert_allclose(back[0], ours[0], atol=1e-5)
    np.testing.assert_allclose(back[1], ours[1], atol=1e-5)
