"""Prompt tuning (Lester, Al-Rfou and Constant, 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning"): `num_tokens` trainable embeddings prepended to every input; the model's own weights stay frozen.

The prompt is one leaf, `prompt/embedding` [num_tokens, embedding_dim], beside the model's params (it is
prepended to the word embeddings before the embedding LayerNorm and, where there is one, the projection to
the hidden size). The encoder gives it positions 0..P-1 and token type 0, attends to it in every row, padded
rows included, and returns outputs for the real tokens only, so span offsets and labels need no change.
Its positions take from the position table: max_seq_length + num_tokens must fit max_position_embeddings.

Initialisation: "vocab" copies the embeddings of `num_tokens` distinct random token ids other than padding
(the paper's "sampled vocabulary", section 3.2, there from the 5000 most frequent tokens, which a checkpoint
does not tell us; well ahead of random init for small models in its Figure 3b, and its class-label init has
no counterpart in span QA); "normal" draws N(0, std of the word-embedding table), the scale of real tokens.

Export: `finalize_params` strips the prompt, so an exported HF model is the frozen base (and the head) and
loses what prompt tuning learned; save `prompt_only(params)` (the prompt, and the head with train_head)
beside it and `load_prompt` it back.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from qajax.errors import ConfigError
from qajax.techniques.base import Technique
from qajax.techniques.lora import ADDED, frozen_base, head_shapes, load_leaves, stop_frozen, trained_leaves

KEY = "techniques.prompt"
INITS = ("vocab", "normal")


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            "num_tokens": 20,  # prompt length P (the paper, Figure 3a: little gain beyond 20)
            "init": "vocab",  # one of INITS
            "train_head": True,  # the task head (qa_outputs / classifier) trains in full
            "seed": 0,
        }
    )


class PromptTuning(Technique):
    name, kind = "prompt", "parameters"

    def __init__(self, num_tokens: int, init: str, train_head: bool, seed: int, encoder):
        self.num_tokens, self.init, self.train_head, self.seed = num_tokens, init, train_head, seed
        self.encoder = encoder  # EncoderConfig

    def prepare_params(self, params) -> dict:
        if "prompt" in params:
            raise ValueError("params already carry a prompt")
        table = np.asarray(params[self.encoder.family]["embeddings"]["word_embeddings"]["embedding"])  # [V, E]
        rng = np.random.default_rng(self.seed)
        if self.init == "vocab":
            ids = np.delete(np.arange(table.shape[0]), self.encoder.pad_token_id)
            prompt = table[rng.choice(ids, self.num_tokens, replace=self.num_tokens > len(ids))]
        else:
            prompt = rng.normal(0.0, table.std(), (self.num_tokens, table.shape[1])).astype(table.dtype)
        return {**params, "prompt": {"embedding": prompt}}

    def frozen_patterns(self, params) -> list[str]:
        if "prompt" not in params:
            raise ValueError("params carry no prompt: run prepare_params first")
        return frozen_base(params, self.encoder.family, self.train_head)

    def wrap_forward(self, forward):
        def forward_with_prompt(params, batch, rng=None, *, deterministic=True, **model_options):
            params = dict(stop_frozen(params, self.frozen_patterns(params)))
            prompt = params.pop("prompt")["embedding"]  # [P, E]
            return forward(params, batch, rng, deterministic=deterministic, prompt_embeds=prompt, **model_options)

        return forward_with_prompt

    def finalize_params(self, params) -> dict:
        """The model's params without the prompt (what it learned is lost: see `prompt_only`)."""
        return {k: v for k, v in params.items() if k != "prompt"}

    def prompt_only(self, params) -> dict:
        """What training changed, to save beside the exported model: the prompt, and the head with train_head."""
        return trained_leaves(params, ADDED["prompt"], self.train_head)

    def load_prompt(self, params, saved) -> dict:
        """`params` (with or without a prompt) with `saved` (from `prompt_only`) in place."""
        base = self.finalize_params(params)
        expected = {"prompt/embedding": (self.num_tokens, self.encoder.embedding_dim)}
        where = f"{KEY} (num_tokens={self.num_tokens})"
        return load_leaves(base, saved, {**expected, **head_shapes(base, self.train_head)}, where)


def build(config: ml_collections.ConfigDict, task) -> PromptTuning:
    if not (isinstance(config.num_tokens, int) and config.num_tokens >= 1):
        raise ConfigError(f"{KEY}.num_tokens={config.num_tokens!r}: expected an int >= 1")
    if config.init not in INITS:
        raise ConfigError(f"{KEY}.init={config.init!r}: expected one of {INITS}")
    encoder = task.spec.encoder
    seq = getattr(task, "tokens_per_example", None)  # the padded sequence length, where the task knows it
    if seq is not None and seq + config.num_tokens > encoder.max_position_embeddings:
        raise ConfigError(
            f"{KEY}.num_tokens={config.num_tokens}: {seq} tokens per example + {config.num_tokens} prompt tokens "
            f"exceed the model's max_position_embeddings={encoder.max_position_embeddings}; shorten the prompt "
            "or the task's sequence length (squad: task.max_seq_length)"
        )
    return PromptTuning(config.num_tokens, config.init, config.train_head, config.seed, encoder)
