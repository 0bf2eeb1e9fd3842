"""Accuracy parity on SQuAD 2.0 (issue 23, item 3): qajax's training against a plain transformers + PyTorch loop
(`torch_squad.py`, run_qa's recipe as the HF Trainer runs it), everything else equal.

    nice -n 10 .venv/bin/python scripts/experiments/parity_squad.py --estimate 8  # a few steps of each arm
    nice -n 10 .venv/bin/python scripts/experiments/parity_squad.py --workdir runs/ps0 --variants qajax --set seed=0
    nice -n 10 .venv/bin/python scripts/experiments/parity_squad.py --workdir runs/ps0 --variants pytorch --set seed=0
    .venv/bin/python scripts/experiments/parity_squad.py --rewrite-report  # the report from the rows only

Both arms read squad_split.py's split and settings (configs/squad.py with its SETTINGS, then PARITY below, then
--set): 8 articles train, Imperialism chooses the null threshold, Normans / Scottish_Parliament / Yuan_dynasty are
scored. Both train on the same windows (qajax's featurizer, one cached file), and both are scored from their
start/end logits by the same code: `qajax.tasks.squad.task.DevThresholdEvaluation` (n-best, dev threshold,
official v2.0 metric), which the qajax loop's final evaluation runs and `score_logits` runs on the PyTorch
logits. The PyTorch arm reads its hyperparameters from the same config (`recipe_of`), so only the training
implementation differs. One arm per process (a run holds 10+ GB of a 24 GB host shared with other jobs); rows
go to docs/results/accuracy_parity_squad.jsonl as each run ends, and the report (.md, .png) is rewritten.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import squad_split  # noqa: E402  (the scripts beside this one)
import torch_squad  # noqa: E402
from ablation import run_variants  # noqa: E402
from parity_report import write_report  # noqa: E402

log = logging.getLogger(__name__)
REPO = squad_split.REPO
REPORT = REPO / "docs" / "results" / "accuracy_parity_squad.md"
# squad_split.py's settings (384 / 128 windows, batch 16, lr 2e-4, 10% warmup, linear decay, weight decay 0.01,
# length buckets of 64) over 2 epochs, evaluated once at the end: 5 epochs (~50 minutes a qajax run here) x 2
# arms x 3 seeds do not fit the session.
PARITY = ("train.epochs=2.0", "train.eval_every=0")
ARMS = {"qajax": PARITY, "pytorch": PARITY}  # the same overrides: the arm is the implementation alone
# A diagnostic arm: the PyTorch loop with qajax's loss (padding out of the softmax), the one difference of
# recipe left between the two arms (`--check` shows the rest of the step equal). Not part of the parity.
ARMS["pytorch-masked"] = PARITY
DEFAULT_NO_DECAY = (r".*/bias", r".*(LayerNorm|layer_norm)/scale")  # HF's rule, as qajax's paths spell it


def load_config(overrides=()):
    """configs/squad.py with squad_split's SETTINGS, then `overrides`; the data path made absolute."""
    from qajax import config as config_lib

    config = config_lib.load(str(REPO / squad_split.CONFIG), [*squad_split.SETTINGS, *overrides])
    t = config.task
    if not Path(t.train_file).is_absolute():  # the config's path is relative to the repository
        t.train_file = str((REPO / t.train_file).resolve())
    return config


def model_folder(config) -> str:
    from qajax.errors import ConfigError
    from qajax.pretrained import MINILM_INSTALL, minilm_dir

    if config.model.pretrained != "minilm" or minilm_dir() is None:
        raise ConfigError(f"the study needs model.pretrained='minilm' and its checkpoint ({MINILM_INSTALL})")
    return str(minilm_dir())


def read_data(config) -> dict:
    """{train: arrays, eval: (examples, features), dev: (examples, features)}: the windows the qajax task builds
    (`qajax.tasks.squad.task.build`: same reader, split, featurizer, config and feature cache)."""
    import transformers

    from qajax.tasks.squad.features import FeatureConfig, featurize_cached
    from qajax.tasks.squad.task import read_splits

    t = config.task
    assert not t.tokenizer, "the checkpoint's own tokenizer, as the qajax task loads it"
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_folder(config))
    features = FeatureConfig(t.max_seq_length, t.doc_stride, t.max_query_length)
    cache = Path(t.cache_dir).expanduser()
    featurize = lambda examples: featurize_cached(examples, tokenizer, features, for_training=True, cache_dir=cache)
    train, held_out, dev = read_splits(t, config.seed)
    return {"train": featurize(train), "eval": (held_out, featurize(held_out)), "dev": (dev, featurize(dev))}


