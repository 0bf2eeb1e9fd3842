"""Span QA wired end to end: the generated data, and `qajax train / eval / squad-eval / predict / export-hf`
on the real pretrained MiniLM.

`qajax train configs/demo.py` runs once for the module (2 steps on 8 generated passages); the other commands
read its workdir. References nobody here wrote: the context strings themselves, transformers' Flax BERT on
the exported folder, and the windows of each context on its own (for multi-context post-processing).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from qajax import cli
from qajax.pretrained import MINILM_INSTALL, minilm_dir
from qajax.tasks.squad import data, inference, metric
from qajax.tasks.squad.data import Example
from qajax.tasks.squad.generate import generate_examples
from qajax.tasks.squad.task import default_config, read_examples
from qajax.train.logs import METRICS_FILE, read_metrics

REPO = Path(__file__).resolve().parents[3]
MINILM = minilm_dir()
needs_minilm = pytest.mark.skipif(MINILM is None, reason=f"MiniLM checkpoint not installed ({MINILM_INSTALL})")

# configs/demo.py, made tiny: 8 passages (32 questions) each for training and evaluation, 2 steps.
TRAIN_OVERRIDES = (
    "task.generated_passages=8",
    "train.epochs=0",
    "train.steps=2",
    "train.batch_size=4",
    "train.eval_batch_size=8",
    "train.log_every=1",
    "checkpoint.asynchronous=false",
    "log.progress=false",
    "log.tensorboard=false",
    "task.start_weight=2",  # report 000's weighted-loss ablation
    "train.length_bucket=16",  # batches trimmed to 16, 32, 48 or 64 tokens: one compile per width
)
EVAL_SEED = 1  # demo config: seed 0 trains, seed 0 + 1 evaluates
SMALL = ("--max-seq-length", "64", "--doc-stride", "16", "--max-query-length", "16")  # the demo's windows
OFFICIAL_V2_KEYS = {"exact", "f1", "HasAns_total", "NoAns_total", "best_f1", "best_f1_thresh"}
QUESTION = "Who founded Brindlewick?"
CONTEXT = (
    "Brindlewick was founded in 1734. Its founder was Ada Morrow. The river Tesk runs through the town. "
    "Brindlewick is known for its bells."
)


# -- the generated data ---------------------------------------------------------------------------------

# Which fact a question asks for, from its wording, and the words that introduce that fact in a passage.
_QUESTION_FACTS = (
    ("founder", r"^Who (founded|was the founder of) ", "Its founder was "),
    ("founded", r"^(When was .* founded|In what year was .* founded)\?$", " was founded in "),
    ("river", r"^Which river runs through ", "The river "),
    ("product", r"^(What is .* known for|What product made .* famous)\?$", " is known for its "),
    ("population", r"^How many people live in ", "About "),
    ("region", r"^(Where does .* lie|In which region is .*)\?$", "The town lies in "),
    ("mayor", r"^Who is the mayor of ", "The current mayor is "),
)


def _fact(question: str) -> tuple[str, str]:
    matches = [(fact, cue) for fact, pattern, cue in _QUESTION_FACTS if re.search(pattern, question)]
    assert len(matches) == 1, f"{question!r} matches {matches}"
    return matches[0]


def _by_passage(examples) -> dict[str, list[Example]]:
    passages: dict[str, list[Example]] = {}
    for example in examples:
        passages.setdefault(example.contexts[0], []).append(example)
    return passages


def test_generated_answers_point_at_their_text_and_fact():
    examples = generate_examples(150, seed=7)
    assert len(examples) == 600 and len({e.id for e in examples}) == 600
    for e in examples:
        (context,) = e.contexts
        assert e.title in e.question and e.title in context  # the passage names the town it is asked about
        _, cue = _fact(e.question)
        if e.is_impossible:
            assert cue not in context, (e.question, context)  # the fact is left out of the passage
        else:
            (answer,) = e.answers
            assert answer.context_index == 0 and answer.text.strip() == answer.text != ""
            assert context[answer.start : answer.start + len(answer.text)] == answer.text
            before = context[: answer.start]
            assert before.endswith(cue), (e.question, context, answer)  # the answer is the fact asked for
            assert context[answer.start + len(answer.text)] in ". "  # the whole value, not part of it


def test_generated_questions_of_a_passage_ask_different_facts():
    passages = _by_passage(generate_examples(150, seed=8))
    assert len(passages) == 150
    for context, questions in passages.items():
        facts = [_fact(e.question)[0] for e in questions]
        assert len(questions) == 4 and len(set(facts)) == 4, (context, [e.question for e in questions])


def test_generated_unanswerable_share_and_determinism():
    examples = generate_examples(200, seed=0)
    share = np.mean([e.is_impossible for e in examples])
    assert 0.30 <= share <= 0.50, share
    assert generate_examples(20, seed=5) == generate_examples(20, seed=5)
    assert generate_examples(20, seed=5) != generate_examples(20, seed=6)
    held_out = generate_examples(200, seed=1)  # the demo's eval set: seed + 1
    assert not set(_by_passage(examples)) & set(_by_passage(held_out))  # no evaluation passage is trained on


def test_generated_data_round_trips_through_the_squad_reader(tmp_path):
    examples = generate_examples(10, seed=3)
    path = tmp_path / "generated.json"
    path.write_text(json.dumps(data.to_squad_json(examples)))
    loaded, skipped = data.read_squad(path)
    assert len(skipped) == 0 and loaded == examples


# -- multi-context examples ------------------------------------------------------------------------------


def _multi_context_config(contexts_per_question: int):
    t = default_config()
    t.train_file = t.eval_file = "generated"
    t.generated_passages = 6
    t.contexts_per_question = contexts_per_question
    return t


def test_read_examples_gives_each_question_three_contexts():
    train, held_out = read_examples(_multi_context_config(3), seed=0)
    single_train, single_held_out = read_examples(_multi_context_config(1), seed=0)
    for multi, single in ((train, single_train), (held_out, single_held_out)):
        assert [e.id for e in multi] == [e.id for e in single] and len(multi) == 24
        for m, s in zip(multi, single, strict=True):
            assert len(m.contexts) == 3 == len(set(m.contexts)) and s.contexts[0] in m.contexts
            assert (m.question, m.is_impossible) == (s.question, s.is_impossible)
            for answer in m.answers:
                context = m.contexts[answer.context_index]
                assert context == s.contexts[0]
                assert context[answer.start : answer.start + len(answer.text)] == answer.text


# -- the CLI on a trained workdir -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    if MINILM is None:
        pytest.skip(f"MiniLM checkpoint not installed ({MINILM_INSTALL})")
    root = tmp_path_factory.mktemp("squad_task")
    overrides = (*TRAIN_OVERRIDES, f"task.cache_dir={root / 'features'}")
    argv = ["train", str(REPO / "configs" / "demo.py"), "--workdir", str(root / "run")]
    assert cli.main(argv + [arg for o in overrides for arg in ("--set", o)]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    """The demo's evaluation set (seed 1, the first 8 passages) as an official SQuAD 2.0 file."""
    path = tmp_path_factory.mktemp("eval_data") / "generated-dev.json"
    path.write_text(json.dumps(data.to_squad_json(generate_examples(8, EVAL_SEED))))
    return path


