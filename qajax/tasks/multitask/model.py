"""One shared encoder with a head per task (reports 002 and 003).

    sentence  (sst):         embed(x) -> task layers -> Dense(num_classes)
    pair, form "concat":     u, v = embed(a), embed(b) -> task layers each -> Dense over [u, v, |u - v|]
    pair, form "cosine":     u, v as above -> cos(u, v)             (Sentence-BERT's siamese cosine head)
    pair, form "cross":      embed([CLS] a [SEP] b [SEP]) -> task layers -> Dense(1)   (BERT's cross-encoding)

`embed` = encoder -> pooling -> `shared_layers` x (dropout, Dense, ReLU), the same for every task (report
003's shared linear layer, report 002's "common layers"); `task_layers` x (dropout, Dense, ReLU) belong to one
task (report 002's best: none shared, three per task counting the output layer = task_layers 2).

Outputs per task, float32: `score` (sst: [B, classes] logits; a pair task: [B], the logit of a binary task
or the predicted value of a regression task), and for the siamese forms `cosine` [B] and the embeddings
`u`, `v` [B, features] that the ranking and cosine losses use. With form "cosine", `score` is
`scale * cos + bias` (two learned scalars) for a binary task and `max_value * cos` for a regression task.
Parameters: the encoder under its family name (`bert/...`, as every other head, so freezing and porting
see the usual paths), `shared/...`, and one scope per task.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from qajax.models.config import EncoderConfig
from qajax.models.dropout import Dropout
from qajax.models.encoder import Encoder
from qajax.models.layers import dense

FORMS = ("concat", "cosine", "cross")
POOLINGS = ("cls", "mean", "pooler")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    name: str  # the task, and the prefix of its batch keys
    kind: str  # "classes" (a sentence task), "binary" or "regression" (pair tasks)
    num_classes: int = 2  # "classes" only
    form: str | None = None  # pair tasks only: one of FORMS
    max_value: float = 1.0  # "regression" with form "cosine": score = max_value * cos

    @property
    def is_pair(self) -> bool:
        return self.form is not None


class ReluLayers(nn.Module):
    """`num_layers` x (dropout, Dense(features), ReLU)."""

    config: EncoderConfig
    num_layers: int
    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        for i in range(self.num_layers):
            x = Dropout(self.rate)(x, deterministic=deterministic)
            x = nn.relu(dense(self.config, self.config.hidden_size, f"dense_{i}")(x))
        return x


def pool(last_hidden, attention_mask, pooler_output, pooling: str):
    if pooling == "cls":
        return last_hidden[:, 0]
    if pooling == "pooler":
        return pooler_output
    mask = attention_mask[..., None].astype(last_hidden.dtype)  # mean over real tokens only
    return jnp.sum(last_hidden * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def cosine(u, v, eps: float = 1e-8):
    u, v = u.astype(jnp.float32), v.astype(jnp.float32)
    return jnp.sum(u * v, -1) / jnp.maximum(jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1), eps)


class TaskHead(nn.Module):
    config: EncoderConfig
    spec: HeadSpec
    task_layers: int
    rate: float

    @nn.compact
    def __call__(self, embedded, deterministic: bool) -> dict:
        """embedded: [B, H] (sentence or cross-encoded pair) or [B, 2, H] (the two sentences apart)."""
        c, spec = self.config, self.spec
        x = ReluLayers(c, self.task_layers, self.rate, name="layers")(embedded, deterministic)
        dropout = lambda h: Dropout(self.rate)(h, deterministic=deterministic)
        if not spec.is_pair:
            return {"score": dense(c, spec.num_classes, "output")(dropout(x)).astype(jnp.float32)}
        if spec.form == "cross":
            return {"score": dense(c, 1, "output")(dropout(x))[:, 0].astype(jnp.float32)}
        u, v = x[:, 0], x[:, 1]
        similarity = cosine(u, v)
        out = {"cosine": similarity, "u": u.astype(jnp.float32), "v": v.astype(jnp.float32)}
        if spec.form == "concat":
            features = jnp.concatenate([u, v, jnp.abs(u - v)], axis=-1)
            out["score"] = dense(c, 1, "output")(dropout(features))[:, 0].astype(jnp.float32)
        elif spec.kind == "regression":  # the cosine on the label's scale
            out["score"] = spec.max_value * similarity
        else:  # binary: a learned affine map of the cosine to a logit
            scale = self.param("logit_scale", lambda _: jnp.asarray(5.0, jnp.float32))
            bias = self.param("logit_bias", nn.initializers.zeros, ())
            out["score"] = scale * similarity + bias
        return out


class MultitaskModel(nn.Module):
    config: EncoderConfig
    heads: tuple[HeadSpec, ...]
    shared_layers: int = 0
    task_layers: int = 0
    head_dropout: float = 0.1
    pooling: str = "cls"

    @nn.compact
    def __call__(self, batch: dict, *, deterministic: bool = True, **encoder_options) -> dict:
        """batch: `{task}/input_ids` ... for the tasks present (any subset) -> {task: outputs}.
        `inputs_embeds` ({task: [..., seq, embedding]}) replaces the word lookup of those tasks (SMART)."""
        c = self.config
        word_embeds = encoder_options.pop("inputs_embeds", None) or {}
        encoder = Encoder(c, add_pooling_layer=c.family != "electra", name=c.family)
        shared = ReluLayers(c, self.shared_layers, self.head_dropout, name="shared")
        heads = {
            spec.name: TaskHead(c, spec, self.task_layers, self.head_dropout, name=spec.name) for spec in self.heads
        }

        def embed(ids, mask, types, words=None):  # [..., seq] -> [..., hidden]
            lead = ids.shape[:-1]
            flat = lambda x: x.reshape(-1, x.shape[-1])
            if words is not None:
                words = words.reshape((-1,) + words.shape[-2:])
            out = encoder(
                None if words is not None else flat(ids), flat(mask), flat(types),
                inputs_embeds=words, deterministic=deterministic, **encoder_options,
            )  # fmt: skip
            pooled = pool(out.last_hidden_state, flat(mask), out.pooler_output, self.pooling)
            return shared(pooled, deterministic).reshape(lead + pooled.shape[-1:])

        outputs = {}
        for name, head in heads.items():
            if f"{name}/input_ids" not in batch:
                continue
            inputs = [batch[f"{name}/{k}"] for k in ("input_ids", "attention_mask", "token_type_ids")]
            outputs[name] = head(embed(*inputs, word_embeds.get(name)), deterministic)
        return outputs


def dummy_batch(heads: tuple[HeadSpec, ...], seq_len: int = 8) -> dict:
    """The smallest batch that touches every head (what `init` needs)."""
    batch = {}
    for spec in heads:
        shape = (1, 2, seq_len) if spec.form in ("concat", "cosine") else (1, seq_len)
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            batch[f"{spec.name}/{key}"] = (
                jnp.ones(shape, jnp.int32) if key == "attention_mask" else jnp.zeros(shape, jnp.int32)
            )
    return batch


def init_params(model: MultitaskModel, rng: jax.Array) -> dict:
    return jax.jit(lambda r: model.init(r, dummy_batch(model.heads))["params"])(rng)
