"""Multitask fine-tuning on sentence tasks (reports 002 and 003): SST-5 sentiment, Quora paraphrase, STS-B
similarity with one shared encoder.

files (data.py) -> token arrays (features.py) -> per-task batches on a schedule (schedule.py) -> shared
encoder + task heads (model.py) -> per-task losses, weighted, optionally PCGrad-projected (losses.py,
pcgrad.py) -> accuracy / Pearson / composite (metrics.py) -> predictions CSV and PNGs (report.py).
task.py wires them into a `Task`.
"""
