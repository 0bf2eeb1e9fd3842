"""Two processes (gloo over 127.0.0.1, one CPU device each) train exactly as one process with two devices.

The two-process run goes through `scripts/launch_local_multihost.sh`, hence `scripts/launch_multihost.sh` and
`python -m qajax train`, as a user would start it; the reference is `python -m qajax train` alone with the same
global batch over the same number of devices. Both run at once, so the test takes about the time of the slower.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from qajax.train.logs import METRICS_FILE, TENSORBOARD_DIR, read_metrics

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
OVERRIDES = {
    "train.steps": STEPS,
    "optimizer.warmup_steps": 2,  # tiny.py's 10 would not fit into 6 steps
    "train.log_every": 1,
    "train.eval_every": 0,  # evaluation only after the last step
    "log.progress": "false",
    "model.hidden_dropout": 0,
    "model.attention_dropout": 0,
    "checkpoint.every_steps": 100,  # orbax saves the first step, then the final save is forced
}
TIMINGS = ("examples_per_sec", "tokens_per_sec")


def train_arguments(workdir: Path) -> list[str]:
    sets = [argument for key, value in OVERRIDES.items() for argument in ("--set", f"{key}={value}")]
    return ["configs/tiny.py", "--workdir", str(workdir), *sets]


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu", **env}, stdout=out, stderr=subprocess.STDOUT
        )


def finish(process: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    process.wait(timeout=timeout)
    output = log.read_text()
    assert process.returncode == 0, output[-3000:]
    return output


def final_checkpoint(directory: Path) -> tuple[int, dict]:
    """The latest checkpoint as numpy arrays, whatever devices and processes wrote it."""
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
        step = manager.latest_step()
        metadata = ocp.PyTreeCheckpointer().metadata(directory / str(step) / "state").item_metadata.tree
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(restore_args=as_numpy), data=ocp.args.JsonRestore())
        return step, manager.restore(step, args=args)


def without_timings(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in TIMINGS} for record in records]


def test_two_processes_train_bitwise_like_one_process_on_as_many_devices(tmp_path):
    multi, single, logs = tmp_path / "multi", tmp_path / "single", tmp_path / "logs"
    launcher = start(
        ["bash", "scripts/launch_local_multihost.sh", "2", *train_arguments(multi)],
        tmp_path / "launcher.log",
        PYTHON=sys.executable,
        DEVICES_PER_PROCESS="1",
        LOG_DIR=str(logs),
    )
    reference = start(
        [sys.executable, "-m", "qajax", "train", *train_arguments(single)],
        tmp_path / "single.log",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    try:
        reference_output = finish(reference, tmp_path / "single.log")
        launcher_output = finish(launcher, tmp_path / "launcher.log")
    finally:
        for process in (launcher, reference):
            if process.poll() is None:  # SIGTERM: the launcher's trap stops the processes it started
                process.terminate()
                process.wait(timeout=30)

    # Both processes ran the whole loop and exited 0; both wrote into the one shared workdir.
    assert "process 0 exited with status 0" in launcher_output and "process 1 exited with status 0" in launcher_output
    for output in [(logs / "process_0.log").read_text(), (logs / "process_1.log").read_text(), reference_output]:
        assert f'"final_step": {STEPS}' in output and '"compilations": 1' in output, output[-3000:]

    # Process 0 alone logs: one record per step (process 1 appended none), one TensorBoard event file.
    records = read_metrics(multi / METRICS_FILE)
    assert [record["step"] for record in records] == list(range(1, STEPS + 1))
    assert len(list((multi / TENSORBOARD_DIR).iterdir())) == 1

    # Bitwise: the same examples in the same order, and with two devices in both runs every cross-device
    # reduction adds two partial sums, one rounding in any order. With 2 processes x 2 devices against one
    # process with 4, the 4-way all-reduce runs in gloo's order there and in XLA's here: the losses then differ
    # in the last bit, and Adam blows that up where a gradient is mathematically zero (the span head's bias:
    # softmax cross-entropy ignores a shift shared by all positions), 30% of that bias after 6 steps, so the
    # comparison would need tolerances loose enough to hide a real bug.
    expected = read_metrics(single / METRICS_FILE)
    assert without_timings(records) == without_timings(expected)
    assert "eval/exact" in records[-1]

    # The final save, written by both processes into one checkpoint, holds the one-process state bit for bit.
    step, saved = final_checkpoint(multi / "checkpoints")
    expected_step, expected_saved = final_checkpoint(single / "checkpoints")
    assert step == expected_step == STEPS
    assert saved["data"] == expected_saved["data"] == {"epoch": 0, "batch_in_epoch": STEPS}
    assert jax.tree.structure(saved["state"]) == jax.tree.structure(expected_saved["state"])
    for leaf, expected_leaf in zip(
        jax.tree.leaves(saved["state"]), jax.tree.leaves(expected_saved["state"]), strict=True
    ):
        np.testing.assert_array_equal(leaf, expected_leaf)
