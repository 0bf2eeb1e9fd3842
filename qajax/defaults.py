"""The engine's config sections with their defaults; every config file starts from these and changes
what its experiment needs (defaults live here and in configs, never in `config.get(key, default)`)."""

import ml_collections

from qajax.techniques import techniques_section
from qajax.train import optim


def add_engine_sections(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config.seed = 0

    config.train = ml_collections.ConfigDict()
    config.train.steps = 200  # 0: use train.epochs
    config.train.epochs = 0.0
    config.train.batch_size = 32  # global, over all devices and processes
    # > 0: the global batch is this many examples per device (x accumulation_steps), whatever the device count
    config.train.per_device_batch_size = 0
    config.train.accumulation_steps = 1  # micro-batches per step (batch_size / accumulation each)
    config.train.eval_batch_size = 64  # global; the last batch is padded, never a new shape
    # > 0: batches of similar lengths, trimmed to a multiple of this (e.g. 64); one compile per length
    config.train.length_bucket = 0
    # True (span QA on SQuAD windows): up to `windows_per_row` windows share each row (qajax.data.packing);
    # train.batch_size then counts rows (SQuAD 384/128 windows: ~1.9 windows a row). One compile.
    config.train.packing = False
    config.train.windows_per_row = 4  # SQuAD windows are >= ~40 tokens, but 3 already fill 384 (measured)
    config.train.log_every = 20
    config.train.eval_every = 100  # 0: only at the end
    config.train.eval_at_start = False  # also evaluate the initial model (logged at step 0)
    config.train.early_stopping_metric = ""  # e.g. eval/f1, or eval/loss with mode min
    config.train.early_stopping_mode = "max"
    config.train.patience = 0  # evaluations without improvement before stopping (0: never stop)
    config.train.prefetch = 2  # batches transferred ahead of the step

    config.optimizer = optim.default_config()

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
    config.checkpoint.best_metric = ""  # keep also the best by this eval metric, e.g. eval/f1
    config.checkpoint.best_mode = "max"
    config.checkpoint.keep_best = 1
    config.checkpoint.asynchronous = True

    config.techniques = techniques_section()  # each technique's section; enable with techniques.NAME.enabled=true

    config.log = ml_collections.ConfigDict()
    config.log.tensorboard = True
    config.log.progress = True
    return config
