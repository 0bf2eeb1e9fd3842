"""A randomly initialised tiny BERT on generated span-QA data: trains in seconds on a CPU.

    qajax train configs/tiny.py --workdir runs/tiny
    qajax train configs/tiny.py --workdir runs/tiny --set train.steps=300 --set parallel.mode=pmap

Expected on 2 CPU cores: eval/exact (start and end right) from ~0 to above 90 within 200 steps.
"""

import ml_collections

from qajax.train import optim


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.task = ml_collections.ConfigDict()
    config.task.name = "synthetic_span"
    config.task.num_train = 1024
    config.task.num_eval = 256
    config.task.seq_len = 32
    config.task.vocab_size = 64
    config.task.answer_length = 4  # the closing marker is 1..4 tokens after the opening one
    config.task.start_weight = 1.0  # loss = (start_weight * CE_start + end_weight * CE_end) / sum
    config.task.end_weight = 1.0

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
    config.model.attention_implementation = "auto"

    config.train = ml_collections.ConfigDict()
    config.train.steps = 200  # 0: use train.epochs
    config.train.epochs = 0.0
    config.train.batch_size = 32  # global, over all devices and processes
    config.train.accumulation_steps = 1  # micro-batches per step (batch_size / accumulation each)
    config.train.eval_batch_size = 64  # global; the last batch is padded, never a new shape
    config.train.log_every = 20
    config.train.eval_every = 100  # 0: only at the end
    config.train.early_stopping_metric = ""  # e.g. eval/exact, or eval/loss with mode min
    config.train.early_stopping_mode = "max"
    config.train.patience = 0  # evaluations without improvement before stopping (0: never stop)
    config.train.prefetch = 2  # batches transferred ahead of the step

    config.optimizer = optim.default_config()
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 10
    config.optimizer.weight_decay = 0.01

    config.parallel = ml_collections.ConfigDict()
    config.parallel.mode = "mesh"  # mesh (jit + NamedSharding) | pmap
    config.parallel.data = -1  # devices on the data axis; -1 = all that fsdp leaves
    config.parallel.fsdp = 1  # > 1 shards params and optimizer state over this many devices
    config.parallel.fsdp_min_size = 16384  # smaller arrays stay replicated
    config.parallel.coordinator_address = ""  # multi-host: host:port of process 0 (or QAJAX_COORDINATOR)
    config.parallel.num_processes = 0
    config.parallel.process_id = -1

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 50
    config.checkpoint.keep_last = 2
    config.checkpoint.best_metric = ""  # keep also the best by this eval metric, e.g. eval/exact
    config.checkpoint.best_mode = "max"
    config.checkpoint.keep_best = 1
    config.checkpoint.asynchronous = True

    config.log = ml_collections.ConfigDict()
    config.log.tensorboard = True
    config.log.progress = True
    return config
