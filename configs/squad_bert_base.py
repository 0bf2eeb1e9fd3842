"""SQuAD 2.0 with a BERT-base-uncased shape: seq 384, stride 128, bf16, 32 examples per device, AdamW.

The accelerator reference config: `qajax compile` sizes and costs its step for a TPU or GPU without one,

    qajax compile configs/squad_bert_base.py --target v5e:2x2 --json
    qajax compile configs/squad_bert_base.py --target h100

and with real weights it trains as any config does:

    qajax train configs/squad_bert_base.py --workdir runs/bert --set model.pretrained=path/to/bert-base-uncased \\
        --set task.train_file=train-v2.0.json --set task.eval_file=dev-v2.0.json

With no `model.pretrained` the encoder starts from random weights (a compile reads shapes only).
"""

import ml_collections

from qajax.defaults import add_engine_sections
from qajax.tasks.squad.task import default_config as squad_task


def get_config():
    config = add_engine_sections(ml_collections.ConfigDict())
    config.task = squad_task()
    config.task.train_file = "../shared/data/squad2/dev-part.json"
    config.task.eval_titles = ("Normans", "Scottish_Parliament", "Yuan_dynasty")
    config.task.max_seq_length = 384
    config.task.doc_stride = 128

    m = config.model = ml_collections.ConfigDict()
    m.pretrained = ""  # an HF folder (e.g. bert-base-uncased's) replaces the architecture keys below
    m.family = "bert"
    m.vocab_size = 30522
    m.hidden_size = 768
    m.num_layers = 12
    m.num_heads = 12
    m.intermediate_size = 3072
    m.dtype = "bfloat16"  # compute; parameters and optimizer state stay float32
    m.remat = False
    m.recompute_activation = False  # True: the feed-forward activation recomputed in the backward pass (GPU memory)
    m.scan_layers = False
    m.attention_implementation = "auto"  # the fused kernel of the platform compiled for (cudnn, pallas)
    m.attention_platform = ""  # "" = this machine's; qajax compile sets the target's
    m.hidden_dropout = 0.1
    m.attention_dropout = 0.1

    config.train.per_device_batch_size = 32
    config.train.steps = 0
    config.train.epochs = 2.0
    config.train.eval_batch_size = 256
    config.optimizer.learning_rate = 3e-5
    config.optimizer.warmup_ratio = 0.1
    return config
