"""Training checkpoints: Orbax `CheckpointManager`, asynchronous, the last k plus the best by a metric.

Each step folder holds the whole train state (`state`), the data iterator position (`data`) and the
metrics it was judged by. Orbax writes to a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from qajax.errors import CheckpointError


class Checkpoints:
    def __init__(
        self,
        directory: str | Path,
        *,
        every_steps: int,
        keep_last: int = 2,
        best_metric: str | None = None,
        best_mode: str = "max",
        keep_best: int = 1,
        asynchronous: bool = True,
    ):
        if best_mode not in ("max", "min"):
            raise CheckpointError(f"checkpoint.best_mode={best_mode!r}: expected 'max' or 'min'")
        keep = [policies.LatestN(keep_last)]
        if best_metric:
            keep.append(
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics[best_metric],
                    reverse=best_mode == "min",
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            # On the interval only (orbax would also save a fresh run's first step by default).
            save_decision_policy=policies.FixedIntervalPolicy(every_steps),
            preservation_policy=policies.AnyPreservationPolicy(keep),
            enable_async_checkpointing=asynchronous,
            cleanup_tmp_directories=True,
        )
        self.directory = Path(directory)
        self.every_steps = every_steps
        self.best_metric = best_metric
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step() if self.best_metric else None

    def save(self, step: int, state, data_position: dict, metrics: dict | None = None, *, force=False) -> bool:
        """Saves when `step` is on the interval, or `force`, or `metrics` rank it for the best-k; returns whether
        it did. Returns at once: the write goes on in the background (device arrays are copied first, so the
        state may be donated)."""
        if self.best_metric and metrics is not None:
            if self.best_metric not in metrics:
                raise CheckpointError(f"checkpoint.best_metric={self.best_metric!r} is not among {sorted(metrics)}")
            # Every evaluation competes for best: one off the save interval would otherwise never be kept.
            force = True
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position))
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def restore(self, step: int, abstract_state) -> tuple[object, dict]:
        """(state, data position) of `step`, laid out as `abstract_state` (shapes, dtypes, shardings)."""
        # Checked before Orbax starts: its own shape error comes from background threads, as a long traceback.
        params = abstract_state["params"] if isinstance(abstract_state, dict) else abstract_state.params
        if problem := params_mismatch(self.directory / str(step) / "state", params):
            raise CheckpointError(
                f"{self.directory / str(step)}: the saved model does not fit this run's: {problem}. A config key "
                "of the model changed; resume with the config that wrote it (its config.json), or use a new workdir"
            )
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        try:
            restored = self.manager.restore(step, args=args)
        except ValueError as error:
            if "tree structures do not match" not in str(error):
                raise
            raise CheckpointError(
                f"{self.directory / str(step)}: the saved train state has another layout than this run's (other "
                "techniques or optimizer, or a checkpoint of an older qajax). Resume it with the config and qajax "
                "version that wrote it, or start a new workdir; `qajax eval`/`export-hf` still read its params"
            ) from None
        return restored["state"], restored["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _names(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def params_mismatch(state_dir: Path, abstract_params) -> str | None:
    """How the params saved in `state_dir` disagree with `abstract_params` (paths, shapes), in one line;
    None when they agree or the checkpoint has no readable metadata (Orbax's own checks then apply)."""
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            saved = checkpointer.metadata(state_dir.absolute()).item_metadata
    except (OSError, ValueError):
        return None
    saved = getattr(saved, "tree", saved)  # a TreeMetadata wraps the nested dict
    if not isinstance(saved, dict) or "params" not in saved:
        return None
    saved = {_names(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(saved["params"])}
    wanted = {_names(p): tuple(a.shape) for p, a in jax.tree_util.tree_leaves_with_path(abstract_params)}
    problems = [f"{p}: saved {saved[p]}, this run {wanted[p]}" for p in sorted(saved.keys() & wanted.keys())
                if saved[p] != wanted[p]]  # fmt: skip
    if missing := sorted(wanted.keys() - saved.keys()):
        problems.append(
            f"not saved: {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        )
    if extra := sorted(saved.keys() - wanted.keys()):
        problems.append(
            f"not in this run: {', '.join(extra[:3])}" + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        )
    if not problems:
        return None
    return "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more shapes)" if len(problems) > 3 else "")


def abstract_like(state):
    """Shape/dtype/sharding placeholders of `state` for `Checkpoints.restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
