"""`qajax compile` as a user types it: the tiny config compiled for absent TPUs (and an H100) on this CPU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu absent: pip install '.[tpu]'"
)
needs_cuda = pytest.mark.skipif(
    importlib.util.find_spec("jax_cuda12_plugin") is None, reason="CUDA plugin absent: pip install '.[cuda]' (~5 GB)"
)


def qajax_compile(*arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # the command chooses its own host backend
    result = subprocess.run(
        [sys.executable, "-m", "qajax", "compile", *arguments], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@needs_libtpu
def test_tiny_config_compiles_for_a_v5e_slice_and_reports_every_key():
    result = qajax_compile("configs/tiny.py", "--target", "v5e:2x2", "--json", "--set", "train.batch_size=16")
    report = json.loads(result.stdout)
    for key in ("target", "devices", "per_device_memory_bytes", "hbm_bytes_per_device", "fits", "model_flops_per_step",
                "xla_flops_per_step", "xla_bytes_per_step", "peak_flops", "memory_bandwidth", "roofline_step_seconds",
                "roofline_mfu", "attention_kernel", "collectives", "compile_seconds"):  # fmt: skip
        assert key in report, key
    assert report["target"] == "v5e:2x2" and report["devices"] == 4 and report["fits"]
    memory = report["per_device_memory_bytes"]
    assert memory["total"] == memory["arguments"] + memory["outputs"] + memory["temporaries"] - _aliased(memory)
    assert report["xla_flops_per_step"] > 0 and report["xla_bytes_per_step"] > 0  # TPU compiles carry a cost analysis
    assert 0 < report["roofline_mfu"] <= 1
    assert report["collectives"]["all-reduce"]["count"] >= 1  # gradients summed over the data axis
    assert report["examples_per_device"] == 4


def _aliased(memory: dict) -> int:
    return memory["arguments"] + memory["outputs"] + memory["temporaries"] - memory["total"]


@needs_libtpu
def test_fsdp_shards_the_state_and_shows_its_collectives():
    result = qajax_compile(
        "configs/tiny.py", "--target", "v5p:2x2x1", "--json", "--set", "train.batch_size=16",
        "--set", "parallel.fsdp=2", "--set", "parallel.fsdp_min_size=64",
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["mesh"] == {"data": 2, "fsdp": 2}
    assert report["collectives"]["all-gather"]["count"] > 0  # params gathered for the matmuls
    assert report["collectives"]["reduce-scatter"]["count"] > 0  # gradients scattered back to their shards


def test_an_unknown_target_is_one_line_naming_the_known_ones():
    result = qajax_compile("configs/tiny.py", "--target", "v9z:1x1", check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("qajax")]
    assert len(lines) == 1 and "v5e:2x2" in lines[0] and "h100" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@needs_libtpu
def test_a_config_that_does_not_fit_says_by_how_much():
    result = qajax_compile(
        "configs/tiny.py", "--target", "v5e:2x2", "--set", "train.batch_size=16", "--set", "model.vocab_size=400000000",
        check=False,
    )  # fmt: skip
    assert result.returncode == 3
    assert "does not fit v5e:2x2" in result.stderr and "GiB per device over" in result.stderr


@needs_cuda
@pytest.mark.slow  # ~30-60 s on two cores, and the CUDA wheels are not in CI's install
def test_tiny_config_compiles_for_an_h100_without_one():
    report = json.loads(
        qajax_compile("configs/tiny.py", "--target", "h100", "--json", "--set", "train.batch_size=8").stdout
    )
    assert report["device_kind"].startswith("NVIDIA H100") and report["fits"]
    assert report["xla_bytes_per_step"] is None and report["hlo_bytes_estimate_per_step"] > 0
