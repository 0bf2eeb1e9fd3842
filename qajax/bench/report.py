"""A `qajax bench` report read by a person: the project's targets on the ratios, the markdown table, a chart."""

from __future__ import annotations

import dataclasses
import json

from qajax.bench.entries import FUSED_KERNELS
from qajax.bench.shape import Shape

# The targets the project set itself, on step-time ratios to the plain qajax step: a reference must be this
# many times slower (">="), a technique at most this much slower or faster ("<="). SDV's is its arithmetic
# limit, (3 + K) / 3 forward-equivalents, with 5% slack; freeze-top2's is stated for 2 of 12 layers.
TARGETS = {
    "hf-flax": (">=", 1.25),
    "hf-pytorch": (">=", 1.5),
    "sda": ("<=", 1.40),
    "sdv-k3": ("<=", (3 + 3) / 3 * 1.05),
    "sdv-k5": ("<=", (3 + 5) / 3 * 1.05),
    "smart-t1": ("<=", 3.0),
    "lora-r8": ("<=", 0.80),
    "freeze-top2": ("<=", 0.50),
}


TARGET_DEPTH = {"freeze-top2": 12}  # targets stated for one depth only: not judged at another


def target_cell(name: str, ratio: float, num_layers: int | None = None) -> str:
    """'<= 1.40: met' / '>= 1.25: not met' / '' for an entry without a target (or 'n/a' at another depth)."""
    if name not in TARGETS:
        return ""
    op, bound = TARGETS[name]
    depth = TARGET_DEPTH.get(name)
    if depth is not None and num_layers is not None and num_layers != depth:
        return f"{op} {bound:.2f} at {depth} layers: n/a at {num_layers}"
    met = ratio >= bound if op == ">=" else ratio <= bound
    return f"{op} {bound:.2f}: {'met' if met else 'not met'}"


def attention_cell(row: dict) -> str:
    """The attention an entry ran with, and the compiled program's kernel where the two disagree (HLO cannot
    tell xla from explicit: both are XLA's own fusions; Pallas interpreted on a CPU is no custom call)."""
    ran, kernel = row.get("attention", ""), row.get("attention_kernel")
    if kernel is not None and kernel != ran and (kernel in FUSED_KERNELS or ran in FUSED_KERNELS):
        return f"{ran} (HLO: {kernel})"
    return ran


def markdown(report: dict) -> str:
    config = report["config"]
    shape = {f.name: config.get(f.name) for f in dataclasses.fields(Shape) if f.name != "attention_implementation"}
    asked = config.get("attention_implementation") or "the model's default (auto)"
    lines = [
        f"device: {report['device']}",
        f"shape: {json.dumps(shape)}; peak {config['peak_flops'] / 1e9:.0f} GFLOP/s "
        f"({config['peak_flops_source']}); host allocator: {config.get('host_allocator', '?')}",
        f"qajax attention asked: {asked}",
        "",
        "| name | examples/s | tokens/s | step ms | ratio | target (ratio) | MFU | attention | compile s "
        "| MB per device |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        memory = "" if r["step_memory_bytes"] is None else f"{r['step_memory_bytes'] / 2**20:.0f}"
        lines.append(
            f"| {r['name']} | {r['examples_per_sec']:.1f} | {r['tokens_per_sec']:.0f} | {r['step_ms']:.1f} | "
            f"{r['ratio']:.2f} | {target_cell(r['name'], r['ratio'], shape['num_layers'])} | {mfu} | "
            f"{attention_cell(r)} | {r['compile_seconds']:.1f} | {memory} |"
        )
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    """Examples/s per entry as a bar chart (PNG), the table's numbers beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, ax = plt.subplots(figsize=(1.2 * len(results) + 3, 3.5))
    bars = ax.bar([r["name"] for r in results], [r["examples_per_sec"] for r in results], color="#4477aa")
    for bar, r in zip(bars, results, strict=True):
        ax.annotate(f"{r['ratio']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8)  # fmt: skip
    c = report["config"]
    ax.set_ylabel("train examples / s")
    shape = f"{c['num_layers']}L H{c['hidden_size']} seq {c['seq_len']} batch {c['batch_size']} {c['dtype']}"
    ax.set_title(f"{report['device']}\n{shape} ({c['mode']}); label: step time / qajax", fontsize=8)
    plt.xticks(rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
