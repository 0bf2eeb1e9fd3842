"""HF checkpoints in and out: PyTorch parity, export/import round trips, file formats and loud errors."""

import json
import shutil

import jax
import numpy as np
import pytest

import qajax.hf
from qajax import tree
from qajax.checkpoints.saved import load_model
from qajax.cli import main as cli_main
from qajax.errors import CheckpointError
from qajax.hf import weights
from tests.reference import CASES, batch, case_params, hf_class, hf_config

torch = pytest.importorskip("torch", reason="PyTorch parity needs the test extra (torch==2.13.0 CPU)")
PT_TOLERANCE = 1e-4


def _pytorch_model(case, head="qa", num_labels=2, seed=0):
    family, values = CASES[case]
    torch.manual_seed(seed)
    return hf_class(family, head, flax=False)(hf_config(family, num_labels=num_labels, **values)).eval()


def _pt_outputs(pt, ids, mask, types):
    with torch.no_grad():
        return pt(torch.tensor(ids).long(), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))


def _same_params(a, b):
    fa, fb = tree.flatten(a), tree.flatten(b)
    return fa.keys() == fb.keys() and all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)


@pytest.mark.parametrize("case", case_params())
def test_pytorch_parity_and_export_round_trip(case, tmp_path):
    pt = _pytorch_model(case)
    pt.save_pretrained(tmp_path / "src")  # model.safetensors, PyTorch names
    model, params, spec = qajax.hf.from_pretrained(tmp_path / "src", head="qa")
    ids, mask, types = batch(spec.encoder.vocab_size, spec.encoder.type_vocab_size)
    ours = model.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types, deterministic=True)
    ref = _pt_outputs(pt, ids, mask, types)
    np.testing.assert_allclose(ours.start_logits, ref.start_logits.numpy(), atol=PT_TOLERANCE)
    np.testing.assert_allclose(ours.end_logits, ref.end_logits.numpy(), atol=PT_TOLERANCE)

    out = qajax.hf.save_pretrained(model, params, spec, tmp_path / "out", formats=("flax", "pt"))
    # Re-import of our own export is bitwise, from either format.
    _, again, _ = qajax.hf.from_pretrained(out, head="qa")
    assert _same_params(params, again)
    (out / weights.FLAX).unlink()
    _, from_pt, _ = qajax.hf.from_pretrained(out, head="qa")
    assert _same_params(params, from_pt)

    # transformers loads the export and gives our logits.
    family = spec.encoder.family
    pt_loaded = hf_class(family, "qa", flax=False).from_pretrained(out).eval()
    np.testing.assert_allclose(_pt_outputs(pt_loaded, ids, mask, types).start_logits.numpy(), ours.start_logits,
                               atol=PT_TOLERANCE)  # fmt: skip


@pytest.mark.parametrize("case", ["bert-2l", "electra-proj", "albert-2groups-2inner"])
def test_transformers_flax_loads_our_export(case, tmp_path):
    pt = _pytorch_model(case, head="classification", num_labels=3)
    pt.save_pretrained(tmp_path / "src")
    model, params, spec = qajax.hf.from_pretrained(tmp_path / "src", head="classification")
    assert spec.num_labels == 3
    out = qajax.hf.save_pretrained(model, params, spec, tmp_path / "out", formats=("flax",))
    assert not (out / weights.SAFETENSORS).exists()
    assert json.loads((out / "config.json").read_text())["architectures"][0].endswith("ForSequenceClassification")
    ids, mask, types = batch(spec.encoder.vocab_size, spec.encoder.type_vocab_size)
    reference = hf_class(spec.encoder.family, "classification", flax=True).from_pretrained(out)
    ours = model.apply({"params": params}, ids, mask, types).logits
    np.testing.assert_allclose(ours, reference(ids, mask, types).logits, atol=1e-5)
    np.testing.assert_allclose(ours, _pt_outputs(pt, ids, mask, types).logits.numpy(), atol=PT_TOLERANCE)


def test_base_model_checkpoint_gets_a_fresh_head_and_encoder_head_exports_as_base_model(tmp_path):
    pt = _pytorch_model("bert-2l", head="encoder")
    pt.save_pretrained(tmp_path / "base")  # BertModel: names without the "bert." prefix, with a pooler
    model, params, spec = qajax.hf.from_pretrained(tmp_path / "base", head="qa", seed=3)
    assert "pooler" not in params["bert"] and params["qa_outputs"]["kernel"].shape == (32, 2)
    np.testing.assert_array_equal(
        params["bert"]["embeddings"]["word_embeddings"]["embedding"],
        pt.embeddings.word_embeddings.weight.detach().numpy(),
    )
    enc_model, enc_params, enc_spec = qajax.hf.from_pretrained(tmp_path / "base", head="encoder")
    out = qajax.hf.save_pretrained(enc_model, enc_params, enc_spec, tmp_path / "out", formats=("pt",))
    ids, mask, types = batch(99)
    reloaded = hf_class("bert", "encoder", flax=False).from_pretrained(out).eval()
    ours = enc_model.apply({"params": enc_params}, ids, mask, types)
    np.testing.assert_allclose(
        _pt_outputs(reloaded, ids, mask, types).pooler_output.numpy(), ours.pooler_output, atol=PT_TOLERANCE
    )


