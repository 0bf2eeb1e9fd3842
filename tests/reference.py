"""Small random HF models (the references nobody here wrote) for the parity tests."""

from __future__ import annotations

import numpy as np
import transformers

FAMILY_CLASSES = {
    "bert": ("BertConfig", "Bert"),
    "electra": ("ElectraConfig", "Electra"),
    "albert": ("AlbertConfig", "Albert"),
}
HEAD_SUFFIX = {"qa": "ForQuestionAnswering", "classification": "ForSequenceClassification", "encoder": "Model"}

# Small configs that vary every shape the encoders have (HF key names).
CASES = {
    "bert-2l": ("bert", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=37,
                             vocab_size=99, type_vocab_size=2)),
    "bert-3l-gelunew": ("bert", dict(num_hidden_layers=3, hidden_size=48, num_attention_heads=6,
                                     intermediate_size=64, vocab_size=120, type_vocab_size=3,
                                     hidden_act="gelu_new", layer_norm_eps=1e-7)),
    "electra-proj": ("electra", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                     intermediate_size=40, vocab_size=77, embedding_size=16)),
    "electra-noproj": ("electra", dict(num_hidden_layers=3, hidden_size=24, num_attention_heads=3,
                                       intermediate_size=30, vocab_size=88, embedding_size=24, type_vocab_size=4)),
    "albert-1group": ("albert", dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                     intermediate_size=48, vocab_size=90, embedding_size=16)),
    "albert-2groups-2inner": ("albert", dict(num_hidden_layers=4, hidden_size=40, num_attention_heads=5,
                                             intermediate_size=36, vocab_size=66, embedding_size=12,
                                             num_hidden_groups=2, inner_group_num=2, hidden_act="gelu")),
}  # fmt: skip


def hf_config(family: str, num_labels: int = 2, **values):
    values.setdefault("max_position_embeddings", 64)
    return getattr(transformers, FAMILY_CLASSES[family][0])(num_labels=num_labels, **values)


def hf_class(family: str, head: str, flax: bool):
    name = ("Flax" if flax else "") + FAMILY_CLASSES[family][1] + HEAD_SUFFIX[head]
    return getattr(transformers, name)


def batch(vocab_size: int, type_vocab_size: int = 2, shape=(3, 11), seed: int = 0):
    """Random ids with padding in some rows and two segments."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab_size, shape).astype(np.int32)
    mask = np.ones(shape, np.int32)
    mask[1, shape[1] - 4 :] = 0
    mask[2, shape[1] - 1 :] = 0
    types = np.zeros(shape, np.int32)
    types[:, shape[1] // 2 :] = type_vocab_size - 1
    return ids, mask, types


# Half the cases run by default (one per family); the rest under `-m slow`, keeping the suite short.
DEFAULT_CASES = ("bert-3l-gelunew", "electra-proj", "albert-2groups-2inner")


def case_params():
    import pytest

    return [c if c in DEFAULT_CASES else pytest.param(c, marks=pytest.mark.slow) for c in sorted(CASES)]
