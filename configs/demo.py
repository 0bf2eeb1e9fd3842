"""The embedded default (README command one): fine-tune the real pretrained MiniLM on a SQuAD 2.0-format
data set generated at run time (invented towns; answerable and unanswerable questions), offline.

    qajax demo                                   # train, evaluate before/after, predict, export to HF
    qajax train configs/demo.py --workdir runs/demo

Expected on 2 CPU cores within a few minutes: F1 on held-out generated questions from the untrained
head's level (mostly "no answer") to above 80.
"""

import ml_collections

from qajax.models.factory import pretrained_section
from qajax.tasks.squad.task import default_config as squad_task
from qajax.train.defaults import add_engine_sections


def get_config():
    config = add_engine_sections(ml_collections.ConfigDict())
    config.task = squad_task()
    config.task.train_file = "generated"
    config.task.eval_file = "generated"  # another seed: held-out towns
    config.task.generated_passages = 200  # 800 questions, ~40% unanswerable
    config.task.max_seq_length = 64  # question + passage take at most 57 MiniLM tokens
    config.task.doc_stride = 16
    config.task.max_query_length = 16
    config.model = pretrained_section("minilm")

    config.train.steps = 0
    config.train.epochs = 2.0  # 100 steps
    config.train.batch_size = 16
    config.train.log_every = 10
    config.train.eval_every = 0
    config.optimizer.learning_rate = 3e-4  # a small data set and a short run: high, with warmup
    config.optimizer.warmup_ratio = 0.1
    config.checkpoint.every_steps = 1000
    return config