@pytest.mark.parametrize("serialization", ["safetensors-sharded", "torch-bin-sharded", "flax-sharded"])
def test_reads_sharded_and_legacy_weight_files(serialization, tmp_path):
    pt = _pytorch_model("electra-proj")
    pt.save_pretrained(tmp_path / "plain")
    _, reference, _ = qajax.hf.from_pretrained(tmp_path / "plain")
    src = tmp_path / "src"
    if serialization == "flax-sharded":
        flax_model = hf_class("electra", "qa", flax=True).from_pretrained(tmp_path / "plain")
        flax_model.save_pretrained(src, max_shard_size="20KB")
        assert (src / (weights.FLAX + weights.INDEX)).is_file()
    else:
        pt.save_pretrained(src, max_shard_size="20KB", safe_serialization=serialization.startswith("safetensors"))
        index = (weights.SAFETENSORS if serialization.startswith("safetensors") else weights.TORCH) + weights.INDEX
        assert (src / index).is_file()
    _, params, _ = qajax.hf.from_pretrained(src)
    assert _same_params(params, reference)


def test_scanned_params_export_in_hf_layout(tmp_path):
    _pytorch_model("bert-3l-gelunew").save_pretrained(tmp_path / "src")
    model, params, spec = qajax.hf.from_pretrained(tmp_path / "src", scan_layers=True)
    assert "scanned" in params["bert"]["encoder"]["layer"]
    out = qajax.hf.save_pretrained(model, params, spec, tmp_path / "out")
    _, plain, _ = qajax.hf.from_pretrained(out)
    assert "0" in plain["bert"]["encoder"]["layer"]
    _, reference, _ = qajax.hf.from_pretrained(tmp_path / "src")
    assert _same_params(plain, reference)


# --- loud errors -------------------------------------------------------------------------------------------


def _saved(tmp_path, case="bert-2l", head="qa"):
    _pytorch_model(case, head=head).save_pretrained(tmp_path / "src")
    return tmp_path / "src"


def _rewrite_safetensors(folder, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / weights.SAFETENSORS)
    edit(tensors)
    save_file(tensors, folder / weights.SAFETENSORS, metadata={"format": "pt"})


def test_unknown_architecture_is_named(tmp_path):
    src = _saved(tmp_path)
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "roberta"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"src/config.json: unknown architecture model_type='roberta'"):
        qajax.hf.from_pretrained(src)


def test_missing_encoder_weight_is_named(tmp_path):
    src = _saved(tmp_path)
    _rewrite_safetensors(src, lambda t: t.pop("bert.encoder.layer.1.output.dense.weight"))
    with pytest.raises(CheckpointError, match=r"missing weights \(1\): bert/encoder/layer/1/output/dense/kernel"):
        qajax.hf.from_pretrained(src)


def test_extra_weight_is_named(tmp_path):
    src = _saved(tmp_path)
    _rewrite_safetensors(src, lambda t: t.update({"bert.encoder.layer.2.output.dense.bias": np.zeros(32, "f")}))
    with pytest.raises(CheckpointError, match=r"unexpected weights \(1\): bert/encoder/layer/2/output/dense/bias"):
        qajax.hf.from_pretrained(src)


def test_shape_mismatch_names_path_and_both_shapes(tmp_path):
    src = _saved(tmp_path)
    _rewrite_safetensors(src, lambda t: t.update({"bert.encoder.layer.0.intermediate.dense.bias": np.zeros(5, "f")}))
    with pytest.raises(
        CheckpointError, match=r"shape mismatch at bert/encoder/layer/0/intermediate/dense/bias: "
        r"checkpoint has \(5,\), model expects \(37,\)"
    ):  # fmt: skip
        qajax.hf.from_pretrained(src)


def test_folder_without_weights_or_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        qajax.hf.from_pretrained(tmp_path)
    src = _saved(tmp_path)
    (src / weights.SAFETENSORS).unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        qajax.hf.from_pretrained(src)


def test_failed_export_leaves_nothing_half_written(tmp_path, monkeypatch):
    model, params, spec = qajax.hf.from_pretrained(_saved(tmp_path))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(weights, "write_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        qajax.hf.save_pretrained(model, params, spec, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    # An existing export is refused unless overwrite is asked for, and then replaced whole.
    monkeypatch.undo()
    qajax.hf.save_pretrained(model, params, spec, tmp_path / "out")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        qajax.hf.save_pretrained(model, params, spec, tmp_path / "out")
    qajax.hf.save_pretrained(model, params, spec, tmp_path / "out", formats=("pt",), overwrite=True)
    assert not (tmp_path / "out" / weights.FLAX).exists()


def test_export_refuses_params_that_are_not_the_model(tmp_path):
    model, params, spec = qajax.hf.from_pretrained(_saved(tmp_path))
    params = jax.tree.map(lambda x: x, params)
    params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["lora_a"] = np.zeros((32, 4), "f")
    with pytest.raises(CheckpointError, match="unexpected.*lora_a"):
        qajax.hf.save_pretrained(model, params, spec, tmp_path / "out")


def test_cli_import_then_export_round_trip(tmp_path, capsys):
    src = _saved(tmp_path, "albert-2groups-2inner")
    (src / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # a tokenizer file to be carried along
    assert cli_main(["import-hf", str(src), str(tmp_path / "ckpt")]) == 0
    assert cli_main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
    _, original, _ = qajax.hf.from_pretrained(src)
    _, exported, _ = qajax.hf.from_pretrained(tmp_path / "hf")
    assert _same_params(original, exported)
    _, stored, _ = load_model(tmp_path / "ckpt")
    assert _same_params(original, stored)
    # Errors reach the user as one line and exit status 2.
    shutil.rmtree(tmp_path / "ckpt" / "params")
    assert cli_main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf2")]) == 2
    assert "no params/ or checkpoints/ folder" in capsys.readouterr().err