def score_logits(config, data: dict, outputs: dict) -> dict[str, float]:
    """The qajax loop's final evaluation on given logits: {eval: {start_logits, end_logits}, dev: ...} ->
    eval/* at the null threshold chosen on dev, eval/f1_at_0, eval/always_answer_HasAns_f1, dev/*."""
    from qajax.tasks.squad.task import DevThresholdEvaluation, SquadEvaluation

    t = config.task
    evaluate = DevThresholdEvaluation(SquadEvaluation(*data["eval"], t), SquadEvaluation(*data["dev"], t))
    return evaluate(outputs, {"eval": None, "dev": None})


def row_scores(metrics: dict) -> dict:
    """The row's scores from an evaluation's metrics (the same keys for both arms)."""
    keys = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "f1_at_0",
            "always_answer_HasAns_f1", "best_f1")  # fmt: skip
    row = {k: float(metrics[f"eval/{k}"]) for k in keys}
    row["null_threshold"] = metrics.get("eval/null_threshold")  # None: dev preferred "no answer" everywhere
    row["dev_best_f1"] = float(metrics["dev/best_f1"])
    return row


def recipe_of(config) -> torch_squad.Recipe:
    """The PyTorch arm's settings, read from the qajax config; refuses what the reference loop cannot mirror."""
    from qajax.errors import ConfigError

    o, t, m = config.optimizer, config.train, config.model
    mirrored = {
        "optimizer.name": (o.name, "adamw"), "optimizer.schedule": (o.schedule, "linear"),
        "optimizer.end_learning_rate_ratio": (o.end_learning_rate_ratio, 0.0),
        "optimizer.warmup_steps": (o.warmup_steps, 0), "optimizer.no_decay": (tuple(o.no_decay), DEFAULT_NO_DECAY),
        "optimizer.lr_multipliers": (tuple(o.lr_multipliers), ()),
        "optimizer.frozen": (tuple(o.frozen), ()), "train.accumulation_steps": (t.accumulation_steps, 1),
        "train.packing": (t.packing, False), "model.dtype": (m.dtype, "float32"), "train.steps": (t.steps, 0),
    }  # fmt: skip
    for key, (value, wanted) in mirrored.items():
        if value != wanted:
            raise ConfigError(f"{key}={value!r}: the PyTorch reference mirrors only {wanted!r}")
    return torch_squad.Recipe(
        learning_rate=o.learning_rate, per_device_train_batch_size=t.batch_size, num_train_epochs=t.epochs,
        warmup_ratio=o.warmup_ratio, weight_decay=o.weight_decay, adam_beta1=o.b1, adam_beta2=o.b2,
        adam_epsilon=o.eps, max_grad_norm=o.grad_clip_norm or 0.0, seed=config.seed,
        hidden_dropout_prob=m.hidden_dropout, attention_probs_dropout_prob=m.attention_dropout,
        log_every=t.log_every,
    )  # fmt: skip


def settings(config, arm: str) -> dict:
    """Each arm's hyperparameters as the report lists them."""
    o, t, m = config.optimizer, config.train, config.model
    common = {
        "learning rate": f"{o.learning_rate:g}, linear warmup over ceil({o.warmup_ratio:g} x steps), linear decay to 0",
        "batch": t.batch_size, "epochs": t.epochs, "weight decay": o.weight_decay,
        "Adam betas / eps": f"({o.b1}, {o.b2}) / {o.eps:g}", "grad clip (global norm)": o.grad_clip_norm,
        "dropout (hidden / attention)": f"{m.hidden_dropout} / {m.attention_dropout}", "precision": m.dtype,
    }  # fmt: skip
    if arm == "qajax":
        return {**common, "optimizer": "qajax.train.optim (fused AdamW, decoupled decay inside the lr)",
                "no weight decay on": ", ".join(o.no_decay),
                "batches": f"pools of 50 batches sorted by length, batch order shuffled, each cut to its longest "
                           f"rounded up to {t.length_bucket}; the epoch's remainder dropped",
                "loss": "(CE_start + CE_end) / 2, padding masked out of the softmax",
                "seed drives": "head init, data order, dropout (JAX PRNG streams)"}  # fmt: skip
    loss = ("(CE_start + CE_end) / 2, padding masked out of the softmax (qajax's; the diagnostic arm)"
            if arm == "pytorch-masked" else
            "BertForQuestionAnswering's (CE_start + CE_end) / 2 over every position of the padded batch")  # fmt: skip
    return {**common, "optimizer": "torch.optim.AdamW (decoupled decay: p *= 1 - lr x wd)",
            "no weight decay on": "Trainer.get_decay_parameter_names: biases, LayerNorm weights",
            "batches": "Trainer group_by_length (megabatches of 50 batches sorted by length, longest first), "
                       "each padded to its longest; the last short batch kept",
            "loss": loss,
            "seed drives": "head init, dropout (torch.manual_seed), data order (a seeded torch.Generator)"}  # fmt: skip


