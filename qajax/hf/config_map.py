"""HF `config.json` <-> `EncoderConfig`: the only place that knows HF's config key names."""

from __future__ import annotations

from qajax.errors import CheckpointError
from qajax.models.config import ACTIVATIONS, EncoderConfig

# Our name -> HF name, for keys every family shares.
_COMMON = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act",
    "hidden_dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps",
    "initializer_range": "initializer_range",
    "pad_token_id": "pad_token_id",
}
_FAMILY = {
    "bert": {"classifier_dropout": "classifier_dropout"},
    "electra": {"classifier_dropout": "classifier_dropout", "embedding_size": "embedding_size"},
    "albert": {
        "classifier_dropout": "classifier_dropout_prob",
        "embedding_size": "embedding_size",
        "num_groups": "num_hidden_groups",
        "inner_group_size": "inner_group_num",
    },
}
# HF class names per family and head, for `architectures` and for the tests' reference models.
ARCHITECTURES = {
    "bert": {"qa": "BertForQuestionAnswering", "classification": "BertForSequenceClassification",
             "encoder": "BertModel"},
    "electra": {"qa": "ElectraForQuestionAnswering", "classification": "ElectraForSequenceClassification",
                "encoder": "ElectraModel"},
    "albert": {"qa": "AlbertForQuestionAnswering", "classification": "AlbertForSequenceClassification",
               "encoder": "AlbertModel"},
}  # fmt: skip
# HF's defaults where a config.json may omit a key (the HF config classes' constructor defaults).
_HF_DEFAULTS = {
    "bert": {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "type_vocab_size": 2, "pad_token_id": 0},
    "electra": {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "type_vocab_size": 2, "pad_token_id": 0,
                "embedding_size": 128},
    "albert": {"hidden_act": "gelu_new", "layer_norm_eps": 1e-12, "type_vocab_size": 2, "pad_token_id": 0,
               "embedding_size": 128, "num_hidden_groups": 1, "inner_group_num": 1,
               "classifier_dropout_prob": 0.1, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}  # fmt: skip


def encoder_config_from_hf(hf: dict, *, source: str = "config.json", **overrides) -> EncoderConfig:
    family = hf.get("model_type")
    if family not in _FAMILY:
        raise CheckpointError(
            f"{source}: unknown architecture model_type={family!r} "
            f"(architectures={hf.get('architectures')}); qajax supports {sorted(_FAMILY)}"
        )
    embedding = hf.get("position_embedding_type", "absolute")
    if embedding != "absolute":
        raise CheckpointError(f"{source}: position_embedding_type={embedding!r}; qajax supports 'absolute' only")
    values = {"family": family}
    merged = {**_HF_DEFAULTS[family], **hf}
    for ours, theirs in {**_COMMON, **_FAMILY[family]}.items():
        if theirs in merged:
            values[ours] = merged[theirs]
    if values.get("hidden_act") not in ACTIVATIONS:
        raise CheckpointError(f"{source}: hidden_act={values.get('hidden_act')!r}; expected one of {ACTIVATIONS}")
    if family == "electra" and values.get("embedding_size") == values["hidden_size"]:
        values["embedding_size"] = None
    values.update(overrides)
    try:
        return EncoderConfig(**values)
    except TypeError as e:
        raise CheckpointError(f"{source}: {e}") from e


def hf_config_from_encoder(config: EncoderConfig, head: str, num_labels: int, base: dict | None = None) -> dict:
    """A config.json for `config`, keeping the keys of `base` (labels, tokenizer hints) that we do not own."""
    out = dict(base or {})
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        out.pop(key, None)
    out["model_type"] = config.family
    out["architectures"] = [ARCHITECTURES[config.family][head]]
    for ours, theirs in {**_COMMON, **_FAMILY[config.family]}.items():
        out[theirs] = getattr(config, ours)
    if config.family in ("electra", "albert"):
        out["embedding_size"] = config.embedding_dim
    out["position_embedding_type"] = "absolute"
    if head == "classification":
        labels = out.get("id2label")
        if not labels or len(labels) != num_labels:
            out["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
            out["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
        if num_labels == 1:
            out["problem_type"] = "regression"
    return out


def num_labels_from_hf(hf: dict) -> int:
    if "id2label" in hf:
        return len(hf["id2label"])
    return int(hf.get("num_labels", 2))
