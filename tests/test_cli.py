"""The `qajax` command as a user types it: help, version, verbosity flags, and one clear line (no traceback)
for every bad value tried in issue 22. Each case is a real `python -m qajax` process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def qajax(*args: str, cwd=REPO, env=(), timeout=300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", **dict(env)}
    command = [sys.executable, "-m", "qajax", *args]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"qajax {command}: error: "), result.stderr
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_version_and_help_show_defaults_and_an_example():
    version = qajax("--version")
    assert version.returncode == 0 and version.stdout.startswith("qajax 0."), version
    help_text = qajax("eval", "--help").stdout
    assert "(default: 20)" in help_text and "(default: v2.0)" in help_text  # --n-best, --version
    assert "the run's task setting" in help_text  # --max-seq-length falls back to the run's
    assert "example:\n  qajax eval " in help_text
    for command in ("train", "import-hf", "export-hf", "predict", "squad-eval", "bench", "plot", "demo"):
        assert "example:\n  qajax " + command in qajax(command, "--help").stdout, command


def test_verbosity_flags_work_after_the_subcommand_too(tmp_path):
    for flags in (["-q"], ["-v"], ["-vv"]):
        result = qajax("plot", str(tmp_path / "nothing"), *flags)
        assert "unrecognized arguments" not in result.stderr, result.stderr
        assert_one_line_error(result, "plot", "metrics.jsonl")


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["model.dtype=bf17"], ["model.dtype='bf17'", "did you mean 'bfloat16'"]),
        (["parallel.mode=meshh"], ["parallel.mode='meshh'", "did you mean 'mesh'"]),
        (["parallel.fsdp=0"], ["parallel.fsdp=0"]),
    ],
)
def test_bad_values_fail_at_once_with_one_line(tmp_path, overrides, fragments):
    sets = [arg for o in overrides for arg in ("--set", o)]
    started = time.monotonic()
    result = qajax("train", "configs/tiny.py", "--workdir", str(tmp_path / "run"), *sets)
    assert_one_line_error(result, "train", *fragments)
    assert time.monotonic() - started < 20  # before data and devices (the mesh typo used to take 20 s)
    assert not (tmp_path / "run").exists()


def test_max_seq_length_below_the_default_doc_stride_names_both_keys(tmp_path):
    result = qajax("train", "configs/squad.py", "--workdir", str(tmp_path / "run"), "--set", "task.max_seq_length=128")
    assert_one_line_error(result, "train", "task.doc_stride=128", "task.max_seq_length=128")


def test_a_dtype_alias_reads_as_the_dtype():
    from qajax import config as config_lib

    config = config_lib.load("configs/tiny.py", ["model.dtype=bf16"])
    assert config.model.dtype == "bfloat16"


def test_plot_of_a_missing_or_empty_log_and_unknown_bench_entries(tmp_path):
    assert_one_line_error(qajax("plot", str(tmp_path / "missing")), "plot", "metrics.jsonl")
    (tmp_path / "metrics.jsonl").write_text("")
    assert_one_line_error(qajax("plot", str(tmp_path)), "plot", "is empty")
    assert_one_line_error(qajax("bench", "--entries", "qajax,nope"), "bench", "['nope']", "hf-flax")
    bad = qajax("bench", "--attention-implementation", "flash")
    assert_one_line_error(bad, "bench", "--attention-implementation", "'flash'", "explicit")
    workload = qajax("bench", "--workload", "squad", "--attention-implementation", "xla")
    assert_one_line_error(workload, "bench", "--attention-implementation goes with the step bench")


def test_error_messages_cite_no_commits():
    import re

    hashes = re.compile(r"""["'][^"'\n]*\bcommit [0-9a-f]{7,40}\b""")
    found = [str(p) for p in (REPO / "qajax").rglob("*.py") if hashes.search(p.read_text())]
    assert not found


def test_written_files_and_folders_follow_the_umask(tmp_path):
    from qajax.files import atomic_directory, atomic_write_text

    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_directory(tmp_path / "folder") as folder:
            (folder / "x").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640  # mkstemp alone gives 0600
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o750  # mkdtemp alone gives 0700


def test_import_qajax_is_cheap_and_exports_the_notebook_names():
    code = "import sys, qajax; print('jax' in sys.modules, sorted(qajax.__all__))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split(" ", 1)[0] == "False", result.stdout
    for name in ("load_config", "fit", "load_model", "predictor", "answer", "evaluate"):
        assert name in result.stdout
