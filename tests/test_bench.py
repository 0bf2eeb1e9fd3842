"""`qajax bench` on a tiny shape: the report's schema and its arithmetic (not its speed)."""

import json

import jax
import numpy as np
import pytest

from qajax import bench
from qajax.cli import bench_command
from qajax.cli import main as cli_main
from qajax.errors import ConfigError
from qajax.models import attention

TINY = dict(num_layers=1, hidden_size=32, num_heads=4, intermediate_size=64, seq_len=16, batch_size=4)


def test_report_schema_ratios_and_flops(tmp_path):
    shape = bench.Shape(vocab_size=128, **TINY)
    report = bench.run(shape, ["qajax", "qajax-eval", "hf-flax"], steps=2, warmup=1, peak_flops=1e12)
    names = [r["name"] for r in report["results"]]
    assert names == ["qajax", "qajax-eval", "hf-flax"]
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["qajax"]["ratio"] == 1.0
    for r in report["results"]:
        assert r["examples_per_sec"] == pytest.approx(4 / (r["step_ms"] / 1e3))
        assert r["ratio"] == pytest.approx(r["step_ms"] / by_name["qajax"]["step_ms"])
        assert r["compile_seconds"] > 0
        assert r["attention_kernel"] == "xla"  # read from each compiled program: no fused kernel on a CPU
    # Without --attention-implementation the model's default: auto is xla on a CPU, which has no attention
    # dropout, so the train step takes the explicit path and the forward alone (no dropout) XLA's.
    assert report["config"]["attention_implementation"] is None
    assert [r["attention"] for r in report["results"]] == ["explicit", "xla", "hf einsum"]
    # FLOPs by hand: per token and layer 2*(4*32*32 + 2*32*64) + 4*16*32, plus the head 2*32*2; x3 for training.
    per_token = 2 * (4 * 32 * 32 + 2 * 32 * 64) + 4 * 16 * 32 + 2 * 32 * 2
    assert report["config"]["train_flops_per_step"] == 3 * 4 * 16 * per_token
    train = by_name["qajax"]
    assert train["mfu"] == pytest.approx(3 * 4 * 16 * per_token / (train["step_ms"] / 1e3) / 1e12)
    assert by_name["qajax-eval"]["mfu"] == pytest.approx(
        4 * 16 * per_token / (by_name["qajax-eval"]["step_ms"] / 1e3) / 1e12
    )
    # Step memory from XLA's buffer assignment: at least the train state (params and two Adam moments) and
    # the batch; the forward alone holds less than the train step.
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(bench.qajax_step(shape)[1].params))
    assert train["step_memory_bytes"] >= 3 * params
    assert 0 < by_name["qajax-eval"]["step_memory_bytes"] < train["step_memory_bytes"]
    assert by_name["hf-flax"]["step_memory_bytes"] >= 3 * params
    bench.plot(report, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 5000
    assert "| qajax |" in bench.markdown(report)
    assert "| explicit |" in bench.markdown(report) and "attention asked: the model's default" in bench.markdown(report)


def test_cli_json_output(capsys):
    args = ["bench", "--entries", "qajax", "--steps", "1", "--warmup", "0", "--json", "--peak-flops", "1e12"]
    for key, value in TINY.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    assert cli_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"device", "config", "results"} and report["results"][0]["name"] == "qajax"


def test_unknown_entry_is_refused():
    with pytest.raises(ConfigError, match=r"--entries: unknown entries \['nope'\]"):
        bench.run(bench.Shape(**TINY), ["qajax", "nope"], steps=1)


def test_multitask_pcgrad_entry_splits_the_batch_over_three_tasks():
    shape = bench.Shape(vocab_size=128, **{**TINY, "batch_size": 8})
    task, batch = bench.multitask_task(shape)
    sizes = {name: batch[f"{name}/input_ids"].shape[0] for name in ("sst", "quora", "sts")}
    assert sizes == {"sst": 3, "quora": 3, "sts": 2} and task.pcgrad
    report = bench.run(shape, ["qajax", "multitask-pcgrad"], steps=1, warmup=0, peak_flops=1e12, rounds=2)
    assert [r["name"] for r in report["results"]] == ["qajax", "multitask-pcgrad"]
    assert report["results"][1]["ratio"] > 0 and report["config"]["rounds"] == 2
    # MFU is the plain step's model FLOPs over its time: not stated for a step doing other work.
    assert report["results"][0]["mfu"] > 0 and report["results"][1]["mfu"] is None
    assert "| multitask-pcgrad |" in bench.markdown(report)