def run_arm(workdir: Path, overrides: list[str], command: str, args) -> dict:
    """One run of the arm named by `workdir`'s last part (run_variants makes <workdir>/<arm>)."""
    from qajax.errors import ConfigError

    arm, workdir = workdir.name, Path(workdir)
    if workdir.exists() and any(workdir.iterdir()):
        raise ConfigError(f"{workdir} is not empty: a resumed run would not time or report one run")
    config = load_config(overrides)
    started = time.perf_counter()
    data = read_data(config)
    if arm == "qajax":
        result = _run_qajax(config, data, workdir)
    else:
        result = _run_pytorch(config, data, workdir, mask_padding=arm == "pytorch-masked")
    seconds = time.perf_counter() - started
    held_out = data["eval"][0]
    unanswerable = sum(e.is_impossible for e in held_out)
    return {
        "command": command, "date": datetime.date.today().isoformat(), "arm": arm, "seed": config.seed,
        "epochs": config.train.epochs, "batch_size": config.train.batch_size,
        "learning_rate": config.optimizer.learning_rate, "max_seq_length": config.task.max_seq_length,
        "doc_stride": config.task.doc_stride, "train_windows": len(data["train"]["input_ids"]),
        "eval_questions": len(held_out), "dev_questions": len(data["dev"][0]),
        "baseline_f1": 100.0 * unanswerable / len(held_out), "seconds": seconds,
        "machine": f"{platform.machine()}, {squad_split._cpu_count()} CPU cores",
        **result, "settings": settings(config, arm),
    }  # fmt: skip


def _run_qajax(config, data: dict, workdir: Path) -> dict:
    from qajax.run import train
    from qajax.train.logs import METRICS_FILE, read_metrics

    summary = train(config, workdir)
    losses = [[r["step"], r["train/loss"]] for r in read_metrics(workdir / METRICS_FILE) if "train/loss" in r]
    return {"steps": summary["final_step"], "total_steps": summary["total_steps"], "losses": losses,
            **row_scores(summary)}  # fmt: skip


def _run_pytorch(config, data: dict, workdir: Path, mask_padding: bool = False) -> dict:
    recipe = dataclasses.replace(recipe_of(config), mask_padding_in_loss=mask_padding)
    model = torch_squad.load_model(model_folder(config), recipe)
    trained = torch_squad.train(model, data["train"], recipe)
    batch = config.train.eval_batch_size
    outputs = {name: torch_squad.predict(model, data[name][1], batch) for name in ("eval", "dev")}
    metrics = score_logits(config, data, outputs)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "metrics.json").write_text(json.dumps({**metrics, "losses": trained["losses"]}, indent=1) + "\n")
    np.savez(workdir / "logits.npz", **{f"{name}_{k}": v for name, out in outputs.items() for k, v in out.items()})
    return {"steps": trained["steps"], "total_steps": trained["total_steps"], "losses": trained["losses"],
            "train_seconds": trained["seconds"], **row_scores(metrics)}  # fmt: skip


