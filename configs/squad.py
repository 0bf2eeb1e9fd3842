"""Span QA with the real pretrained MiniLM on SQuAD 2.0 (v1.1 with --set task.version=v1.1).

Default data: the 12 SQuAD 2.0 dev articles of ../shared/data, 9 for training and 3 held out by title:

    qajax train configs/squad.py --workdir runs/squad

Other data: --set task.train_file=train-v2.0.json --set task.eval_file=dev-v2.0.json --set task.eval_titles=[]
(or a hub name such as squad_v2 where there is a network). Multi-context QA (report 000's open-domain setting,
three passages a question): --set task.contexts_per_question=3.
"""

import ml_collections

from qajax.checkpoints.factory import pretrained_section
from qajax.defaults import add_engine_sections
from qajax.tasks.squad.task import default_config as squad_task


def get_config():
    config = add_engine_sections(ml_collections.ConfigDict())
    config.task = squad_task()
    config.task.train_file = "../shared/data/squad2/dev-part.json"
    # 3 of the 12 articles (1,010 questions, 49% unanswerable); 9 train (3,601 questions)
    config.task.eval_titles = ("Normans", "Scottish_Parliament", "Yuan_dynasty")
    config.model = pretrained_section("minilm")

    config.train.steps = 0
    config.train.epochs = 2.0
    config.train.batch_size = 32
    # Batches of similar lengths trimmed to a multiple of 64 (the loss ignores padding: it trains as padded
    # windows do). Measured end to end against packing (train.packing=true, one compile, 384-token rows) on
    # this CPU, bucketing's shorter rows win: attention's cost grows with the row's square
    # (docs/results/squad_epoch_bench.md, `qajax bench --workload squad`).
    config.train.length_bucket = 64
    config.train.log_every = 10
    config.train.eval_every = 0  # at the end
    config.optimizer.learning_rate = 1e-4
    config.optimizer.warmup_ratio = 0.1
    config.checkpoint.every_steps = 100
    return config