@pytest.mark.parametrize(
    "name, ratio, cell",
    [
        ("hf-flax", 1.30, ">= 1.25: met"),
        ("hf-pytorch", 1.45, ">= 1.50: not met"),
        ("sdv-k3", 2.10, "<= 2.10: met"),  # (3 + 3) / 3 x 1.05
        ("sdv-k5", 2.81, "<= 2.80: not met"),  # (3 + 5) / 3 x 1.05
        ("lora-r8", 0.71, "<= 0.80: met"),
        ("qajax", 1.0, ""),
    ],
)
def test_targets_are_judged_on_the_ratio(name, ratio, cell):
    assert bench.target_cell(name, ratio) == cell


def test_a_target_stated_for_one_depth_is_not_judged_at_another():
    assert bench.target_cell("freeze-top2", 0.47, num_layers=12) == "<= 0.50: met"
    assert bench.target_cell("freeze-top2", 0.55, num_layers=12) == "<= 0.50: not met"
    assert bench.target_cell("freeze-top2", 0.45, num_layers=6) == "<= 0.50 at 12 layers: n/a at 6"
    assert bench.target_cell("sda", 1.2, num_layers=6) == "<= 1.40: met"


def test_explicit_attention_trains_as_the_default_on_cpu():
    """On a CPU the default's train step falls back from xla to explicit (for attention dropout): the same loss to
    the bit. The forward alone takes xla by default, explicit when asked: the same logits up to rounding."""
    losses, logits = {}, {}
    for implementation in (None, "explicit"):
        shape = bench.Shape(vocab_size=128, attention_implementation=implementation, **TINY)
        step, state, batch = bench.qajax_step(shape)
        losses[implementation] = float(step(state, batch)[1]["train/loss"])
        predict, params, batch = bench.qajax_eval(shape)
        logits[implementation] = np.asarray(predict(params, batch)[1]["train/loss"])
    assert losses[None] == losses["explicit"]
    np.testing.assert_allclose(logits[None], logits["explicit"], rtol=1e-5, atol=1e-5)


def test_the_option_sets_the_attention_of_the_qajax_entries(capsys):
    args = ["bench", "--entries", "qajax,qajax-eval", "--steps", "1", "--warmup", "0", "--json", "--peak-flops", "1e12"]
    args += ["--attention-implementation", "explicit"]
    for key, value in TINY.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    assert cli_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["attention_implementation"] == "explicit"
    assert [(r["attention"], r["attention_kernel"]) for r in report["results"]] == [("explicit", "xla")] * 2


def test_a_kernel_this_host_cannot_run_is_one_line(capsys):
    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU's answer")
    assert cli_main(["bench", "--entries", "qajax", "--attention-implementation", "cudnn", "--peak-flops", "1e12"]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    expected = "qajax bench: error: --attention-implementation cudnn runs on an NVIDIA GPU; this host's backend is cpu"
    assert error.strip().splitlines()[-1] == expected
    with pytest.raises(ConfigError, match="--attention-implementation 'flash': expected one of auto, xla"):
        bench.Shape(attention_implementation="flash")


def test_the_cli_offers_the_models_attention_implementations():
    assert bench_command.ATTENTION_IMPLEMENTATIONS == attention.IMPLEMENTATIONS


@pytest.mark.parametrize(
    "planned, kernel, cell",
    [
        ("explicit", "xla", "explicit"),  # XLA's own fusions either way: HLO cannot tell them apart
        ("cudnn", "cudnn", "cudnn"),
        ("pallas", "xla", "pallas (HLO: xla)"),  # Pallas interpreted on a CPU: no kernel call
        ("xla", "cudnn", "xla (HLO: cudnn)"),
        ("hf sdpa", None, "hf sdpa"),  # eager PyTorch: no compiled program
    ],
)
def test_the_table_shows_the_kernel_where_the_hlo_disagrees(planned, kernel, cell):
    assert bench.report.attention_cell({"attention": planned, "attention_kernel": kernel}) == cell


@pytest.mark.parametrize(
    "planned, kernel, ran",
    [
        ("xla", "pallas", "pallas"),  # auto planned outside the trace, pallas under the step's TPU mesh
        ("pallas", "xla", "pallas"),  # interpreted on a CPU: no kernel call to read
        ("explicit", "xla", "explicit"),
        ("cudnn", "cudnn", "cudnn"),
        ("hf sdpa", None, "hf sdpa"),
    ],
)
def test_what_ran_is_the_compiled_kernel_where_one_shows(planned, kernel, ran):
    assert bench.entries.ran_attention(planned, kernel) == ran
