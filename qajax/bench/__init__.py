"""`qajax bench`: train-step throughput side by side with the references, compile time, memory and MFU.

Every entry trains the same shape on the same batch in the same process; a speed claim is the ratio of
step times measured here, never an absolute number from another run.

    shape.py    the model and batch every entry runs (and the qajax entries' attention implementation)
    entries.py  each entry's (step, state, batch): qajax, qajax-eval, techniques, hf-flax, hf-pytorch
    device.py   peak FLOP/s (MFU's denominator) and memory of the device
    timing.py   `run`: compile, warm up, time in rounds, and the report dict
    report.py   the project's targets on the ratios, the markdown table, the chart

`qajax bench --workload squad` (an epoch's whole path, not one step) stands apart; import it by module:

    workload.py         the entries, the qajax entry's run, the projected epoch and its report
    hf_workload.py      the transformers references (hf-flax, hf-pytorch) end to end
    workload_timing.py  what the entries share: the workload's settings and how a run is measured
"""

from qajax.bench.device import PEAK_FLOPS, device_peak_flops, measure_peak_flops, peak_memory_bytes, step_memory_bytes
from qajax.bench.entries import (
    PLAIN_STEP_ENTRIES,
    TECHNIQUE_ENTRIES,
    hf_flax_step,
    hf_pytorch_step,
    multitask_task,
    planned_attention,
    qajax_eval,
    qajax_step,
    span_qa_task,
)
from qajax.bench.report import TARGET_DEPTH, TARGETS, markdown, plot, target_cell
from qajax.bench.shape import Shape, synthetic_batch
from qajax.bench.timing import Measured, Timed, run, time_entries

__all__ = [
    "PEAK_FLOPS", "PLAIN_STEP_ENTRIES", "TARGETS", "TARGET_DEPTH", "TECHNIQUE_ENTRIES", "Measured", "Shape", "Timed",
    "device_peak_flops", "hf_flax_step", "hf_pytorch_step", "markdown", "measure_peak_flops", "multitask_task",
    "peak_memory_bytes", "planned_attention", "plot", "qajax_eval", "qajax_step", "run", "span_qa_task",
    "step_memory_bytes", "synthetic_batch", "target_cell", "time_entries",
]  # fmt: skip