@pytest.fixture(scope="module")
def evaluated(workdir, eval_data, tmp_path_factory):
    """`qajax eval` (v2.0) of the trained workdir: (printed scores, folder of the prediction files)."""
    out = tmp_path_factory.mktemp("eval_v2")
    capture = _Stdout()
    with capture:
        assert cli.main(["eval", str(workdir), str(eval_data), "--out", str(out), *SMALL]) == 0
    return json.loads(capture.text), out


class _Stdout:
    """Captures what `cli.main` prints inside a module fixture, where `capsys` cannot go."""

    def __enter__(self):
        import contextlib
        import io

        self._buffer = io.StringIO()
        self._redirect = contextlib.redirect_stdout(self._buffer)
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self._redirect.__exit__(*exc)
        self.text = self._buffer.getvalue()


def _read(path: Path):
    return json.loads(path.read_text())


@needs_minilm
def test_train_logs_eval_at_start_and_official_metrics(workdir):
    records = read_metrics(workdir / METRICS_FILE)
    evals = [r for r in records if "eval/f1" in r]
    assert [r["step"] for r in evals] == [0, 2]  # eval_at_start, then the end of training
    for record in evals:
        assert {f"eval/{k}" for k in OFFICIAL_V2_KEYS} <= set(record)
        assert record["eval/total"] == 32 == record["eval/HasAns_total"] + record["eval/NoAns_total"]
    last = records[-1]
    assert last["step"] == 2 and np.isfinite(last["train/loss"])
    # task.start_weight=2 reaches the loss: (2 CE_start + CE_end) / 3 of the same batch.
    expected = (2 * last["train/start_loss"] + last["train/end_loss"]) / 3
    np.testing.assert_allclose(last["train/loss"], expected, rtol=1e-6)