def check(overrides, steps: int = 3, batch_size: int = 16) -> dict:
    """The two arms as functions, dropout and warmup off: both start from the same weights (qajax's initial parameters,
    fresh head included, copied into the torch model through the HF export names), take `steps` training
    steps on the same batches of full-length windows (no padding, so both losses are the same function), and
    are compared step by step: loss, gradient norm before clipping, and after the steps the parameters' change
    (qajax's against torch's, relative to torch's). Raises where they differ beyond float32 rounding."""
    import jax
    import torch

    from qajax.hf import to_hf_flat
    from qajax.hf.weights import flax_path_to_torch
    from qajax.run import prepare

    torch.set_num_threads(1)
    # No warmup: the first steps' updates at warmup's learning rates (~1e-6) are a few float32 ulps of the
    # weights, where the two optimizers' different rounding (torch decays and steps in two multiplies, qajax in
    # one expression) would be all one saw.
    dropout_off = ("model.hidden_dropout=0.0", "model.attention_dropout=0.0", "optimizer.warmup_ratio=0.0")
    config = load_config([*PARITY, *dropout_off, *overrides])
    data = read_data(config)
    prepared = prepare(config)
    task, parallel = prepared.task, prepared.parallel
    keys = list(next(iter(task.train_batches(**prepared.iterator_args))))
    full = np.flatnonzero(torch_squad.window_lengths(data["train"]["attention_mask"]) == config.task.max_seq_length)
    if len(full) < steps * batch_size:
        raise ValueError(f"{len(full)} full-length windows, {steps * batch_size} needed")
    batches = [full[k * batch_size : (k + 1) * batch_size] for k in range(steps)]

    recipe = dataclasses.replace(recipe_of(config), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = torch_squad.load_model(model_folder(config), recipe)
    initial = dict(flax_path_to_torch(p, v) for p, v in to_hf_flat(task.initial_params, task.spec).items())
    missing, unexpected = model.load_state_dict({k: torch.tensor(v) for k, v in initial.items()}, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise AssertionError(f"weights do not map: missing {missing[:3]}, unexpected {unexpected[:3]}")
    optimizer, schedule = torch_squad.make_optimizer(model, recipe, prepared.total_steps)
    model.train()

    state = parallel.create_state(prepared.make_state, task.initial_params)
    step_fn = prepared.compiled_step()
    per_step = []
    for k, rows in enumerate(batches):
        state, metrics = step_fn(state, parallel.place_batch({key: data["train"][key][rows] for key in keys}))
        loss = model(**torch_squad.torch_batch(data["train"], rows)).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ours = {name: float(jax.device_get(metrics[name])) for name in ("train/loss", "train/grad_norm")}
        per_step.append({"step": k, "lr_torch": schedule.get_last_lr()[0], "loss_qajax": ours["train/loss"],
                         "loss_torch": float(loss.detach()), "grad_norm_qajax": ours["train/grad_norm"],
                         "grad_norm_torch": float(norm)})  # fmt: skip
    final = dict(flax_path_to_torch(p, v) for p, v in to_hf_flat(jax.device_get(state.params), task.spec).items())
    theirs = {k: v.detach().numpy() for k, v in model.state_dict().items() if k in final}
    delta_q = np.concatenate([(final[k] - initial[k]).ravel() for k in theirs])
    delta_t = np.concatenate([(theirs[k] - initial[k]).ravel() for k in theirs])
    result = {
        "batches": f"{steps} x {batch_size} windows of {config.task.max_seq_length} tokens (no padding)",
        "per_step": per_step,
        "parameters": len(theirs),
        "update_norm_torch": float(np.linalg.norm(delta_t)),
        "update_difference_relative": float(np.linalg.norm(delta_q - delta_t) / np.linalg.norm(delta_t)),
        "largest_differences": {  # per tensor: |update difference| / |torch's update|, the five largest
            k: float(np.linalg.norm(final[k] - theirs[k]) / max(np.linalg.norm(theirs[k] - initial[k]), 1e-30))
            for k in sorted(theirs, key=lambda k: -np.linalg.norm(final[k] - theirs[k]))[:5]
        },
    }
    for row in per_step:
        for name in ("loss", "grad_norm"):
            a, b = row[f"{name}_qajax"], row[f"{name}_torch"]
            if abs(a - b) > 1e-4 * max(1.0, abs(b)):
                raise AssertionError(f"step {row['step']}: {name} {a} (qajax) vs {b} (torch): {json.dumps(result)}")
    if result["update_difference_relative"] > 1e-3:
        raise AssertionError(f"the parameter updates differ: {json.dumps(result)}")
    return result


def estimate(overrides, steps: int) -> dict:
    """Times `steps` training steps of each arm on the real batches and projects a whole run's training minutes
    (steps that compile are counted apart: qajax compiles once per batch width)."""
    import itertools

    import jax

    from qajax.run import prepare

    config = load_config([*PARITY, *overrides])
    # qajax: the prepared run's own step and bucketed batches
    prepared = prepare(config)
    parallel, task = prepared.parallel, prepared.task
    one_epoch = itertools.islice(task.train_batches(**prepared.iterator_args), prepared.steps_per_epoch)
    epoch_widths = [b["input_ids"].shape[1] for b in one_epoch]
    state = parallel.create_state(prepared.make_state, task.initial_params)
    step_fn = prepared.compiled_step()
    batches = parallel.prefetch(task.train_batches(**prepared.iterator_args), 1)
    timed, compile_s = [], []
    for _ in range(steps):
        batch = next(batches)
        width, before, start = batch["input_ids"].shape[1], parallel.compilations(step_fn), time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - start
        (compile_s if parallel.compilations(step_fn) != before else timed).append((width, seconds))
    per_width = sum(s for _, s in timed) / max(1, sum(w for w, _ in timed))
    compiles = len(set(epoch_widths)) * (np.mean([s for _, s in compile_s]) if compile_s else 0.0)
    qajax_steps = prepared.total_steps
    qajax_s = per_width * sum(epoch_widths) * qajax_steps / prepared.steps_per_epoch + compiles
    del state, step_fn, batches, prepared, task
    # pytorch: the reference's step on the Trainer's length-grouped batches
    import torch

    data = read_data(config)
    recipe = recipe_of(config)
    model = torch_squad.load_model(model_folder(config), recipe)
    train = data["train"]
    lengths = torch_squad.window_lengths(train["attention_mask"])
    total = recipe.total_steps(len(lengths))
    optimizer, schedule = torch_squad.make_optimizer(model, recipe, total)
    generator = torch.Generator().manual_seed(config.seed)
    epoch = torch_squad.length_grouped_batches(lengths, recipe.per_device_train_batch_size, generator)
    widths = [int(lengths[rows].max()) for rows in epoch]
    model.train()
    torch_timed = []
    for rows in epoch[: steps + 1]:
        start = time.perf_counter()
        torch_squad.train_step(model, optimizer, schedule, torch_squad.torch_batch(train, rows), recipe.max_grad_norm)
        torch_timed.append((int(lengths[rows].max()), time.perf_counter() - start))
    torch_timed = torch_timed[1:]  # the first step warms up
    per_width_torch = sum(s for _, s in torch_timed) / sum(w for w, _ in torch_timed)
    torch_s = per_width_torch * sum(widths) * total / len(epoch)
    start = time.perf_counter()
    torch_squad.predict(model, {k: v[:64] for k, v in data["eval"][1].items()}, config.train.eval_batch_size)
    eval_windows = len(data["eval"][1]["input_ids"]) + len(data["dev"][1]["input_ids"])
    predict_s = (time.perf_counter() - start) / 64 * eval_windows
    return {
        "qajax": {"steps": qajax_steps, "timed_steps": timed, "compile_steps": compile_s,
                  "mean_width": float(np.mean(epoch_widths)), "distinct_widths": len(set(epoch_widths)),
                  "train_minutes": qajax_s / 60},
        "pytorch": {"steps": total, "timed_steps": torch_timed, "mean_width": float(np.mean(widths)),
                    "train_minutes": torch_s / 60, "predict_minutes": predict_s / 60},
    }  # fmt: skip


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if argv == ["--rewrite-report"]:  # from the rows, after a change here
        rows = [json.loads(line) for line in REPORT.with_suffix(".jsonl").read_text().splitlines()]
        write_report(rows, REPORT)
        return 0
    if argv[:1] == ["--check"]:  # the arms as functions (see `check`); prints what it compared
        print(json.dumps(check(argv[1:]), indent=1), flush=True)
        return 0
    if argv[:1] == ["--estimate"]:
        from qajax.host_memory import keep_freed_host_memory

        keep_freed_host_memory()
        result = estimate(argv[2:], int(argv[1]))
        for arm, numbers in result.items():
            print(f"{arm}: ~{numbers['train_minutes']:.1f} minutes of training for {numbers['steps']} steps "
                  f"(mean width {numbers['mean_width']:.0f})", json.dumps(numbers), flush=True)  # fmt: skip
        return 0
    return run_variants(
        argv, doc=__doc__, script="scripts/experiments/parity_squad.py", variants=ARMS, default="qajax,pytorch",
        report=REPORT, run_one=run_arm, write_report=write_report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
