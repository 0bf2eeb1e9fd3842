"""qajax/train/loop.py end to end on configs/tiny.py: exact resume after SIGKILL, early stopping, best-k
checkpoints, the files a workdir holds, and that the tiny config learns.

The killed runs are real `qajax train` processes killed with SIGKILL; "exact" means every logged number of
the resumed run equals the uninterrupted run's bit for bit.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qajax import config as config_lib
from qajax.checkpoints.saved import read_spec
from qajax.run import train
from qajax.train.logs import METRICS_FILE, read_metrics
from qajax.train.loop import CHECKPOINT_DIR

REPO = Path(__file__).resolve().parents[2]
# 200 steps (the config's default) logged every step, checkpoints every 7 steps (off the eval interval).
OVERRIDES = [
    "train.log_every=1",
    "checkpoint.every_steps=7",
    "train.eval_every=50",
    "log.progress=false",
    "log.tensorboard=false",
]
TINY = config_lib.load("configs/tiny.py")
TOTAL_STEPS = TINY.train.steps  # 200: the runs keep the default duration
TIMING_KEYS = {"examples_per_sec", "tokens_per_sec"}  # wall-clock rates: the only numbers allowed to differ

# `qajax train` with orbax's commit of one checkpoint (metadata, commit file, rename of `N.orbax-checkpoint-tmp`
# to `N`) replaced by SIGKILL: the process dies with that checkpoint fully written but not committed.
KILL_AT_COMMIT = """
import os, signal, sys
from orbax.checkpoint._src.path import atomicity
from qajax.cli import main

commit = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize(self):
    if self.get_final().name == os.environ["KILL_AT_COMMIT_OF_STEP"]:
        os.kill(os.getpid(), signal.SIGKILL)
    await commit(self)

atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.exit(main(sys.argv[1:]))
"""


def _command(workdir, *prefix):
    sets = [arg for override in OVERRIDES for arg in ("--set", override)]
    return [sys.executable, *prefix, "train", "configs/tiny.py", "--workdir", str(workdir), *sets]


def _start(workdir, *prefix, env=()):
    workdir.mkdir(parents=True, exist_ok=True)
    # Output to files, not pipes: nobody reads a pipe while the test polls, and a full pipe would block the run.
    with (
        open(workdir.parent / f"{workdir.name}.out", "w") as out,
        open(workdir.parent / f"{workdir.name}.err", "w") as err,
    ):
        return subprocess.Popen(
            _command(workdir, *prefix),
            cwd=REPO,
            stdout=out,
            stderr=err,
            env={**os.environ, "JAX_PLATFORMS": "cpu", **dict(env)},
        )


def _run(workdir) -> dict:
    """`qajax train` to completion; returns the summary it prints."""
    process = _start(workdir, "-m", "qajax")
    assert process.wait(timeout=300) == 0, (workdir.parent / f"{workdir.name}.err").read_text()[-3000:]
    return json.loads((workdir.parent / f"{workdir.name}.out").read_text())


def _logged_lines(workdir) -> int:
    try:
        return (workdir / METRICS_FILE).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _committed_steps(workdir) -> list[int]:
    directory = workdir / CHECKPOINT_DIR
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _metrics(workdir) -> list[dict]:
    return read_metrics(workdir / METRICS_FILE)


def _without_timing(records):
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in records]


def _assert_same_as_uninterrupted(resumed, reference):
    steps = [record["step"] for record in resumed]
    assert steps == list(range(1, TOTAL_STEPS + 1)), "resumed log has missing or repeated steps"
    for record, expected in zip(resumed, reference, strict=True):
        for key in ("loss", "train/grad_norm", "learning_rate"):
            assert record[key] == expected[key], (record["step"], key, record[key], expected[key])
    # Every other logged number too (start/end losses, eval/exact at steps 50..200): equal, not close.
    assert _without_timing(resumed) == _without_timing(reference)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: (workdir, summary)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    return workdir, _run(workdir)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A run killed with SIGKILL from outside once a checkpoint at step 35 or later is committed (past the first
    epoch of 32 batches; asynchronous saves commit a few steps after they are logged), then the same command
    again to the end: (workdir, latest committed step at the kill, the data position saved with it, summary)."""
    workdir = tmp_path_factory.mktemp("killed") / "run"
    process = _start(workdir, "-m", "qajax")
    deadline = time.monotonic() + 300
    while not _committed_steps(workdir) or _committed_steps(workdir)[-1] < 35:  # the kill lands wherever that is
        assert process.poll() is None, f"the run ended (rc {process.returncode}) before it committed step 35"
        assert time.monotonic() < deadline, "the run did not commit step 35 in 300 s"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    logged = _logged_lines(workdir)
    assert logged < TOTAL_STEPS, f"killed after {logged} lines: not mid-run"
    latest = _committed_steps(workdir)[-1]
    position = json.loads((workdir / CHECKPOINT_DIR / str(latest) / "data" / "metadata").read_text())
    return workdir, latest, position, _run(workdir)


def test_resume_after_sigkill_is_exact(reference, killed_and_resumed):
    workdir, _, _, summary = killed_and_resumed
    _assert_same_as_uninterrupted(_metrics(workdir), _metrics(reference[0]))
    assert summary["final_step"] == TOTAL_STEPS and summary["eval/exact"] == reference[1]["eval/exact"]