@needs_minilm
def test_eval_reproduces_the_training_evaluation(workdir, evaluated):
    """`qajax eval` on the demo's eval data scores what the loop's evaluation logged for the same checkpoint."""
    printed, _ = evaluated
    logged = next(r for r in read_metrics(workdir / METRICS_FILE) if r["step"] == 2 and "eval/f1" in r)
    keys = ("exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1", "total", "f1_at_0", "always_answer_HasAns_f1")
    for key in keys:
        np.testing.assert_allclose(printed[key], logged[f"eval/{key}"], atol=1e-6, err_msg=key)


@needs_minilm
def test_eval_writes_prediction_files_that_squad_eval_scores_the_same(evaluated, eval_data, capsys):
    printed, out = evaluated
    assert OFFICIAL_V2_KEYS <= set(printed)
    examples = {e.id: e for e in data.read_squad(eval_data)[0]}
    predictions = _read(out / "predictions.json")
    nbest = _read(out / "nbest_predictions.json")
    null_odds = _read(out / "null_odds.json")
    assert set(predictions) == set(nbest) == set(null_odds) == set(examples)
    for qid, example in examples.items():
        spans = [n for n in nbest[qid] if n["char_start"] >= 0]
        assert spans, qid
        for n in spans:  # every n-best text is its span of the original context
            assert example.contexts[n["context_index"]][n["char_start"] : n["char_end"]] == n["text"] != ""
        # null threshold 0: "" exactly when the null score beats the best span
        assert predictions[qid] == ("" if null_odds[qid] > 0 else spans[0]["text"])

    na_prob = str(out / "null_odds.json")
    assert cli.main(["squad-eval", str(eval_data), str(out / "predictions.json"), "--na-prob", na_prob]) == 0
    official = json.loads(capsys.readouterr().out)
    assert (official["exact"], official["f1"]) == (printed["exact"], printed["f1"])
    assert official["HasAns_total"] + official["NoAns_total"] == len(examples)


@needs_minilm
def test_eval_v1_1_drops_unanswerable_questions(workdir, eval_data, evaluated, tmp_path, capsys):
    out = tmp_path / "v1"
    assert cli.main(["eval", str(workdir), str(eval_data), "--version", "v1.1", "--out", str(out), *SMALL]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"exact_match", "f1"}
    answerable = [e for e in data.read_squad(eval_data)[0] if not e.is_impossible]
    predictions = _read(out / "predictions.json")
    assert set(predictions) == {e.id for e in answerable} and _read(out / "null_odds.json") == {}
    _, v2_out = evaluated
    v2_nbest = _read(v2_out / "nbest_predictions.json")
    for e in answerable:  # no null answer in v1.1: the best span of the v2.0 n-best, always
        assert predictions[e.id] == next(n["text"] for n in v2_nbest[e.id] if n["char_start"] >= 0)
    exact = np.mean([max(metric.exact_match(predictions[e.id], a.text) for a in e.answers) for e in answerable])
    np.testing.assert_allclose(printed["exact_match"], 100 * exact)

    v1_file = tmp_path / "v1.json"  # the official v1.1 layout: squad-eval then uses v1.1 semantics
    v1_file.write_text(json.dumps(data.to_squad_json(answerable, version="v1.1")))
    assert cli.main(["squad-eval", str(v1_file), str(out / "predictions.json")]) == 0
    official = json.loads(capsys.readouterr().out)
    assert official.keys() == printed.keys()
    np.testing.assert_allclose([official[k] for k in printed], list(printed.values()), rtol=1e-12)


@needs_minilm
def test_predict_prints_the_answer_and_its_character_span(workdir, capsys):
    base = ["predict", str(workdir), "--question", QUESTION, *SMALL]
    assert cli.main([*base, "--context", CONTEXT]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"answer", "null_odds", "best_span", "char_start", "char_end"} <= set(result)
    assert CONTEXT[result["char_start"] : result["char_end"]] == result["best_span"] != ""
    assert result["answer"] == ("" if result["null_odds"] > 0 else result["best_span"])

    other = "Tarnholm lies in the river delta. About 12,000 people live there."
    assert cli.main([*base, "--context", other, "--context", CONTEXT]) == 0
    result = json.loads(capsys.readouterr().out)
    contexts = (other, CONTEXT)
    assert contexts[result["context_index"]][result["char_start"] : result["char_end"]] == result["best_span"]


