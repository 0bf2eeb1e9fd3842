"""`qajax train` as a batch job sees it (stderr a file, not a terminal): the start banner, one plain line per
log interval, Orbax quiet; and resuming: the banner says where, computation-changing keys are refused with
their old and new values, logging keys and a longer run are accepted, a model of another shape is one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = ["train.steps=30", "train.log_every=10", "checkpoint.every_steps=10", "log.tensorboard=false"]


def train(workdir: Path, *overrides: str, flags=()) -> subprocess.CompletedProcess:
    sets = [arg for o in (*BASE, *overrides) for arg in ("--set", o)]
    command = [sys.executable, "-m", "qajax", "train", "configs/tiny.py", "--workdir", str(workdir), *sets, *flags]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # stdin/stderr are pipes, as under SLURM or nohup: tqdm draws no bar there.
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(0o022))  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("resume") / "run"
    first = train(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    return workdir, first.stderr


def test_a_batch_job_logs_a_banner_and_a_line_per_interval(run):
    _, stderr = run
    assert "1 process, mesh data=1 x fsdp=1; 30 steps of 32 examples" in stderr, stderr
    assert "starting at step 0" in stderr
    lines = [line for line in stderr.splitlines() if re.search(r"step \d+/30 ", line)]
    assert [re.search(r"step (\d+)/30", line).group(1) for line in lines] == ["10", "20", "30"], stderr
    assert all("loss " in line and " lr " in line and " ex/s" in line for line in lines), lines
    assert "ETA " in lines[0]
    assert "absl" not in stderr and "orbax" not in stderr.lower(), stderr


def test_files_follow_the_umask(run):
    workdir, _ = run
    assert (workdir / "config.json").stat().st_mode & 0o777 == 0o644
    assert (workdir / "spec.json").stat().st_mode & 0o777 == 0o644


def test_resuming_a_finished_run_says_so(run):
    workdir, _ = run
    again = train(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished at step 30" in again.stderr


def test_a_change_of_the_computation_is_refused_with_old_and_new_values(run):
    workdir, _ = run
    saved = (workdir / "config.json").read_text()
    refused = train(workdir, "optimizer.learning_rate=0.01", "seed=3")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    message = refused.stderr.strip().splitlines()[-1]
    assert "optimizer.learning_rate: 0.001 -> 0.01" in message and "seed: 0 -> 3" in message, message
    assert "--allow-config-change" in message
    assert (workdir / "config.json").read_text() == saved  # not overwritten


def test_a_longer_run_and_other_log_settings_are_accepted_and_logged(tmp_path, run):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(run[0], workdir)
    longer = train(workdir, "train.steps=40", "train.log_every=5")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resuming from step 30 of 40" in longer.stderr
    assert "train.steps: 30 -> 40 (accepted)" in longer.stderr and "train.log_every: 10 -> 5" in longer.stderr
    assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 40


def test_a_model_of_another_shape_is_one_line_even_when_allowed(run):
    workdir, _ = run
    result = train(workdir, "model.hidden_size=64", flags=["--allow-config-change"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "saved (32,), this run (64,)" in message, message


def test_a_run_sized_per_device_resumes_without_a_change(tmp_path):
    """`train.per_device_batch_size` becomes `train.batch_size` before the configs are compared, as the saved
    config.json holds it, so resuming such a run compares equal values."""
    workdir = tmp_path / "run"
    first = train(workdir, "train.per_device_batch_size=8", "train.steps=20")
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((workdir / "config.json").read_text())["train"]["batch_size"] == 8
    longer = train(workdir, "train.per_device_batch_size=8", "train.steps=30")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resuming from step 20 of 30" in longer.stderr