def test_resume_starts_at_the_latest_checkpoint_and_its_data_position(killed_and_resumed):
    _, latest, position, summary = killed_and_resumed
    assert summary["start_step"] == latest
    # The position saved beside the state: after step s of 32-batch epochs (1024 examples / 32) the next batch is
    # batch s % 32 of epoch s // 32. The kill came after step 35 was committed: the position is in a later epoch;
    # that the resumed run read it, rather than starting the data over, the exact losses of the test above show.
    steps_per_epoch = TINY.task.num_train // TINY.train.batch_size
    assert position == {"epoch": latest // steps_per_epoch, "batch_in_epoch": latest % steps_per_epoch}
    assert position["epoch"] >= 1


def test_kill_while_committing_a_checkpoint_resumes_from_the_previous_one(reference, tmp_path):
    workdir = tmp_path / "run"
    process = _start(workdir, "-c", KILL_AT_COMMIT, env={"KILL_AT_COMMIT_OF_STEP": "21"})
    assert process.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "run.err").read_text()[-3000:]
    # Step 21 was written in full but never renamed to its final name; 14 is the latest a restart may use.
    assert (workdir / CHECKPOINT_DIR / "21.orbax-checkpoint-tmp").is_dir()
    assert _committed_steps(workdir) == [7, 14]
    assert _logged_lines(workdir) >= 21

    summary = _run(workdir)
    assert summary["start_step"] == 14
    assert not any("tmp" in p.name for p in (workdir / CHECKPOINT_DIR).iterdir())
    _assert_same_as_uninterrupted(_metrics(workdir), _metrics(reference[0]))


def test_workdir_holds_the_resolved_config_and_the_model_spec(reference):
    workdir, _ = reference
    saved = json.loads((workdir / "config.json").read_text())
    expected = config_lib.load("configs/tiny.py", OVERRIDES)
    assert saved == json.loads(expected.to_json(sort_keys=True))
    assert saved["train"]["log_every"] == 1 and saved["checkpoint"]["every_steps"] == 7  # not the defaults 20, 50
    spec = read_spec(workdir)
    assert spec.head == "qa"
    assert (spec.encoder.hidden_size, spec.encoder.num_layers) == (TINY.model.hidden_size, TINY.model.num_layers)


def test_metrics_lines_and_the_tiny_config_learns(reference):
    workdir, summary = reference
    records = _metrics(workdir)
    assert [record["step"] for record in records] == list(range(1, TOTAL_STEPS + 1))
    for record in records:
        assert {"step", "loss", "learning_rate", "examples_per_sec", "tokens_per_sec"} <= record.keys(), record
        assert record["examples_per_sec"] > 0 and record["tokens_per_sec"] == pytest.approx(
            record["examples_per_sec"] * TINY.task.seq_len
        )
    evals = [record for record in records if "eval/exact" in record]
    assert [record["step"] for record in evals] == list(range(50, TOTAL_STEPS + 1, 50))  # train.eval_every=50
    assert records[0]["loss"] > 3.0  # ~ln(32) per position at random init
    assert evals[-1]["eval/exact"] > 90 and summary["eval/exact"] == evals[-1]["eval/exact"]


def _train_in_process(workdir, *overrides):
    config = config_lib.load("configs/tiny.py", ["log.progress=false", "log.tensorboard=false", *overrides])
    return train(config, workdir)


def test_early_stopping_after_an_evaluation_without_improvement(tmp_path):
    # optim.py rejects a learning rate of 0; 1e-30 moves no float32 weight (their ulps are ~1e-9), so the
    # second evaluation scores exactly as the first, which patience=1 does not tolerate.
    summary = _train_in_process(
        tmp_path,
        "optimizer.learning_rate=1e-30",
        "train.eval_every=5",
        "train.early_stopping_metric=eval/exact",
        "train.patience=1",
    )
    records = _metrics(tmp_path)
    evals = [record for record in records if "eval/exact" in record]
    assert [record["step"] for record in evals] == [5, 10] and records[-1]["step"] == 10
    assert evals[0]["eval/exact"] == evals[1]["eval/exact"]
    assert summary["early_stopped"] is True and summary["final_step"] == 10
    # 10 is off the 50-step interval: saved because training stopped (orbax also saves a fresh run's step 1).
    assert _committed_steps(tmp_path)[-1] == 10


def test_best_checkpoint_is_kept_beside_the_latest(tmp_path):
    # A learning rate of 0.2 learns fast, then diverges: the best evaluation is an early one, off the 7-step
    # save interval, and long gone from keep_last=1.
    _train_in_process(
        tmp_path,
        "optimizer.learning_rate=0.2",
        "train.steps=60",
        "train.eval_every=5",
        "checkpoint.every_steps=7",
        "checkpoint.keep_last=1",
        "checkpoint.best_metric=eval/exact",
    )
    scores = {record["step"]: record["eval/exact"] for record in _metrics(tmp_path) if "eval/exact" in record}
    best = max(scores, key=scores.get)
    assert list(scores.values()).count(scores[best]) == 1 and best < 60 and best % 7, f"precondition: {scores}"
    assert _committed_steps(tmp_path) == [best, 60]


def test_fed_size_counts_every_task_of_a_step_at_its_width():
    from qajax.tasks.multitask.task import count_fed
    from qajax.train.task import count_input_ids

    plain = {"input_ids": np.zeros((4, 24), np.int32), "attention_mask": np.zeros((4, 24), np.int32)}
    assert count_input_ids(plain, 4, tokens_per_example=128) == (4, 4 * 24)
    together = {"sst/input_ids": np.zeros((4, 16)), "quora/input_ids": np.zeros((4, 2, 32)), "sst/labels": np.ones(4)}
    assert count_fed(together, 4, tokens_per_example=128) == (8, 4 * (16 + 32))
    assert count_input_ids({"features": np.zeros((4, 3))}, 4, tokens_per_example=10) == (4, 40)