@needs_minilm
def test_export_hf_gives_transformers_the_same_logits(workdir, tmp_path, capsys):
    import transformers

    from qajax.tasks.squad.inference import load_qa_model

    out = tmp_path / "hf"
    assert cli.main(["export-hf", str(workdir), str(out)]) == 0
    assert {"config.json", "flax_model.msgpack", "model.safetensors"} <= {p.name for p in out.iterdir()}
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)  # the tokenizer files travel with the weights
    encoded = tokenizer(
        [QUESTION, "Which river runs through Brindlewick?"], [CONTEXT] * 2, padding=True, return_tensors="np"
    )
    batch = {k: jnp.asarray(v) for k, v in encoded.items()}  # transformers' Flax models take jax arrays only
    expected = transformers.FlaxAutoModelForQuestionAnswering.from_pretrained(out)(**batch)
    model, params, _ = load_qa_model(workdir)
    ours = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    np.testing.assert_allclose(np.asarray(ours.start_logits), np.asarray(expected.start_logits), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.end_logits), np.asarray(expected.end_logits), atol=1e-5)


@needs_minilm
def test_multi_context_postprocessing_matches_each_context_alone(workdir):
    """Windows of all contexts compete: the best span of a 3-context question is the best over its contexts
    predicted one at a time, and its null score the lowest of theirs."""
    from qajax.tasks.squad.features import FeatureConfig
    from qajax.tasks.squad.inference import SpanPredictor, evaluate, load_qa_model

    _, held_out = read_examples(_multi_context_config(3), seed=0)
    predictor = SpanPredictor(*load_qa_model(workdir), feature_config=FeatureConfig(64, 16, 16), batch_size=16)
    predictions, nbest, null_odds = predictor(held_out)
    alone = [Example(f"{e.id}/{i}", e.question, (c,), ()) for e in held_out for i, c in enumerate(e.contexts)]
    _, alone_nbest, _ = predictor(alone)

    def best_span(entries):
        span = next(n for n in entries if n["char_start"] >= 0)
        return span["start_logit"] + span["end_logit"], span

    def null_score(entries):
        null = next(n for n in entries if n["char_start"] < 0)
        return null["start_logit"] + null["end_logit"]

    for e in held_out:
        own = [alone_nbest[f"{e.id}/{i}"] for i in range(3)]
        scores = [best_span(entries)[0] for entries in own]
        score, span = best_span(nbest[e.id])
        np.testing.assert_allclose(score, max(scores), rtol=1e-5, atol=1e-5)
        assert span["context_index"] == int(np.argmax(scores))
        assert e.contexts[span["context_index"]][span["char_start"] : span["char_end"]] == span["text"]
        null = min(null_score(entries) for entries in own)
        np.testing.assert_allclose(null_score(nbest[e.id]), null, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(null_odds[e.id], null - max(scores), rtol=1e-5, atol=1e-4)
        assert predictions[e.id] == ("" if null_odds[e.id] > 0 else span["text"])

    scores = evaluate(predictor, held_out, n_best=20)  # the official metric over multi-context questions
    assert scores["total"] == len(held_out) == 24
    assert scores["HasAns_total"] == sum(not e.is_impossible for e in held_out)


# -- the null threshold chosen on dev articles -----------------------------------------------------------


def _random_outputs(features, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shape = features["input_ids"].shape
    return {"start_logits": 2 * rng.normal(size=shape), "end_logits": 2 * rng.normal(size=shape)}


@needs_minilm
def test_dev_threshold_evaluation_scores_held_out_at_the_best_dev_threshold():
    import transformers

    from qajax.tasks.squad.features import FeatureConfig, featurize
    from qajax.tasks.squad.postprocess import postprocess
    from qajax.tasks.squad.scoring import metric_dataset
    from qajax.tasks.squad.task import DevThresholdEvaluation, SquadEvaluation

    t = default_config()
    t.max_seq_length, t.doc_stride, t.max_query_length = 64, 16, 16
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    held_out, dev = generate_examples(6, seed=3), generate_examples(6, seed=4)
    feats = {name: featurize(ex, tokenizer, FeatureConfig(64, 16, 16), for_training=True)
             for name, ex in (("eval", held_out), ("dev", dev))}  # fmt: skip
    outputs = {"eval": _random_outputs(feats["eval"], 0), "dev": _random_outputs(feats["dev"], 1)}
    evaluation = DevThresholdEvaluation(
        SquadEvaluation(held_out, feats["eval"], t), SquadEvaluation(dev, feats["dev"], t)
    )
    scores = evaluation(outputs, feats)

    def f1_at(examples, name, threshold):  # the official metric on the prediction file at that threshold
        predictions, _, _ = postprocess(examples, feats[name], outputs[name]["start_logits"],
                                        outputs[name]["end_logits"], null_threshold=threshold)  # fmt: skip
        return metric.evaluate_v2(metric_dataset(examples), predictions)["f1"]

    # The chosen threshold is the best of every cut on dev, brute force over the dev null odds.
    _, _, dev_odds = postprocess(dev, feats["dev"], outputs["dev"]["start_logits"], outputs["dev"]["end_logits"])
    cuts = [-np.inf, *sorted(dev_odds.values())]
    best_dev = max(f1_at(dev, "dev", c) for c in cuts)
    chosen = scores.get("eval/null_threshold", -np.inf)
    assert f1_at(dev, "dev", chosen) == pytest.approx(best_dev) == pytest.approx(scores["dev/best_f1"])
    # Held-out scores are those of the prediction file made at the dev threshold; the model's own is at 0.
    assert scores["eval/f1"] == pytest.approx(f1_at(held_out, "eval", chosen))
    assert scores["eval/f1_at_0"] == pytest.approx(f1_at(held_out, "eval", 0.0))
    assert scores["dev/f1"] == pytest.approx(f1_at(dev, "dev", 0.0))
    assert scores["eval/null_everywhere"] == 0.0 and np.isfinite(chosen)

    # A dev set where no cut beats "no answer" everywhere (its null logits far above every span): then the
    # held-out questions all get "", whatever their own logits.
    sure_null = {k: v.copy() for k, v in outputs["dev"].items()}
    for logits in sure_null.values():
        logits[:, 0] = 50.0
    scores = evaluation({**outputs, "dev": sure_null}, feats)
    assert scores["eval/null_everywhere"] == 1.0 and "eval/null_threshold" not in scores
    all_null = {e.id: "" for e in held_out}
    assert scores["eval/f1"] == pytest.approx(metric.evaluate_v2(metric_dataset(held_out), all_null)["f1"])


@needs_minilm
def test_training_with_dev_titles_chooses_the_threshold_on_them(tmp_path, capsys):
    examples = generate_examples(6, seed=5)
    titles = sorted({e.title for e in examples})
    path = tmp_path / "articles.json"
    path.write_text(json.dumps(data.to_squad_json(examples)))
    overrides = (*TRAIN_OVERRIDES, f"task.cache_dir={tmp_path / 'features'}", f"task.train_file={path}",
                 "task.eval_file=", f"task.eval_titles=('{titles[0]}',)", f"task.dev_titles=('{titles[1]}',)",
                 "checkpoint.best_metric=dev/best_f1")  # fmt: skip
    argv = ["train", str(REPO / "configs" / "demo.py"), "--workdir", str(tmp_path / "run")]
    assert cli.main(argv + [arg for o in overrides for arg in ("--set", o)]) == 0
    evals = [r for r in read_metrics(tmp_path / "run" / METRICS_FILE) if "eval/f1" in r]
    assert [r["step"] for r in evals] == [0, 2]
    per_title = {title: sum(e.title == title for e in examples) for title in titles[:2]}
    for record in evals:
        assert record["eval/total"] == per_title[titles[0]] and record["dev/total"] == per_title[titles[1]]
        assert np.isfinite(record["eval/loss"]) and "eval/f1_at_0" in record
        dev_beats_null = record["dev/best_f1"] > 100.0 * record["dev/NoAns_total"] / record["dev/total"]
        assert record["eval/null_everywhere"] == float(not dev_beats_null)
        if dev_beats_null:
            assert record["eval/null_threshold"] == record["dev/best_f1_thresh"]
        else:  # "" for every held-out question
            assert record["eval/f1"] == 100.0 * record["eval/NoAns_total"] / record["eval/total"]

    # `qajax eval` on the workdir applies the threshold dev chose for the checkpoint it loads (the best by
    # dev/best_f1); an explicit --null-threshold wins.
    loaded = max(evals, key=lambda r: r["dev/best_f1"])["step"]
    threshold, step = inference.dev_null_threshold(tmp_path / "run")
    record = next(r for r in evals if r["step"] == loaded)
    assert step == loaded and threshold == record.get("eval/null_threshold", -np.inf)
    capsys.readouterr()
    for extra, used in (([], threshold), (["--null-threshold", "1e9"], 1e9)):
        out = tmp_path / f"eval{len(extra)}"
        assert cli.main(["eval", str(tmp_path / "run"), str(path), "--out", str(out), *extra]) == 0
        said = capsys.readouterr()
        assert (f"chosen on the run's dev articles at step {loaded}" in said.err) == (not extra)
        predictions = json.loads((out / "predictions.json").read_text())
        null_odds = json.loads((out / "null_odds.json").read_text())
        assert all((predictions[q] == "") == (null_odds[q] > used) for q in predictions)
