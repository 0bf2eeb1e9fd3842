"""What a run says about itself on stderr: a start banner, and one plain line per log interval where no
progress bar is drawn (batch jobs: SLURM, nohup, CI), so that a log file shows a run's progress too."""

from __future__ import annotations

import datetime
import time

import jax


def start_banner(
    parallel, *, total_steps: int, batch_size: int, accumulation_steps: int, steps_per_epoch: int, start_step: int
) -> str:
    """e.g. `qajax train: 8 cpu devices, 1 process, mesh data=8 x fsdp=1; 200 steps of 32 examples (6.2 epochs);
    resuming from step 100 of 200`."""
    devices = jax.devices()
    kinds = sorted({d.platform for d in devices})
    processes = jax.process_count()
    if parallel.mesh is not None:
        layout = "mesh " + " x ".join(f"{name}={size}" for name, size in parallel.mesh.shape.items())
    else:
        layout = f"pmap over {jax.local_device_count()} local devices"
    micro = f", {accumulation_steps} micro-batches each" if accumulation_steps > 1 else ""
    epochs = total_steps / max(steps_per_epoch, 1)
    if start_step >= total_steps:
        where = f"already finished at step {total_steps}: nothing to train (raise train.steps to go on)"
    elif start_step:
        where = f"resuming from step {start_step} of {total_steps}"
    else:
        where = "starting at step 0"
    return (
        f"{len(devices)} {'/'.join(kinds)} device{'s' * (len(devices) != 1)}, {processes} "
        f"process{'es' * (processes != 1)}, {layout}; {total_steps} steps of {batch_size} examples{micro} "
        f"({epochs:.3g} epochs of {steps_per_epoch} steps); {where}"
    )


class StepLine:
    """One plain line per logged step: `step 40/200 (20%) loss 1.234 lr 9.00e-04 512.3 ex/s ETA 0:00:31`.
    The ETA extrapolates the wall time since this process started training (compile included at first)."""

    def __init__(self, total_steps: int, start_step: int):
        self.total_steps, self.start_step = total_steps, start_step
        self.started = time.monotonic()

    def __call__(self, step: int, record: dict) -> str:
        parts = [f"step {step}/{self.total_steps} ({100 * step / max(self.total_steps, 1):.0f}%)"]
        if "loss" in record:
            parts.append(f"loss {record['loss']:.4g}")
        if "learning_rate" in record:
            parts.append(f"lr {record['learning_rate']:.3g}")
        if "examples_per_sec" in record:
            parts.append(f"{record['examples_per_sec']:.4g} ex/s")
        done = step - self.start_step
        if 0 < done and step < self.total_steps:
            seconds = (time.monotonic() - self.started) / done * (self.total_steps - step)
            parts.append(f"ETA {datetime.timedelta(seconds=round(seconds))}")
        evals = [f"{k} {v:.4g}" for k, v in record.items() if k.startswith("eval/") and k.count("/") == 1]
        return " ".join(parts) + (f" | {' '.join(evals[:4])}" if evals else "")
