"""Packed SQuAD windows (train.packing) against the same windows unpacked, on real tokenized windows: the
span loss and its gradients (fp32, dropout off), the n-best predictions, and a packed run through the
engine: one compile, an exact resume, and examples/s counting windows.

The reference is the unpacked path: each window alone in its padded row, which the encoder tests check
against transformers."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from qajax.models.config import EncoderConfig
from qajax.models.heads import init_params
from qajax.models.spec import ModelSpec
from qajax.pretrained import MINILM_INSTALL, minilm_dir
from qajax.tasks.span import LABELS, MODEL_INPUTS, PACKED_INPUTS, span_task
from qajax.tasks.squad import data, postprocess
from qajax.tasks.squad.features import FeatureConfig, featurize
from qajax.tasks.squad.generate import generate_examples
from qajax.tasks.squad.task import default_config, packed_arrays, unpack_logits

MINILM = minilm_dir()
pytestmark = pytest.mark.skipif(MINILM is None, reason=f"the MiniLM tokenizer is not installed ({MINILM_INSTALL})")
SQUAD2 = Path(__file__).resolve().parents[3] / "../shared/data/squad2/dev-part.json"


def _examples(source: str):
    if source == "generated":
        return generate_examples(10, seed=3)
    if not SQUAD2.is_file():
        pytest.skip(f"{SQUAD2} is absent")
    examples, _ = data.load(SQUAD2)
    long_context = max(examples[:200], key=lambda e: len(e.contexts[0]))  # several windows, one per stride
    return [long_context, *examples[:12]]


def _tiny_task():
    import transformers

    encoder = EncoderConfig(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64,
                            hidden_dropout=0.0, attention_dropout=0.0)  # fmt: skip
    spec = ModelSpec(encoder, "qa")
    params = jax.device_get(init_params(spec.build(), jax.random.key(1)))
    params = jax.tree.map(lambda x: x * 20.0 if x.ndim == 2 and x.shape[-1] == 2 else x, params)  # spread logits
    task = span_task(spec, params, start_weight=2.0, end_weight=1.0, train_arrays={}, eval_arrays=None,
                     evaluate=None, tokens_per_example=384)  # fmt: skip
    return task, transformers.AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def tiny():
    return _tiny_task()


@pytest.mark.parametrize("source", ["generated", "squad2"])
def test_packed_loss_and_gradients_equal_the_unpacked_ones(tiny, source):
    task, tokenizer = tiny
    features = featurize(_examples(source), tokenizer, FeatureConfig(), for_training=True)
    unpacked = {k: features[k] for k in MODEL_INPUTS + LABELS}
    packed = packed_arrays(features, default_config(), 4, for_training=True)
    num_windows = len(unpacked["input_ids"])
    assert packed["window_weight"].sum() == num_windows and len(packed["input_ids"]) < num_windows
    assert (unpacked["start_positions"] > 0).any() and (unpacked["start_positions"] == 0).any()

    def loss(params, batch):
        return task.output_loss(task.forward(params, batch), batch)[0]

    value = jax.jit(jax.value_and_grad(loss))
    expected, expected_grads = value(task.initial_params, unpacked)
    got, grads = value(task.initial_params, packed)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert float(expected) > 0.5  # logits spread enough that a wrong softmax would show
    scale = max(float(np.abs(e).max()) for e in jax.tree.leaves(expected_grads))  # the key bias's are ~0
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        e = expected_grads
        for key in path:
            e = e[key.key]
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("source", ["generated", "squad2"])
def test_packed_predictions_unpack_to_the_unpacked_logits_and_answers(tiny, source):
    task, tokenizer = tiny
    examples = _examples(source)
    features = featurize(examples, tokenizer, FeatureConfig(), for_training=True)
    packed = packed_arrays(features, default_config(), 4, for_training=False)
    predict = jax.jit(task.predict_fn)
    expected = jax.device_get(predict(task.initial_params, {k: features[k] for k in MODEL_INPUTS}))
    rows = jax.device_get(predict(task.initial_params, {k: packed[k] for k in MODEL_INPUTS + PACKED_INPUTS}))
    got = unpack_logits(rows, packed, features["offsets"].shape[:2])
    real = features["attention_mask"] != 0
    for key in ("start_logits", "end_logits"):
        np.testing.assert_allclose(got[key][real], expected[key][real], rtol=1e-5, atol=1e-5)
    (texts, nbest, null_odds), (expected_texts, expected_nbest, expected_null_odds) = (
        postprocess.postprocess(examples, features, o["start_logits"], o["end_logits"]) for o in (got, expected)
    )
    assert texts == expected_texts
    for qid, spans in nbest.items():  # the same spans in the same order, their scores to float rounding
        assert [s["text"] for s in spans] == [s["text"] for s in expected_nbest[qid]]
        np.testing.assert_allclose([s["start_logit"] for s in spans], [s["start_logit"] for s in expected_nbest[qid]],
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(list(null_odds.values()), list(expected_null_odds.values()), rtol=1e-5, atol=1e-5)


def _packed_run_config():
    from qajax.demo import demo_config

    config = demo_config()
    config.model = ml_collections.ConfigDict(dict(
        pretrained="", family="bert", vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4,
        intermediate_size=64, max_position_embeddings=128, hidden_dropout=0.1, attention_dropout=0.1,
        dtype="float32", remat=False, scan_layers=False, attention_implementation="auto", attention_platform="",
    ))  # fmt: skip
    t = config.task
    t.tokenizer, t.generated_passages, t.max_seq_length, t.doc_stride = str(MINILM), 8, 128, 16
    config.train.update(epochs=0.0, steps=6, batch_size=4, log_every=1, eval_every=0, eval_at_start=False,
                        packing=True, windows_per_row=4)  # fmt: skip
    config.checkpoint.update(every_steps=3, keep_last=3, asynchronous=False)
    config.log.update(progress=False, tensorboard=False)
    return config


def test_a_packed_run_compiles_once_evaluates_and_resumes_exactly(tmp_path):
    import shutil

    from qajax import run
    from qajax.train.logs import METRICS_FILE, read_metrics

    config = _packed_run_config()
    config.task.cache_dir = str(tmp_path / "cache")
    prepared = run.prepare(config)
    rows = prepared.task.train_arrays
    assert rows["start_positions"].shape == (len(rows["input_ids"]), 4) and rows["window_weight"].sum() > len(
        rows["input_ids"]
    )
    assert prepared.steps_per_epoch < config.train.steps  # the run crosses an epoch of packed rows
    summary = run.train(config, tmp_path / "run")
    assert summary["compilations"] == 1 and summary["final_step"] == 6
    assert 0 <= summary["eval/f1"] <= 100 and np.isfinite(summary["eval/loss"])  # packed evaluation, unpacked n-best
    first = [r for r in read_metrics(tmp_path / "run" / METRICS_FILE) if "train/loss" in r]
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "6")  # as if killed after the checkpoint of step 3
    resumed = run.train(config, tmp_path / "run")
    assert resumed["start_step"] == 3
    again = [r for r in read_metrics(tmp_path / "run" / METRICS_FILE) if "train/loss" in r]
    assert [r["train/loss"] for r in again if r["step"] > 3] == [r["train/loss"] for r in first if r["step"] > 3]


def test_a_packed_step_logs_the_windows_it_feeds_not_its_rows(tmp_path):
    from qajax import run
    from qajax.data.batches import START
    from qajax.train.loop import Throughput

    config = _packed_run_config()
    config.task.cache_dir = str(tmp_path / "cache")
    prepared = run.prepare(config)
    task, rows = prepared.task, config.train.batch_size
    host = task.train_batches(position=START, **prepared.iterator_args)
    placed = prepared.parallel.prefetch(task.train_batches(position=START, **prepared.iterator_args), 2)
    clock = iter(range(10))  # the log line's interval: one second
    throughput, fed = Throughput(clock=lambda: float(next(clock))), 0
    for _ in range(prepared.steps_per_epoch):  # as the loop counts them: placed on the devices
        windows = int(next(host)["window_weight"].sum())
        examples, tokens = task.fed_size(next(placed), rows)
        assert float(examples) == windows >= rows and tokens == rows * config.task.max_seq_length
        throughput.add(examples, tokens)
        fed += windows
    assert fed > rows * prepared.steps_per_epoch  # a precondition: rows hold several windows
    assert throughput.rates()["examples_per_sec"] == fed


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.packing=true"], "packs SQuAD windows; task.name='synthetic_span'"),
        (["task.name=squad", "train.packing=true", "train.length_bucket=64"], "choose one"),
        (["task.name=squad", "train.packing=true", "techniques.sda.enabled=true"], r"techniques \['sda'\]"),
    ],
)
def test_packing_refuses_what_it_cannot_pack(overrides, message):
    from qajax import config as config_lib
    from qajax.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        config_lib.load("configs/tiny.py", overrides)
