"""What a saved model is: the encoder config, the head, and what its HF origin carried along."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from qajax.errors import CheckpointError
from qajax.models.config import EncoderConfig
from qajax.models.heads import HEADS, build_model
from qajax.models.layer_heads import SPAN_HEADS

SPEC_FILE = "spec.json"  # beside a model's params and in every training workdir


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    encoder: EncoderConfig
    head: str = "qa"  # one of HEADS
    num_labels: int = 2  # classification only; 1 means regression
    hf_config: dict = dataclasses.field(default_factory=dict)  # the source config.json, kept for export
    tokenizer_dir: str | None = None  # where the tokenizer files live (copied on export)
    span_head: str = "linear"  # qa only: how the span head reads the encoder (layer_heads.SPAN_HEADS)

    def __post_init__(self):
        if self.head not in HEADS:
            raise CheckpointError(f"head={self.head!r}: expected one of {HEADS}")
        if self.span_head not in SPAN_HEADS or (self.span_head != "linear" and self.head != "qa"):
            raise CheckpointError(
                f"span_head={self.span_head!r} with head={self.head!r}: expected one of {SPAN_HEADS} "
                "for head='qa', 'linear' for the others"
            )

    def build(self):
        return build_model(self.encoder, self.head, self.num_labels, self.span_head)

    def replace(self, **changes) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        values = dataclasses.asdict(self)
        return json.dumps(values, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "<spec>") -> ModelSpec:
        try:
            values = json.loads(text)
            values["encoder"] = EncoderConfig.from_dict(values["encoder"])
            return cls(**values)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{source}: not a qajax model spec ({e})") from e

    @classmethod
    def read(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (a qajax checkpoint holds spec.json)")
        return cls.from_json(path.read_text(), source=str(path))
