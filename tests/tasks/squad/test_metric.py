"""The SQuAD metric against the official scripts' rules (evaluate-v1.1.py, evaluate-v2.0.py).

Every expected number below is worked out by hand from those scripts' rules, never by running qajax code.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from qajax.errors import DataError
from qajax.tasks.squad.metric import (
    evaluate_files,
    evaluate_v1,
    evaluate_v2,
    exact_match,
    f1,
    normalize_answer,
)

DEV_PART = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "squad2" / "dev-part.json"
HAS_ANS_KEYS = ["HasAns_exact", "HasAns_f1", "HasAns_total"]
V2_KEYS = ["exact", "f1", "total", *HAS_ANS_KEYS, "NoAns_exact", "NoAns_f1", "NoAns_total"]
BEST_KEYS = ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]


def squad(*questions: tuple[str, list[str]], version: str = "v2.0", impossible_field: bool = True) -> dict:
    """A SQuAD file with one paragraph holding `(id, [answer texts])` questions; no texts = unanswerable."""
    qas = []
    for qid, texts in questions:
        qa = {"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in texts]}
        if impossible_field:
            qa["is_impossible"] = not texts
        qas.append(qa)
    return {"version": version, "data": [{"title": "T", "paragraphs": [{"context": "c", "qas": qas}]}]}


# --- normalization -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mark", list(string.punctuation))
def test_every_ascii_punctuation_mark_is_removed(mark):
    # Includes the ones that look exotic: ` ~ ^ | \ _ { } @ # $ %.
    assert normalize_answer(f"Rock{mark}Roll") == "rockroll"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ThE EIFFEL Tower", "eiffel tower"),  # case, and "ThE" is an article once lowercased
        ("a dog", "dog"),
        ("An apple", "apple"),
        ("THE cat", "cat"),
        ("a an the", ""),
        ("the theater", "theater"),  # articles inside words stay: theater, another, ant, atheist
        ("another ant, atheist", "another ant atheist"),
        ("the-end", "theend"),  # punctuation goes first, so the hyphen glues "the" into a word
        ("(the) end", "end"),
        ("a.m.", "am"),
        ("thé", "thé"),  # é is a word character, so "the" is not a whole word here
        ("rock’n’roll «1990–95»", "rock’n’roll «1990–95»"),  # non-ASCII punctuation is kept
        ("  New\tYork\n\nCity\u00a0Hall ", "new york city hall"),  # tabs, newlines, no-break space
        ("", ""),
        (" \t ", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# --- exact match and token F1 ---------------------------------------------------------------------------


def test_exact_match_compares_normalized_strings():
    assert exact_match("The Beatles!", "beatles") == 1
    assert exact_match("Beatles", "The Rolling Stones") == 0
    assert type(exact_match("a", "b")) is int


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("cat cat", "cat cat dog", 0.8),  # overlap 2: p = 2/2, r = 2/3, F1 = 2*(2/3)/(5/3) = 0.8 (a set would say 1)
        ("cat cat cat", "cat dog", 0.4),  # overlap min(3,1) = 1: p = 1/3, r = 1/2, F1 = (1/3)/(5/6) = 0.4
        ("the cat cat cat sat", "cat sat on the mat", 0.5),  # [cat cat cat sat] vs [cat sat on mat]: 2/4, 2/4
        ("Denver", "Denver Broncos", 2 / 3),
        ("Paris", "London", 0.0),
        ("", "", 1.0),  # v2.0: both sides empty agree
        ("the", "a", 1.0),  # both normalize to nothing
        ("", "Paris", 0.0),
        ("Paris", "An", 0.0),
    ],
)
def test_f1(prediction, reference, expected):
    assert f1(prediction, reference) == pytest.approx(expected, abs=1e-12)


# --- SQuAD 2.0 -------------------------------------------------------------------------------------------


def test_max_over_references_and_unanswerable_questions():
    dataset = squad(("q1", ["Denver Broncos", "the Broncos", "Broncos"]), ("q2", ["Denver Broncos"]), ("q3", []))
    result = evaluate_v2(dataset, {"q1": "broncos.", "q2": "Denver", "q3": ""})
    # q1: exact 1 (matches "Broncos"); q2: F1 2/3 vs "Denver Broncos"; q3 unanswerable, "" is right.
    assert list(result) == V2_KEYS
    assert result["exact"] == pytest.approx(100 * 2 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    assert (result["HasAns_total"], result["NoAns_total"], result["NoAns_exact"]) == (2, 1, 100.0)
    assert evaluate_v2(dataset, {"q1": "x", "q2": "x", "q3": "anything"})["NoAns_f1"] == 0.0


def test_references_that_normalize_to_nothing():
    # The script groups by the raw answers list (HasAns) but scores against [""] once "the" is dropped.
    result = evaluate_v2(squad(("q1", ["the"])), {"q1": ""})
    assert list(result) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"]
    assert result["HasAns_exact"] == result["HasAns_f1"] == 100.0


def test_only_unanswerable_questions_omit_the_hasans_keys():
    assert list(evaluate_v2(squad(("q1", [])), {"q1": ""})) == ["exact", "f1", "total"] + V2_KEYS[6:]


# Six questions used by the threshold tests; raw scores per question (exact / F1):
#   q1 ["Paris"]   "Paris"               na 0.1   1 / 1
#   q2 ["red fox"] "fox"                 na 0.4   0 / 2/3   (p = 1/1, r = 1/2)
#   q3 []          "blue"                na 0.3   0 / 0
#   q4 []          ""                    na 0.8   1 / 1
#   q5 ["1066"]    "1067"                na 0.6   0 / 0
#   q6 ["red fox"] "the red fox jumped"  na 0.5   0 / 0.8   (p = 2/3, r = 1)
SIX = squad(("q1", ["Paris"]), ("q2", ["red fox"]), ("q3", []), ("q4", []), ("q5", ["1066"]), ("q6", ["red fox"]))
SIX_PREDICTIONS = {"q1": "Paris", "q2": "fox", "q3": "blue", "q4": "", "q5": "1067", "q6": "the red fox jumped"}
SIX_NA_PROBS = {"q1": 0.1, "q2": 0.4, "q3": 0.3, "q4": 0.8, "q5": 0.6, "q6": 0.5}


def test_default_threshold_keeps_every_prediction():
    result = evaluate_v2(SIX, SIX_PREDICTIONS)
    assert list(result) == V2_KEYS  # no na_probs: no best_* keys, as in the script
    assert result["exact"] == pytest.approx(100 * 2 / 6)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 1 + 0 + 0.8) / 6)
    assert result["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 0.8) / 4)
    assert (result["HasAns_exact"], result["NoAns_exact"], result["NoAns_f1"]) == (25.0, 50.0, 50.0)


def test_threshold_replaces_predictions_strictly_above_it():
    # At 0.4, q6 (0.5), q5 (0.6), q4 (0.8) become "": q6 0, q5 0, q4 1; q2 (0.4, not above) keeps 2/3.
    at_04 = evaluate_v2(SIX, SIX_PREDICTIONS, SIX_NA_PROBS, na_prob_thresh=0.4)
    assert at_04["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 1 + 0 + 0) / 6)
    # Just below 0.4, q2 becomes "" too and scores 0.
    assert evaluate_v2(SIX, SIX_PREDICTIONS, SIX_NA_PROBS, 0.39)["f1"] == pytest.approx(100 * 2 / 6)
    # Without na_probs every question has na_prob 0.0, so only a negative threshold replaces anything.
    assert evaluate_v2(SIX, SIX_PREDICTIONS, na_prob_thresh=-0.5)["exact"] == pytest.approx(100 * 2 / 6)
    assert evaluate_v2(SIX, SIX_PREDICTIONS, na_prob_thresh=-0.5)["HasAns_f1"] == 0.0


def test_best_threshold_search():
    # Start from "no answer everywhere": score = #NoAns = 2, threshold 0.0. Keep predictions in na order
    # q1 .1, q3 .3, q2 .4, q6 .5, q5 .6, q4 .8, adding the raw score (HasAns) or -1 for a non-empty NoAns answer:
    #   exact: 2 -> q1 +1 = 3 (best, .1) -> q3 -1 = 2 -> q2 +0 -> q6 +0 -> q5 +0 -> q4 +0 = 2;  best 3/6 = 50%
    #   F1:    2 -> q1 +1 = 3 (best, .1) -> q3 -1 = 2 -> q2 +2/3 = 2.667 -> q6 +0.8 = 3.467 (best, .5) -> 3.467
    result = evaluate_v2(SIX, SIX_PREDICTIONS, SIX_NA_PROBS)
    assert list(result) == V2_KEYS + BEST_KEYS
    assert (result["best_exact"], result["best_exact_thresh"]) == (50.0, 0.1)
    assert result["best_f1"] == pytest.approx(100 * (3 - 1 + 2 / 3 + 0.8) / 6)
    assert result["best_f1_thresh"] == 0.5
    # The F1 found by the sweep is what that threshold really gives.
    assert evaluate_v2(SIX, SIX_PREDICTIONS, SIX_NA_PROBS, 0.5)["f1"] == pytest.approx(result["best_f1"])


def test_best_threshold_ties_follow_na_probs_key_order():
    # a is right, b (unanswerable) is wrong, both na 0.5. The sweep does not group ties:
    #   order a, b: 1 -> a +1 = 2 (best, 0.5) -> b -1 = 1; reports 100% although threshold 0.5 gives 50%.
    #   order b, a: 1 -> b -1 = 0 -> a +1 = 1 (not better); reports 50% at the initial threshold 0.0.
    dataset, predictions = squad(("a", ["Paris"]), ("b", [])), {"a": "Paris", "b": "London"}
    a_first = evaluate_v2(dataset, predictions, {"a": 0.5, "b": 0.5})
    assert (a_first["best_exact"], a_first["best_exact_thresh"], a_first["exact"]) == (100.0, 0.5, 50.0)
    b_first = evaluate_v2(dataset, predictions, {"b": 0.5, "a": 0.5})
    assert (b_first["best_exact"], b_first["best_exact_thresh"]) == (50.0, 0.0)


def test_best_threshold_charges_any_non_empty_string_on_unanswerable():
    # "the" normalizes to "" and is right for n, yet the sweep charges it -1 because the string is not empty:
    #   1 -> n -1 = 0 -> h +1 = 1 (not better than 1); best 50% at 0.0, while threshold 0.2 really gives 100%.
    dataset, predictions = squad(("n", []), ("h", ["Paris"])), {"n": "the", "h": "Paris"}
    result = evaluate_v2(dataset, predictions, {"n": 0.1, "h": 0.2})
    assert (result["exact"], result["best_exact"], result["best_exact_thresh"]) == (100.0, 50.0, 0.0)


def test_zero_na_probs_give_best_keys_like_transformers():
    result = evaluate_v2(SIX, SIX_PREDICTIONS, dict.fromkeys(SIX_PREDICTIONS, 0.0))
    # All ties at 0.0, swept in key order: 2 -> q1 +1 = 3 (best, 0.0) -> q2 +0 -> q3 -1 = 2 -> q4..q6 +0 = 2.
    assert (result["best_exact"], result["best_exact_thresh"]) == (50.0, 0.0)


def test_missing_prediction_is_an_error_in_v2_and_extra_ids_are_ignored():
    with pytest.raises(DataError, match="no prediction for 1 of 6 questions.*'q5'"):
        evaluate_v2(SIX, {k: v for k, v in SIX_PREDICTIONS.items() if k != "q5"})
    with pytest.raises(DataError, match="no na_prob.*'q2'"):
        evaluate_v2(SIX, SIX_PREDICTIONS, {"q1": 0.5})
    extra = evaluate_v2(SIX, {**SIX_PREDICTIONS, "zz": "x"}, {**SIX_NA_PROBS, "zz": 0.0})
    assert extra == evaluate_v2(SIX, SIX_PREDICTIONS, SIX_NA_PROBS)


# --- SQuAD 1.1 -------------------------------------------------------------------------------------------


def test_v1_differs_from_v2():
    dataset = squad(("q1", ["the", "Paris"]), ("q2", ["Paris"]), impossible_field=False, version="1.1")
    # q1: v1.1 keeps "the" as a reference, so "" matches it exactly, but its F1 is 0 (no overlap);
    #     v2.0 drops "the" and scores "" against "Paris": 0 and 0.
    # q2: unanswered; v1.1 counts it as 0 out of 2 and warns, v2.0 refuses.
    with pytest.warns(UserWarning, match="1 questions unanswered.*'q2'"):
        assert evaluate_v1(dataset, {"q1": ""}) == {"exact_match": 50.0, "f1": 0.0}
    assert evaluate_v2(dataset, {"q1": "", "q2": "Paris"})["exact"] == 50.0
    with pytest.raises(DataError, match="'q2'"):
        evaluate_v2(dataset, {"q1": ""})


def test_v1_scores():
    dataset = squad(("q1", ["Denver Broncos", "Broncos"]), ("q2", ["cat cat dog"]), impossible_field=False)
    assert evaluate_v1(dataset, {"q1": "the broncos", "q2": "cat cat"}) == pytest.approx(
        {"exact_match": 50.0, "f1": 100 * (1 + 0.8) / 2}
    )
    with pytest.raises(DataError, match="'q3'.*no reference answers"):
        evaluate_v1(squad(("q3", [])), {"q3": ""})


# --- files ---------------------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    "dataset, expected_keys",
    [
        (squad(("q1", ["Paris"]), version="1.1", impossible_field=False), ["exact_match", "f1"]),
        (squad(("q1", ["Paris"]), version="1.1", impossible_field=True), V2_KEYS[:6]),  # is_impossible wins
        (squad(("q1", ["Paris"]), version="v2.0", impossible_field=False), V2_KEYS[:6]),
    ],
)
def test_files_pick_the_version(tmp_path, dataset, expected_keys):
    data, predictions = write(tmp_path, "dev.json", dataset), write(tmp_path, "preds.json", {"q1": "Paris"})
    assert list(evaluate_files(data, predictions)) == expected_keys


def test_files_with_na_probs(tmp_path):
    paths = [write(tmp_path, name, x) for name, x in [("d", SIX), ("p", SIX_PREDICTIONS), ("n", SIX_NA_PROBS)]]
    assert evaluate_files(*paths, na_prob_thresh=0.4) == evaluate_v2(SIX, SIX_PREDICTIONS, SIX_NA_PROBS, 0.4)


PAIR = squad(("q1", ["Paris"]), ("q2", []))
PAIR_PREDICTIONS = {"q1": "Paris", "q2": ""}


def without_answers_field() -> dict:
    dataset = squad(("q1", ["Paris"]), ("q7", []))
    del dataset["data"][0]["paragraphs"][0]["qas"][1]["answers"]
    return dataset


@pytest.mark.parametrize(
    "data, predictions, na_probs, fragments",
    [
        (without_answers_field(), PAIR_PREDICTIONS, None, ["dev.json", "'q7'", "missing field 'answers'"]),
        (squad(("q1", ["a"]), ("q1", ["b"])), PAIR_PREDICTIONS, None, ["dev.json", "'q1'", "twice"]),
        ('{"data": [', PAIR_PREDICTIONS, None, ["dev.json", "not valid JSON"]),
        ({"version": "v2.0"}, PAIR_PREDICTIONS, None, ["dev.json", "'data'"]),
        (PAIR, {"q1": "Paris", "q2": 3}, None, ["preds.json", "'q2'", "found 3"]),
        (PAIR, ["Paris"], None, ["preds.json", "JSON object"]),
        (PAIR, "{'q1': 'Paris'}", None, ["preds.json", "not valid JSON"]),
        (PAIR, {"q1": "Paris"}, None, ["preds.json", "'q2'", "no prediction"]),
        (PAIR, PAIR_PREDICTIONS, {"q1": 0.1, "q2": "high"}, ["na.json", "'q2'", "expected a number"]),
        (PAIR, PAIR_PREDICTIONS, {"q1": True, "q2": 0.0}, ["na.json", "'q1'"]),
        (PAIR, PAIR_PREDICTIONS, {"q1": float("nan"), "q2": 0.0}, ["na.json", "'q1'", "nan"]),
        (PAIR, PAIR_PREDICTIONS, {"q1": 0.1}, ["na.json", "'q2'", "no na_prob"]),
        (squad(("q1", ["a"]), version="1.1", impossible_field=False), {"q1": "a"}, {"q1": 0.5}, ["dev.json", "v1.1"]),
    ],
)
def test_file_errors_name_the_file_and_the_question(tmp_path, data, predictions, na_probs, fragments):
    contents = {"dev.json": data, "preds.json": predictions, "na.json": na_probs}
    paths = [write(tmp_path, name, content) for name, content in contents.items() if content is not None]
    with pytest.raises(DataError) as error:
        evaluate_files(*paths)
    assert all(fragment in str(error.value) for fragment in fragments), str(error.value)


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(DataError, match="absent.json: cannot read the file"):
        evaluate_files(tmp_path / "absent.json", write(tmp_path, "preds.json", {}))


def test_malformed_layout_names_the_record():
    with pytest.raises(DataError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[1\]: expected a JSON object, found str"):
        evaluate_v2({"data": [{"paragraphs": [{"qas": [{"id": "q1", "answers": []}, "q2"]}]}]}, {})


# --- real data -------------------------------------------------------------------------------------------

needs_dev_part = pytest.mark.skipif(not DEV_PART.exists(), reason=f"real SQuAD 2.0 data not found at {DEV_PART}")


def predictions_from(dataset: dict, answer_of) -> dict:
    return {qa["id"]: answer_of(qa) for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]}


@needs_dev_part
def test_real_data_empty_predictions_score_the_unanswerable_share(tmp_path):
    predictions = predictions_from(json.loads(DEV_PART.read_text()), lambda qa: "")
    result = evaluate_files(DEV_PART, write(tmp_path, "preds.json", predictions))
    assert (result["total"], result["HasAns_total"], result["NoAns_total"]) == (4611, 4611 - 2427, 2427)
    assert result["exact"] == result["f1"] == pytest.approx(100 * 2427 / 4611)
    assert (result["NoAns_exact"], result["HasAns_exact"], result["HasAns_f1"]) == (100.0, 0.0, 0.0)


@needs_dev_part
def test_real_data_first_reference_scores_100(tmp_path):
    first_reference = lambda qa: qa["answers"][0]["text"] if qa["answers"] else ""
    predictions = predictions_from(json.loads(DEV_PART.read_text()), first_reference)
    result = evaluate_files(DEV_PART, write(tmp_path, "preds.json", predictions))
    assert result["exact"] == result["f1"] == result["HasAns_exact"] == result["NoAns_exact"] == 100.0
