"""`qajax bench --workload squad` on a tiny random BERT and generated data: every entry runs the whole path,
and the report's arithmetic and counts hold (not its speed)."""

from __future__ import annotations

import json

import pytest

from qajax.bench import workload as bench_workload
from qajax.cli import main as cli_main
from qajax.errors import ConfigError
from qajax.pretrained import MINILM_INSTALL, minilm_dir
from qajax.tasks.squad import data
from qajax.tasks.squad.generate import generate_examples

MINILM = minilm_dir()


@pytest.fixture(scope="module")
def tiny_workload(tmp_path_factory):
    if MINILM is None:
        pytest.skip(f"the MiniLM tokenizer is not installed ({MINILM_INSTALL})")
    import transformers

    folder = tmp_path_factory.mktemp("workload")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    transformers.BertForQuestionAnswering(config).save_pretrained(folder / "model")
    transformers.AutoTokenizer.from_pretrained(MINILM).save_pretrained(folder / "model")
    path = folder / "generated.json"
    path.write_text(json.dumps(data.to_squad_json(generate_examples(24, seed=2))))
    return bench_workload.Workload(data=str(path), model_dir=str(folder / "model"), epochs_fraction=0.5,
                                   batch_size=8, max_seq_length=128, doc_stride=32, max_query_length=32,
                                   log_every=2)  # fmt: skip


def _check(report: dict, names: tuple[str, ...]) -> dict:
    by_name = {r["name"]: r for r in report["results"]}
    assert list(by_name) == list(names)
    assert len({r["measured"]["epoch_windows"] for r in report["results"]}) == 1  # the same windows, packed or not
    assert by_name.get("qajax", report["results"][0])["epoch_ratio"] == 1.0  # epochs relative to qajax's
    for r in report["results"]:
        m = r["measured"]
        assert m["steps"] == -(-m["steps_per_epoch"] // 2)  # half an epoch
        assert 0 <= r["host_share"] <= 1 and m["step_s"] + m["compile_s"] <= m["run_s"]
        assert r["epoch_seconds"] == pytest.approx(
            m["setup_s"]
            + m["compile_s"]
            + (m["run_s"] - m["compile_s"])
            * (m["steps_per_epoch"] - m["compilations"])
            / (m["steps"] - m["compilations"])
        )
        assert r["windows_per_sec"] == pytest.approx(m["epoch_windows"] / r["epoch_seconds"])
        if r["name"] == "qajax-packed":
            assert m["windows"] > 4 * m["steps"]  # 4 rows a step, more than one window a row
        else:
            assert m["windows"] == 8 * m["steps"]  # counted when stepped, not when prefetched
        assert 0 < m["tokens"] < m["steps"] * 8 * 128  # real tokens only
        expected = {"hf-pytorch": 0, "qajax-bucketed": None}.get(r["name"], 1)  # static shapes compile once
        assert r["compilations"] == expected if expected is not None else 1 <= r["compilations"] <= 2
    return by_name


def test_packed_and_pytorch_entries_run_their_paths_and_the_report_adds_up(tiny_workload):
    names = ("qajax-packed", "hf-pytorch")
    _check(bench_workload.run(tiny_workload, names), names)


@pytest.mark.slow  # a minute: six paths, five compiles
def test_every_entry_runs_its_path(tiny_workload):
    report = bench_workload.run(tiny_workload, bench_workload.ENTRIES)
    _check(report, bench_workload.ENTRIES)
    table = bench_workload.markdown(report)
    assert "| qajax-packed |" in table and "qajax / hf-flax windows/s:" in table


def test_absent_data_is_a_clear_skip(capsys, tmp_path):
    missing = str(tmp_path / "nope.json")
    assert cli_main(["bench", "--workload", "squad", "--data", missing]) == 0
    assert f"skipped, {missing} is absent" in capsys.readouterr().err


def test_unknown_entry_is_refused(tiny_workload):
    with pytest.raises(ConfigError, match="unknown workload entries"):
        bench_workload.run(tiny_workload, ("qajax", "nope"))
