"""Evaluation during training: the task's `predict_fn` over its eval set(s) on every device, scored by the
task's `evaluate`; with labelled eval data also the eval loss."""

from __future__ import annotations

import jax
import numpy as np

from qajax.data.batches import eval_batches
from qajax.train.parallel import Parallel
from qajax.train.task import Task


def make_eval_predict(task: Task, with_loss: bool):
    """predict(params, batch) -> (per-example outputs, {loss_sum, weight} or {}): one eval batch's work."""

    def predict(params, batch):
        outputs = task.predict_fn(params, batch)
        if not with_loss:
            return outputs, {}
        loss, aux = task.output_loss(task.forward(params, batch), batch)  # same forward: XLA shares it
        return outputs, {"loss_sum": loss * aux["weight"], "weight": aux["weight"]}

    return predict


class Evaluator:
    """Runs `task.predict_fn` over the eval set on every device (last batch padded) and scores it."""

    def __init__(self, task: Task, parallel: Parallel, batch_size: int, param_shardings):
        self.task, self.parallel, self.batch_size = task, parallel, batch_size
        self.with_loss = task.has_labelled_eval
        self.predict = parallel.compile_predict(make_eval_predict(task, self.with_loss), param_shardings)

    def __call__(self, params) -> dict[str, float]:
        if self.task.eval_sets:  # several sets (one per task of a multitask run, or eval + dev), scored together
            predicted = {name: self._predict_all(params, arrays) for name, arrays in self.task.eval_sets.items()}
            metrics = self.task.evaluate({name: p[0] for name, p in predicted.items()}, self.task.eval_sets)
            if self.with_loss and "eval" in predicted:  # eval_arrays among the sets as "eval"
                metrics["eval/loss"] = predicted["eval"][1] / max(predicted["eval"][2], 1.0)
            return metrics
        joined, loss_sum, weight = self._predict_all(params, self.task.eval_arrays)
        metrics = self.task.evaluate(joined, self.task.eval_arrays)
        if self.with_loss:
            metrics["eval/loss"] = loss_sum / max(weight, 1.0)
        return metrics

    def _predict_all(self, params, arrays) -> tuple[dict[str, np.ndarray], float, float]:
        """(outputs of every example in order, summed eval loss, its weight)."""
        outputs = []
        batches = eval_batches(
            arrays,
            batch_size=self.batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        loss_sum = weight = 0.0
        for batch in batches:
            predicted, loss_terms = self.predict(params, self.parallel.place_batch(batch, accumulation_steps=1))
            outputs.append(self.parallel.gather_outputs(predicted))
            if loss_terms:
                loss_terms = self.parallel.gather_outputs(loss_terms)  # pmap: one value per device
                loss_sum += float(np.sum(loss_terms["loss_sum"]))
                weight += float(np.sum(loss_terms["weight"]))
        num_examples = len(next(iter(arrays.values())))
        joined = {k: np.concatenate([o[k] for o in outputs])[:num_examples] for k in outputs[0]}
        return joined, loss_sum, weight
