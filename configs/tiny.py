"""A randomly initialised tiny BERT on generated span-QA data: trains in seconds on a CPU.

    qajax train configs/tiny.py --workdir runs/tiny
    qajax train configs/tiny.py --workdir runs/tiny --set train.steps=300 --set parallel.mode=pmap

Expected on 2 CPU cores: eval/exact (start and end right) from ~0 to above 90 within 200 steps.
"""

import ml_collections

from qajax.defaults import add_engine_sections


def get_config():
    config = add_engine_sections(ml_collections.ConfigDict())

    config.task = ml_collections.ConfigDict()
    config.task.name = "synthetic_span"
    config.task.num_train = 1024
    config.task.num_eval = 256
    config.task.seq_len = 32
    config.task.vocab_size = 64
    config.task.answer_length = 4  # the closing marker is 1..4 tokens after the opening one
    config.task.start_weight = 1.0  # loss = (start_weight * CE_start + end_weight * CE_end) / sum
    config.task.end_weight = 1.0
    config.task.span_head = "linear"  # or scalar_mix | layer_attention | bilinear_layer_attention | extra_layer

    config.model = ml_collections.ConfigDict()
    config.model.pretrained = ""  # '' = random init from the fields below
    config.model.family = "bert"
    config.model.vocab_size = 64
    config.model.hidden_size = 32
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.intermediate_size = 64
    config.model.max_position_embeddings = 64
    config.model.hidden_dropout = 0.1
    config.model.attention_dropout = 0.1
    config.model.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16 (params stay float32)
    config.model.remat = False
    config.model.scan_layers = False
    config.model.attention_implementation = "auto"  # auto | xla | cudnn | pallas | explicit
    config.model.attention_platform = ""  # what auto compiles for: "" = this machine; "tpu" | "gpu" ahead of time

    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 10
    return config
