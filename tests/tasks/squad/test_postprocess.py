"""postprocess against hand-built windows and a slow loop-by-loop reference of the BERT / HF n-best rules."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import numpy as np
import pytest

from qajax.tasks.squad.postprocess import NO_CANDIDATE_NULL_ODDS, postprocess, write_predictions

LOW = -10.0  # the logit of every token a test does not set


@dataclasses.dataclass(frozen=True)
class Example:  # the attributes of data.Example that postprocess reads
    id: str
    contexts: tuple[str, ...]


def word_offsets(context: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", context)]


QUESTION_TOKENS = 2
FIRST = 1 + QUESTION_TOKENS + 1  # [CLS] question [SEP]: the token index of a window's first context token


def window(spans, length: int) -> np.ndarray:
    """offsets [length, 2] of [CLS], question tokens, [SEP], the context tokens `spans`, [SEP], padding."""
    rows = [(-1, -1)] * FIRST + [tuple(span) for span in spans] + [(-1, -1)]
    assert len(rows) <= length
    return np.array(rows + [(-1, -1)] * (length - len(rows)), np.int32)


def features(windows, length: int = 16) -> dict:
    """windows: (example_index, context_index, spans of the window's context tokens)."""
    return {
        "example_index": np.array([w[0] for w in windows], np.int32),
        "context_index": np.array([w[1] for w in windows], np.int32),
        "offsets": np.stack([window(w[2], length) for w in windows]),
    }


def logits(num_windows: int, length: int = 16, **set_values) -> np.ndarray:
    """A [num_windows, length] array of LOW, with `w{window}_t{token}=value` entries set."""
    out = np.full((num_windows, length), LOW, np.float32)
    for key, value in set_values.items():
        w, t = re.fullmatch(r"w(\d+)_t(\d+)", key).groups()
        out[int(w), int(t)] = value
    return out


CONTEXT = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
WORDS = word_offsets(CONTEXT)


def tok(word: int, first_word: int = 0) -> str:
    """The token index of `word` in a window whose first context word is `first_word`."""
    return str(FIRST + word - first_word)


def two_windows():  # words 0..5 and 4..9 of CONTEXT, overlapping on w4 w5
    return features([(0, 0, WORDS[0:6]), (0, 0, WORDS[4:10])])


@pytest.mark.parametrize("a_score, expected", [(3.0, "w7 w8"), (5.0, "w1 w2")])
def test_best_span_across_windows_of_one_context(a_score, expected):
    start = logits(2, **{f"w0_t{tok(1)}": a_score, f"w1_t{tok(7, 4)}": 4.0})
    end = logits(2, **{f"w0_t{tok(2)}": a_score, f"w1_t{tok(8, 4)}": 4.0})
    predictions, _, _ = postprocess([Example("q", (CONTEXT,))], two_windows(), start, end, version_2=False)
    assert predictions == {"q": expected}


@pytest.mark.parametrize("second, expected, context_index", [(5.0, "epsilon zeta", 1), (1.0, "alpha", 0)])
def test_best_span_across_contexts(second, expected, context_index):
    contexts = ("alpha beta gamma", "delta epsilon zeta")
    feats = features([(0, 0, word_offsets(contexts[0])), (0, 1, word_offsets(contexts[1]))])
    start = logits(2, **{f"w0_t{FIRST}": 3.0, f"w1_t{FIRST + 1}": second})
    end = logits(2, **{f"w0_t{FIRST}": 3.0, f"w1_t{FIRST + 2}": second})
    predictions, nbest, _ = postprocess([Example("q", contexts)], feats, start, end, version_2=False)
    assert predictions == {"q": expected}
    top = nbest["q"][0]
    assert top["context_index"] == context_index
    assert contexts[context_index][top["char_start"] : top["char_end"]] == expected


def test_a_span_in_overlapping_windows_counts_once_with_its_best_score():
    start = logits(2, **{f"w0_t{tok(4)}": 2.0, f"w1_t{tok(4, 4)}": 5.0})
    end = logits(2, **{f"w0_t{tok(4)}": 1.0, f"w1_t{tok(4, 4)}": 4.0})
    _, nbest, _ = postprocess([Example("q", (CONTEXT,))], two_windows(), start, end, version_2=False)
    w4 = [entry for entry in nbest["q"] if (entry["char_start"], entry["char_end"]) == WORDS[4]]
    assert len(w4) == 1
    assert (w4[0]["start_logit"], w4[0]["end_logit"]) == (5.0, 4.0)
    spans = [(e["context_index"], e["char_start"], e["char_end"]) for e in nbest["q"]]
    assert len(spans) == len(set(spans))


@pytest.mark.parametrize("max_answer_length, expected", [(3, "w6"), (4, "w1 w2 w3 w4")])
def test_max_answer_length_in_tokens(max_answer_length, expected):
    feats = features([(0, 0, WORDS)])
    start = logits(1, **{f"w0_t{tok(1)}": 5.0, f"w0_t{tok(6)}": 2.0})
    end = logits(1, **{f"w0_t{tok(4)}": 5.0, f"w0_t{tok(6)}": 2.0})
    predictions, nbest, _ = postprocess(
        [Example("q", (CONTEXT,))], feats, start, end, max_answer_length=max_answer_length, version_2=False
    )
    assert predictions == {"q": expected}
    assert all(len(entry["text"].split()) <= max_answer_length for entry in nbest["q"])


def test_spans_touching_question_special_or_padding_tokens_are_rejected():
    feats = features([(0, 0, WORDS[:5])])  # tokens 4..8 context, 9 [SEP], 10..15 padding
    start = logits(1, w0_t1=9.0, w0_t9=9.0, **{f"w0_t{tok(4)}": 8.0, f"w0_t{tok(2)}": 1.0})
    end = logits(1, w0_t2=9.0, w0_t12=9.0, w0_t13=9.0, **{f"w0_t{tok(3)}": 1.0})
    predictions, nbest, _ = postprocess([Example("q", (CONTEXT,))], feats, start, end, n_best=4, version_2=False)
    assert predictions == {"q": "w2 w3"}  # not [question..], nor w4 running into [SEP] / padding
    assert [entry["text"] for entry in nbest["q"]] == ["w2 w3"]


def single_window(null_start, null_end, span_start, span_end):
    feats = features([(0, 0, WORDS)])
    start = logits(1, w0_t0=null_start, **{f"w0_t{tok(3)}": span_start})
    end = logits(1, w0_t0=null_end, **{f"w0_t{tok(4)}": span_end})
    return feats, start, end


@pytest.mark.parametrize(
    "null, span, threshold, expected",
    [
        ((2.0, 1.0), (3.0, 2.0), 0.0, "w3 w4"),  # null_odds -2 <= 0
        ((2.0, 1.0), (3.0, 2.0), -2.5, ""),  # -2 > -2.5
        ((4.0, 3.0), (3.0, 2.0), 0.0, ""),  # +2 > 0
        ((4.0, 3.0), (3.0, 2.0), 2.0, "w3 w4"),  # +2 is not > 2
    ],
)
def test_null_odds_and_threshold(null, span, threshold, expected):
    feats, start, end = single_window(*null, *span)
    predictions, nbest, null_odds = postprocess([Example("q", (CONTEXT,))], feats, start, end, null_threshold=threshold)
    assert null_odds["q"] == pytest.approx(sum(null) - sum(span))
    assert predictions == {"q": expected}
    assert sum(entry["text"] == "" for entry in nbest["q"]) == 1


def test_null_score_is_the_minimum_over_windows():
    start = logits(2, w0_t0=3.0, w1_t0=0.5, **{f"w0_t{tok(2)}": 2.0})
    end = logits(2, w0_t0=2.0, w1_t0=0.5, **{f"w0_t{tok(2)}": 2.0})
    predictions, nbest, null_odds = postprocess([Example("q", (CONTEXT,))], two_windows(), start, end)
    assert null_odds["q"] == pytest.approx(1.0 - 4.0)  # the first window's null (5.0) would give +1: ""
    assert predictions == {"q": "w2"}
    (null,) = [entry for entry in nbest["q"] if entry["text"] == ""]
    assert (null["start_logit"], null["end_logit"], null["char_start"]) == (0.5, 0.5, -1)


def test_version_1_never_predicts_empty():
    feats, start, end = single_window(50.0, 50.0, -5.0, -5.0)
    predictions, nbest, null_odds = postprocess([Example("q", (CONTEXT,))], feats, start, end, version_2=False)
    assert predictions == {"q": "w3 w4"}
    assert null_odds == {}
    assert all(entry["text"] for entry in nbest["q"])


@pytest.mark.parametrize("version_2", [True, False])
def test_no_valid_span_predicts_empty_with_finite_odds(version_2):
    feats = features([(0, 0, WORDS)])
    start, end = logits(1, w0_t1=5.0), logits(1, w0_t2=5.0)  # the top-1 start and end are question tokens
    predictions, nbest, null_odds = postprocess(
        [Example("q", (CONTEXT,))], feats, start, end, n_best=1, version_2=version_2
    )
    assert predictions == {"q": ""}
    assert null_odds == ({"q": NO_CANDIDATE_NULL_ODDS} if version_2 else {})
    assert [entry["text"] for entry in nbest["q"]] == ([""] if version_2 else [])


def random_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    contexts = tuple(" ".join(f"t{rng.integers(100)}" for _ in range(8)) for _ in range(2))
    feats = features([(0, 0, word_offsets(contexts[0])), (0, 1, word_offsets(contexts[1]))])
    return [Example("q", contexts)], feats, rng.normal(size=(2, 16)), rng.normal(size=(2, 16))


def test_nbest_sorted_probabilities_sum_to_one_and_texts_are_context_substrings():
    examples, feats, start, end = random_case()
    _, nbest, _ = postprocess(examples, feats, start, end, n_best=6)
    entries = nbest["q"]
    assert len(entries) == 7  # 6 spans and the null
    scores = [e["start_logit"] + e["end_logit"] for e in entries]
    assert scores == sorted(scores, reverse=True)
    assert math.fsum(e["probability"] for e in entries) == pytest.approx(1.0, abs=1e-12)
    expected = np.exp(np.array(scores) - max(scores)) / np.exp(np.array(scores) - max(scores)).sum()
    np.testing.assert_allclose([e["probability"] for e in entries], expected, rtol=1e-12)
    for e in entries:
        if e["text"]:
            assert e["text"] == examples[0].contexts[e["context_index"]][e["char_start"] : e["char_end"]]
        else:
            assert (e["char_start"], e["char_end"]) == (-1, -1)


def test_write_predictions_valid_finite_json_and_no_leftovers(tmp_path):
    examples, feats, start, end = random_case()
    outputs = postprocess(examples + [Example("none", ("x",))], feats, start, end)
    out = tmp_path / "out"
    write_predictions(out, *outputs)
    assert sorted(p.name for p in out.iterdir()) == ["nbest_predictions.json", "null_odds.json", "predictions.json"]

    def no_constants(name):
        raise AssertionError(f"{name} in JSON")

    loaded = [json.loads((out / name).read_text(), parse_constant=no_constants) for name in sorted(os.listdir(out))]
    assert loaded == [json.loads(json.dumps(o)) for o in (outputs[1], outputs[2], outputs[0])]
    assert loaded[1]["none"] == NO_CANDIDATE_NULL_ODDS  # an example without windows: "no answer", finite

    with pytest.raises(ValueError, match="'q'"):
        write_predictions(tmp_path / "bad", outputs[0], outputs[1], {"q": float("inf")})
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_shape_mismatch_and_non_finite_logits_raise():
    examples, feats, start, end = random_case()
    with pytest.raises(ValueError, match=r"\(2, 15\).*\(2, 16\)"):
        postprocess(examples, feats, start[:, :15], end)
    start[1, 3] = np.nan
    with pytest.raises(ValueError, match="window 1, token 3"):
        postprocess(examples, feats, start, end)


def reference(examples, feats, start, end, n_best, max_answer_length, threshold, version_2):
    """One window, one start, one end at a time, as BERT's `write_predictions` loops, with our dedup."""
    spans, nulls, duplicates = {}, {}, 0
    for f in range(len(start)):
        e, c, offsets = int(feats["example_index"][f]), int(feats["context_index"][f]), feats["offsets"][f]
        null = float(start[f][0]) + float(end[f][0])
        if e not in nulls or null < nulls[e]["score"]:
            nulls[e] = {"score": null, "text": "", "span": (c, -1, -1)}
        top_starts = sorted(range(len(start[f])), key=lambda t: -start[f][t])[:n_best]
        top_ends = sorted(range(len(end[f])), key=lambda t: -end[f][t])[:n_best]
        for i in top_starts:
            for j in top_ends:
                if j < i or j - i + 1 > max_answer_length or min(offsets[i]) < 0 or min(offsets[j]) < 0:
                    continue
                key = (e, c, int(offsets[i][0]), int(offsets[j][1]))
                if key[3] <= key[2]:
                    continue
                score = float(start[f][i]) + float(end[f][j])
                duplicates += key in spans
                if key not in spans or score > spans[key]["score"]:
                    text = examples[e].contexts[c][key[2] : key[3]]
                    spans[key] = {"score": score, "text": text, "span": key[1:]}
    predictions, nbest, null_odds = {}, {}, {}
    for e, example in enumerate(examples):
        mine = sorted((v for k, v in spans.items() if k[0] == e), key=lambda v: -v["score"])[:n_best]
        if version_2:
            null_odds[example.id] = nulls[e]["score"] - mine[0]["score"] if mine else NO_CANDIDATE_NULL_ODDS
        answered = mine and not (version_2 and null_odds[example.id] > threshold)
        predictions[example.id] = mine[0]["text"] if answered else ""
        entries = sorted(mine + [nulls[e]] * version_2, key=lambda v: -v["score"])
        total = sum(math.exp(v["score"]) for v in entries)
        nbest[example.id] = [(v["text"], v["span"], math.exp(v["score"]) / total) for v in entries]
    return predictions, nbest, null_odds, duplicates


def subword_offsets(context: str) -> list[tuple[int, int]]:
    """Words cut into pieces of at most 3 characters, like wordpieces."""
    return [(s, min(s + 3, end)) for start, end in word_offsets(context) for s in range(start, end, 3)]


@pytest.mark.parametrize("n_best, version_2", [(1, True), (5, True), (20, True), (5, False)])
def test_random_windows_match_the_reference(n_best, version_2):
    rng = np.random.default_rng(n_best)
    length, stride, examples, windows, signal = 40, 20, [], [], []
    while len(windows) < 300:
        e = len(examples)
        words = ("".join(rng.choice(list("abcdefgh"), rng.integers(1, 8))) for _ in range(200))
        contexts = tuple(" ".join(next(words) for _ in range(rng.integers(5, 40))) for _ in range(3))
        examples.append(Example(f"q{e}", contexts[: rng.integers(1, 4)]))
        for c, context in enumerate(examples[-1].contexts):
            tokens = subword_offsets(context)
            preference = rng.normal(size=len(context) + 1)  # shared by overlapping windows: duplicates occur
            first = 0
            while first == 0 or first + length - FIRST - 1 - stride < len(tokens):  # windows until the end
                windows.append((e, c, tokens[first : first + length - FIRST - 1]))
                signal.append([preference[s] for s, _ in windows[-1][2]])
                first += stride
    feats = features(windows, length)
    start, end = rng.normal(size=(2, len(windows), length)).astype(np.float32)
    for f, values in enumerate(signal):  # context tokens: 2 * shared preference + noise; the rest pure noise
        start[f, FIRST : FIRST + len(values)] += 2 * np.array(values, np.float32)
        end[f, FIRST : FIRST + len(values)] += 2 * np.array(values, np.float32)
    start[:, 0] += 3 * rng.normal(size=len(windows)) + 3  # [CLS]: some questions answered, some not
    got = postprocess(examples, feats, start, end, n_best=n_best, max_answer_length=8, version_2=version_2)
    want = reference(examples, feats, start, end, n_best, 8, 0.0, version_2)
    assert got[0] == want[0]
    assert got[2] == pytest.approx(want[2], rel=1e-12, abs=1e-12)
    for qid, entries in got[1].items():
        spans = [(e["context_index"], e["char_start"], e["char_end"]) for e in entries]
        assert [(e["text"], span) for e, span in zip(entries, spans, strict=True)] == [w[:2] for w in want[1][qid]]
        np.testing.assert_allclose([e["probability"] for e in entries], [w[2] for w in want[1][qid]], rtol=1e-9)
    assert want[3] > 0 or n_best == 1  # overlapping windows proposed the same span: dedup was exercised
    if version_2:
        assert 0 < sum(text == "" for text in got[0].values()) < len(examples)  # both sides of the threshold


def test_evaluate_scores_answers_kept_by_a_null_threshold_above_one():
    """The official default cut (na_prob > 1.0 means "no answer") must not undo a higher null_threshold."""
    from qajax.tasks.squad.data import Answer, Example
    from qajax.tasks.squad.inference import evaluate

    examples = [
        Example("a", "Who?", ("Rollo led them.",), (Answer("Rollo", 0),)),
        Example("b", "When?", ("Rollo led them.",), ()),
    ]
    odds = {"a": 3.0, "b": 6.0}  # null score - best span score, in logits: kept when <= the threshold

    def predictor(examples, *, null_threshold, **options):
        predictions = {e.id: ("" if odds[e.id] > null_threshold else "Rollo") for e in examples}
        nbest = {e.id: [{"text": "Rollo", "char_start": 0}, {"text": "", "char_start": -1}] for e in examples}
        return predictions, nbest, odds

    kept = evaluate(predictor, examples, null_threshold=4.0)
    assert (kept["HasAns_exact"], kept["NoAns_exact"], kept["exact"]) == (100.0, 100.0, 100.0)
    everything = evaluate(predictor, examples, null_threshold=float("inf"))
    assert (everything["HasAns_exact"], everything["NoAns_exact"]) == (100.0, 0.0)
    assert everything["best_exact"] == 100.0 and everything["best_exact_thresh"] == 3.0


def test_padding_does_not_crowd_real_tokens_out_of_the_top_starts_and_ends():
    """A model trained on length-trimmed batches never scored padding: its logits there may top every real
    token. With the attention mask given, the n-best still finds the span (BERT's rule would find none)."""
    feats = features([(0, 0, WORDS[:5])])  # tokens 4..8 context, 9 [SEP], 10..15 padding
    padding = {f"w0_t{t}": 50.0 for t in range(10, 16)}
    start = logits(1, **padding, **{f"w0_t{tok(1)}": 2.0})
    end = logits(1, **padding, **{f"w0_t{tok(2)}": 2.0})
    example = [Example("q", (CONTEXT,))]
    blind, _, _ = postprocess(example, feats, start, end, n_best=4, version_2=False)
    assert blind == {"q": ""}  # the top 4 starts and ends are all padding
    feats["attention_mask"] = (np.arange(16) < 10).astype(np.int32)[None]
    predictions, nbest, _ = postprocess(example, feats, start, end, n_best=4, version_2=False)
    assert predictions == {"q": "w1 w2"} and nbest["q"][0]["start_logit"] == 2.0


def test_evaluation_sweeps_thresholds_above_the_cut_too():
    """A model whose null wins everywhere at threshold 0 still has its best answers scored: the evaluation
    keeps exact/f1 of the cut predictions and finds the positive threshold that answers the right ones."""
    import ml_collections

    from qajax.tasks.squad.data import Answer
    from qajax.tasks.squad.data import Example as SquadExample
    from qajax.tasks.squad.task import SquadEvaluation

    examples = [  # q0, q1 answerable (w1 and w7), q2 unanswerable
        SquadExample("q0", "?", (CONTEXT,), (Answer("w1", CONTEXT.index("w1")),)),
        SquadExample("q1", "?", (CONTEXT,), (Answer("w7", CONTEXT.index("w7")),)),
        SquadExample("q2", "?", (CONTEXT,), ()),
    ]
    feats = features([(i, 0, WORDS[:10]) for i in range(3)])
    feats["attention_mask"] = np.ones((3, 16), np.int32)
    # Null scores 4 everywhere; best spans: q0 "w1" (3.0, null odds 1), q1 "w2" (wrong, odds 2), q2 "w3" (odds 3).
    start = logits(
        3, w0_t0=2.0, w1_t0=2.0, w2_t0=2.0, **{f"w0_t{tok(1)}": 1.5, f"w1_t{tok(2)}": 1.0, f"w2_t{tok(3)}": 0.5}
    )
    end = logits(
        3, w0_t0=2.0, w1_t0=2.0, w2_t0=2.0, **{f"w0_t{tok(1)}": 1.5, f"w1_t{tok(2)}": 1.0, f"w2_t{tok(3)}": 0.5}
    )
    t = ml_collections.ConfigDict(dict(version="v2.0", n_best=20, max_answer_length=30, null_threshold=0.0))
    scores = SquadEvaluation(examples, feats, t)({"start_logits": start, "end_logits": end}, None)
    assert scores["eval/f1"] == pytest.approx(100 / 3)  # all "": only q2 right
    assert scores["eval/best_f1"] == pytest.approx(200 / 3)  # answer q0 alone (odds 1 <= thresh < 2)
    assert scores["eval/best_f1_thresh"] == pytest.approx(1.0)
