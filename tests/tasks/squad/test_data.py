"""SQuAD readers: every validation rule, skipping, unicode offsets, formats back and forth, hub/TFDS sources.

Offsets in the hand-written files are counted by hand (and checked once against `str.index`); the real dev
file's counts are those of the official SQuAD v2.0 dev articles it holds.
"""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from qajax.errors import DataError
from qajax.tasks.squad import data, splits
from qajax.tasks.squad.data import Answer, Example
from qajax.tasks.squad.metric import evaluate_v2
from tests.tasks.squad.test_splits import articles

DEV_PART = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "squad2" / "dev-part.json"
CONTEXT = "Normandy is a region in France."  # "France" starts at 24


def base_doc() -> dict:
    """One article, one paragraph: q1 answerable, q2 unanswerable (v2.0)."""
    q1 = {"id": "q1", "question": "Where is Normandy?", "answers": [{"text": "France", "answer_start": 24}]}
    q2 = {"id": "q2", "question": "Who named it?", "answers": [], "is_impossible": True}
    q2["plausible_answers"] = [{"text": "Normandy", "answer_start": 0}]  # ignored
    qas = [{**q1, "is_impossible": False}, q2]
    return {"version": "v2.0", "data": [{"title": "Normans", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}


def write(tmp_path: Path, document, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def paragraph(doc: dict) -> dict:
    return doc["data"][0]["paragraphs"][0]


def q(doc: dict, index: int = 0) -> dict:
    return paragraph(doc)["qas"][index]


def test_the_hand_counted_offset():
    assert CONTEXT.index("France") == 24


def test_reads_fields_in_file_order(tmp_path):
    examples, report = data.read_squad(write(tmp_path, base_doc()))
    assert examples == [
        Example("q1", "Where is Normandy?", (CONTEXT,), (Answer("France", 24),), "Normans"),
        Example("q2", "Who named it?", (CONTEXT,), (), "Normans"),
    ]
    assert [e.is_impossible for e in examples] == [False, True]
    assert len(report) == 0 and report.summary() == "skipped 0 of 2 questions"


# Each case breaks q1 (or q2) in one way: (mutation, question id in the message, field in the message, reason).
QUESTION_CASES = {
    "missing question": (lambda d: q(d).pop("question"), "q1", "'question'", "missing question"),
    "missing answers": (lambda d: q(d).pop("answers"), "q1", "'answers'", "missing answers"),
    "missing text": (lambda d: q(d)["answers"][0].pop("text"), "q1", "'answers[0].text'", "missing text"),
    "missing answer_start": (
        lambda d: q(d)["answers"][0].pop("answer_start"),
        "q1",
        "'answers[0].answer_start'",
        "missing answer_start",
    ),
    "question not a string": (lambda d: q(d).update(question=7), "q1", "'question'", "wrong type of question"),
    "answers not a list": (lambda d: q(d).update(answers="France"), "q1", "'answers'", "wrong type of answers"),
    "answer not an object": (lambda d: q(d).update(answers=["France"]), "q1", "answers[0]", "not an object"),
    "answer_start a string": (
        lambda d: q(d)["answers"][0].update(answer_start="24"),
        "q1",
        "'answers[0].answer_start'",
        "wrong type of answer_start",
    ),
    "answer_start a bool": (
        lambda d: q(d)["answers"][0].update(answer_start=True),
        "q1",
        "'answers[0].answer_start'",
        "wrong type of answer_start",
    ),
    "answer_start off by one": (
        lambda d: q(d)["answers"][0].update(answer_start=23),
        "q1",
        "'answers[0].answer_start'",
        "answer_start mismatch",
    ),
    "answer_start negative": (
        lambda d: q(d)["answers"][0].update(answer_start=-1),
        "q1",
        "'answers[0].answer_start'",
        "answer_start out of range",
    ),
    "answer past the end": (
        lambda d: q(d)["answers"][0].update(answer_start=26),
        "q1",
        "'answers[0].answer_start'",
        "answer_start out of range",
    ),
    "empty answer text": (
        lambda d: q(d)["answers"][0].update(text="", answer_start=0),
        "q1",
        "'answers[0].text'",
        "empty answer",
    ),
    "blank question": (lambda d: q(d).update(question=" \t\n"), "q1", "'question'", "empty question"),
    "impossible with answers": (
        lambda d: q(d).update(is_impossible=True),
        "q1",
        "'is_impossible'",
        "impossible with answers",
    ),
    "possible without answers": (lambda d: q(d, 1).update(is_impossible=False), "q2", "'answers'", "no answers"),
    "is_impossible a string": (
        lambda d: q(d).update(is_impossible="no"),
        "q1",
        "'is_impossible'",
        "wrong type of is_impossible",
    ),
}


@pytest.mark.parametrize("case", QUESTION_CASES)
def test_each_question_rule_raises_naming_file_id_and_field(tmp_path, case):
    mutate, qid, field, reason = QUESTION_CASES[case]
    doc = base_doc()
    mutate(doc)
    path = write(tmp_path, doc)
    with pytest.raises(DataError) as raised:
        data.read_squad(path)
    message = str(raised.value)
    assert str(path) in message and f"question {qid!r}" in message and field in message
    assert raised.value.path == str(path)

    examples, report = data.read_squad(path, skip_invalid=True)
    assert report.skipped == [(qid, reason)]
    assert [e.id for e in examples] == [x for x in ("q1", "q2") if x != qid]
    assert report.summary() == f"skipped 1 of 2 questions: 1 {reason}"


def test_mismatch_message_says_what_the_offset_reads_and_where_the_text_is(tmp_path):
    doc = base_doc()
    q(doc)["answers"][0]["answer_start"] = 23
    with pytest.raises(DataError, match=r"reads ' Franc', not the answer 'France' \(the text first occurs at 24\)"):
        data.read_squad(write(tmp_path, doc))


@pytest.mark.parametrize("context", ["", "   \n\t"])
def test_blank_context_skips_every_question_of_its_paragraph(tmp_path, context):
    doc = base_doc()
    paragraph(doc)["context"] = context
    path = write(tmp_path, doc)
    with pytest.raises(DataError, match=r"data\.json, question 'q1' .*field 'context' is empty"):
        data.read_squad(path)
    examples, report = data.read_squad(path, skip_invalid=True)
    assert examples == [] and report.summary() == "skipped 2 of 2 questions: 2 empty context"


def test_a_bad_title_skips_its_articles_questions(tmp_path):
    doc = base_doc()
    doc["data"][0]["title"] = 3
    path = write(tmp_path, doc)
    with pytest.raises(DataError, match=r"question 'q1' .*field 'title' must be a string, found an integer"):
        data.read_squad(path)
    assert data.read_squad(path, skip_invalid=True)[1].summary() == "skipped 2 of 2 questions: 2 wrong type of title"


def test_missing_context_names_the_field(tmp_path):
    doc = base_doc()
    del paragraph(doc)["context"]
    with pytest.raises(DataError, match=r"question 'q1' .*missing field 'context'"):
        data.read_squad(write(tmp_path, doc))


# Records without an id: the message names the position (and the title where there is one).
LOCATOR_CASES = {
    "missing id": (lambda d: q(d).pop("id"), "data[0].paragraphs[0].qas[0]", "'id'"),
    "id not a string": (lambda d: q(d).update(id=17), "data[0].paragraphs[0].qas[0]", "'id'"),
    "missing qas": (lambda d: paragraph(d).pop("qas"), "data[0].paragraphs[0] (title 'Normans')", "'qas'"),
    "missing paragraphs": (lambda d: d["data"][0].pop("paragraphs"), "data[0]", "'paragraphs'"),
}


@pytest.mark.parametrize("case", LOCATOR_CASES)
def test_records_without_an_id_are_named_by_position(tmp_path, case):
    mutate, where, field = LOCATOR_CASES[case]
    doc = base_doc()
    mutate(doc)
    path = write(tmp_path, doc)
    with pytest.raises(DataError) as raised:
        data.read_squad(path)
    assert str(path) in str(raised.value) and where in str(raised.value) and field in str(raised.value)
    _, report = data.read_squad(path, skip_invalid=True)
    assert len(report) == 1 and report.skipped[0][0] == where.split(" ")[0]


@pytest.mark.parametrize("document", [{"version": "v2.0"}, {"data": {"title": "x"}}, [1, 2]])
def test_a_file_without_a_data_list_raises_even_when_skipping(tmp_path, document):
    with pytest.raises(DataError, match=r"data\.json: expected a SQuAD file: .*'data' is a list"):
        data.read_squad(write(tmp_path, document), skip_invalid=True)


def test_duplicate_ids_name_both_locations(tmp_path):
    doc = base_doc()
    doc["data"][0]["paragraphs"].append({"context": "Another paragraph.", "qas": [copy.deepcopy(q(doc, 1))]})
    path = write(tmp_path, doc)
    with pytest.raises(DataError) as raised:
        data.read_squad(path)
    message = str(raised.value)
    assert "'q2'" in message and "data[0].paragraphs[0].qas[1]" in message and "data[0].paragraphs[1].qas[0]" in message
    examples, report = data.read_squad(path, skip_invalid=True)
    assert [e.id for e in examples] == ["q1", "q2"] and examples[1].contexts == (CONTEXT,)
    assert report.skipped == [("q2", "duplicate id")]


def test_unreadable_json_names_the_line_and_column(tmp_path):
    path = write(tmp_path, '{"data": [\n  {"title": "x",, "paragraphs": []}]}')
    with pytest.raises(DataError, match=r"data\.json: not valid JSON: .*line 2 column 17"):
        data.read_squad(path)
    with pytest.raises(DataError, match=r"missing\.json: cannot read the file"):
        data.read_squad(tmp_path / "missing.json")


def test_summary_counts_reasons_most_common_first(tmp_path):
    doc = base_doc()
    qas = paragraph(doc)["qas"]
    qas += [{"id": f"x{i}", "question": "?", "answers": [{"text": "France", "answer_start": 0}]} for i in range(2)]
    qas.append({"id": "y", "question": "", "answers": []})
    examples, report = data.read_squad(write(tmp_path, doc), skip_invalid=True)
    assert [e.id for e in examples] == ["q1", "q2"] and len(report) == 3
    assert report.summary() == "skipped 3 of 5 questions: 2 answer_start mismatch, 1 empty question"


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_offsets_are_python_string_indices(tmp_path, ensure_ascii):
    context = "Café 東京 🎉 — crème brûlée"
    # Code points: "Café " 0-4, "東京" 5-6, " " 7, "🎉" 8, " — " 9-11, "crème" 12-16; UTF-16 (JavaScript)
    # would count the emoji twice and put "crème" at 13, UTF-8 bytes at 25.
    answers = [{"text": "東京", "answer_start": 5}, {"text": "🎉", "answer_start": 8}]
    answers.append({"text": "crème", "answer_start": 12})
    doc = {
        "data": [{"title": "Ünïcode", "paragraphs": [{"context": context, "qas": [{"id": "u", "question": "¿Qué?"}]}]}]
    }
    q(doc)["answers"] = answers
    path = tmp_path / "u.json"
    path.write_text(json.dumps(doc, ensure_ascii=ensure_ascii), encoding="utf-8")
    (example,), _ = data.read_squad(path)
    assert example.answers == (Answer("東京", 5), Answer("🎉", 8), Answer("crème", 12))
    assert example.title == "Ünïcode" and example.question == "¿Qué?"

    answers[2]["answer_start"] = 13  # the UTF-16 offset
    path.write_text(json.dumps(doc, ensure_ascii=ensure_ascii), encoding="utf-8")
    with pytest.raises(DataError, match=r"'answers\[2\].answer_start' is 13.*first occurs at 12"):
        data.read_squad(path)


def test_multiple_references_are_kept_in_order_duplicates_included(tmp_path):
    doc = base_doc()
    q(doc)["answers"] = [
        {"text": "France", "answer_start": 24},
        {"text": "in France", "answer_start": 21},
        {"text": "France", "answer_start": 24},
    ]
    (first, _), _ = data.read_squad(write(tmp_path, doc))
    assert first.answers == (Answer("France", 24), Answer("in France", 21), Answer("France", 24))


def test_version_v11_drops_unanswerable_questions(tmp_path):
    path = write(tmp_path, base_doc())
    examples, report = data.read_squad(path, version="v1.1")
    assert [e.id for e in examples] == ["q1"]
    assert report.unanswerable_dropped == 1 and len(report) == 0
    assert report.summary() == "skipped 0 of 2 questions (1 unanswerable left out for v1.1)"
    with pytest.raises(ValueError, match="version"):
        data.read_squad(path, version="2.0")


def test_a_v11_file_needs_answers_without_is_impossible(tmp_path):
    doc = base_doc()
    doc["version"] = "1.1"
    for qa in paragraph(doc)["qas"]:
        del qa["is_impossible"]
    path = write(tmp_path, doc)
    with pytest.raises(
        DataError, match=r"question 'q2'.*'answers' is empty, but SQuAD v1.1 questions are all answerable"
    ):
        data.read_squad(path)
    # Read as v2.0, no answers and no flag means unanswerable.
    examples, _ = data.read_squad(path, version="v2.0")
    assert [e.is_impossible for e in examples] == [False, True]


# --- formats back and forth ---------------------------------------------------------------------------


def test_to_squad_json_round_trips_and_groups_by_article_and_paragraph(tmp_path):
    doc = base_doc()
    doc["data"].append(copy.deepcopy(doc["data"][0]))
    doc["data"][1]["title"] = "Other"
    for qa in doc["data"][1]["paragraphs"][0]["qas"]:
        qa["id"] += "-other"
    doc["data"][1]["paragraphs"].append({"context": "Paris.", "qas": [{"id": "p", "question": "City?", "answers": []}]})
    examples, _ = data.read_squad(write(tmp_path, doc))
    written = data.to_squad_json(examples)
    assert [a["title"] for a in written["data"]] == ["Normans", "Other"]
    assert [len(a["paragraphs"]) for a in written["data"]] == [1, 2]
    assert q(written, 1) == {"id": "q2", "question": "Who named it?", "answers": [], "is_impossible": True}
    again, report = data.read_squad(write(tmp_path, written, "again.json"))
    assert again == examples and len(report) == 0

    v1 = data.to_squad_json([e for e in examples if not e.is_impossible], version="v1.1")
    assert "is_impossible" not in q(v1)
    with pytest.raises(DataError, match="question 'q2'.*unanswerable"):
        data.to_squad_json(examples, version="v1.1")


def test_to_squad_json_feeds_the_official_metric():
    examples = [
        Example("a", "?", ("one two three",), (Answer("two", 4),)),
        Example("b", "?", ("one two three",), ()),
    ]
    scores = evaluate_v2(data.to_squad_json(examples), {"a": "two", "b": ""})
    assert scores["exact"] == 100.0 and scores["HasAns_total"] == 1 and scores["NoAns_total"] == 1


def multi_doc() -> dict:
    record = {"id": "m1", "question": "Where?", "title": "T", "contexts": ["First passage.", "It is in France."]}
    record["answers"] = [{"text": "France", "answer_start": 9, "context_index": 1}]
    empty = {"id": "m2", "question": "Who?", "contexts": ["Nothing here."], "answers": []}
    return {"version": data.MULTI_CONTEXT_VERSION, "data": [record, empty]}


def test_multi_context_reads_and_round_trips(tmp_path):
    examples, report = data.read_multi_context(write(tmp_path, multi_doc()))
    assert examples == [
        Example("m1", "Where?", ("First passage.", "It is in France."), (Answer("France", 9, 1),), "T"),
        Example("m2", "Who?", ("Nothing here.",), (), ""),
    ]
    assert len(report) == 0
    path = write(tmp_path, data.to_multi_context_json(examples), "again.json")
    assert data.read_multi_context(path)[0] == examples
    assert data.load(path)[0] == examples  # detected by its version
    del (document := multi_doc())["version"]
    assert data.load(write(tmp_path, document, "unversioned.json"))[0] == examples  # detected by `contexts`


MULTI_CASES = {
    "context_index too large": (lambda r: r["answers"][0].update(context_index=2), "context_index out of range"),
    "context_index negative": (lambda r: r["answers"][0].update(context_index=-1), "context_index out of range"),
    "context_index missing": (lambda r: r["answers"][0].pop("context_index"), "missing context_index"),
    "start checked in the other context": (lambda r: r["answers"][0].update(context_index=0), "answer_start"),
    "blank second context": (lambda r: r["contexts"].__setitem__(1, " "), "empty context"),
    "context not a string": (lambda r: r["contexts"].__setitem__(0, None), "wrong type of contexts"),
    "no contexts": (lambda r: r.update(contexts=[]), "no contexts"),
}


@pytest.mark.parametrize("case", MULTI_CASES)
def test_multi_context_validation(tmp_path, case):
    mutate, reason = MULTI_CASES[case]
    document = multi_doc()
    mutate(document["data"][0])
    path = write(tmp_path, document, "multi.json")
    with pytest.raises(DataError, match=r"multi\.json, question 'm1' \(data\[0\]\)"):
        data.read_multi_context(path)
    examples, report = data.read_multi_context(path, skip_invalid=True)
    assert [e.id for e in examples] == ["m2"] and report.skipped[0][0] == "m1"
    assert report.skipped[0][1].startswith(reason)


def test_context_index_message_names_the_field(tmp_path):
    document = multi_doc()
    document["data"][0]["answers"][0]["context_index"] = 2
    with pytest.raises(DataError, match=r"field 'answers\[0\].context_index' is 2, but there are 2 contexts"):
        data.read_multi_context(write(tmp_path, document))


def test_dev_titles_are_kept_out_of_training_and_evaluation(tmp_path):
    from qajax.tasks.squad.task import default_config, read_splits

    examples = articles() + [
        Example(f"C0-{n}", "?", ("c0 text.",), (Answer("text", 3),) if n else (), "C") for n in range(3)
    ] + [Example("C1-0", "?", ("c1 words.",), (), "C"), Example("D0-0", "?", ("d0 text.",), (), "D")]  # fmt: skip
    path = tmp_path / "four-articles.json"
    path.write_text(json.dumps(data.to_squad_json(examples)))
    t = default_config()
    t.train_file, t.eval_titles, t.dev_titles = str(path), ("A",), ("C",)
    train, held_out, dev = read_splits(t, seed=0)
    assert {e.title for e in train} == {"B", "D"} and {e.title for e in held_out} == {"A"}
    assert [e.id for e in dev] == ["C0-0", "C0-1", "C0-2", "C1-0"] and dev[0].is_impossible
    t.contexts_per_question = 2  # dev is prepared as the held-out set is: each question gets two contexts
    _, held_out, dev = read_splits(t, seed=0)
    assert {len(e.contexts) for e in held_out} == {2} == {len(e.contexts) for e in dev}
    t.contexts_per_question = 1
    t.version = "v1.1"  # no null threshold to choose: the articles stay out of training, unused
    train, _, dev = read_splits(t, seed=0)
    assert dev == [] and {e.title for e in train} == {"B"}  # D's one question is unanswerable
    t.version, t.dev_titles = "v2.0", ()
    train, _, dev = read_splits(t, seed=0)
    assert dev == [] and {e.title for e in train} == {"B", "C", "D"}


def test_dev_titles_of_generated_data():
    from qajax.tasks.squad.task import GENERATED, default_config, read_splits

    t = default_config()
    t.train_file, t.eval_file, t.generated_passages = GENERATED, GENERATED, 6
    titles = sorted({e.title for e in read_splits(t, seed=0)[0]})
    t.dev_titles = (titles[0],)
    train, held_out, dev = read_splits(t, seed=0)
    assert dev and {e.title for e in dev} == {titles[0]} and titles[0] not in {e.title for e in train}
    assert held_out  # the generated evaluation set (seed + 1)


# --- hub and TFDS ---------------------------------------------------------------------------------------


def hub_columns() -> dict:
    return {
        "id": ["h1", "h2"],
        "title": ["Normans", "Normans"],
        "context": [CONTEXT, CONTEXT],
        "question": ["Where is Normandy?", "Who named it?"],
        "answers": [{"text": ["France", "France"], "answer_start": [24, 24]}, {"text": [], "answer_start": []}],
    }


def fake_hub(monkeypatch, columns: dict | None = None, error: Exception | None = None) -> list:
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(name, split=None):
        calls.append((name, split))
        if error is not None:
            raise error
        return datasets.Dataset.from_dict(columns)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_load_hub_reads_squad_shaped_datasets(monkeypatch):
    calls = fake_hub(monkeypatch, hub_columns())
    examples, report = data.load("squad_v2", "validation")
    assert calls == [("squad_v2", "validation")]
    assert examples == [
        Example("h1", "Where is Normandy?", (CONTEXT,), (Answer("France", 24), Answer("France", 24)), "Normans"),
        Example("h2", "Who named it?", (CONTEXT,), (), "Normans"),
    ]
    assert report.summary() == "skipped 0 of 2 questions"


def test_load_hub_validates_rows(monkeypatch):
    columns = hub_columns()
    columns["answers"][0] = {"text": ["France"], "answer_start": [23]}
    fake_hub(monkeypatch, columns)
    with pytest.raises(DataError, match=r"hub dataset 'squad' split 'train', question 'h1' \(row 0\).*answer_start"):
        data.load_hub("squad", "train")
    examples, report = data.load_hub("squad", "train", skip_invalid=True)
    assert [e.id for e in examples] == ["h2"] and report.skipped == [("h1", "answer_start mismatch")]


def test_load_hub_missing_columns(monkeypatch):
    fake_hub(monkeypatch, {"id": ["x"], "question": ["?"]})
    with pytest.raises(DataError, match=r"missing columns \['context', 'answers'\]"):
        data.load_hub("someone/qa", "train")


def test_load_hub_unreachable_is_a_clear_error(monkeypatch):
    fake_hub(monkeypatch, error=ConnectionError("Couldn't reach 'squad' on the Hub (LocalEntryNotFoundError)"))
    with pytest.raises(DataError, match=r"hub dataset 'squad' split 'train': cannot load it: Couldn't reach.*local"):
        data.load("squad")


def test_tfds_without_the_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes `import` raise ImportError
    with pytest.raises(DataError, match=r"tfds:squad/v2.0.*pip install qajax\[tfds\]"):
        data.load("tfds:squad/v2.0", "validation")


def test_tfds_records_are_decoded(monkeypatch):
    record = {
        key: value.encode()
        for key, value in zip(["id", "title", "context", "question"], ["t1", "T", CONTEXT, "?"], strict=True)
    }
    record["answers"] = {"text": np.array([b"France"]), "answer_start": np.array([24], dtype=np.int32)}
    record["is_impossible"] = np.bool_(False)
    fake = types.SimpleNamespace(load=lambda name, split: [record], as_numpy=lambda dataset: iter(dataset))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    examples, _ = data.load("tfds:squad/v2.0", "validation")
    assert examples == [Example("t1", "?", (CONTEXT,), (Answer("France", 24),), "T")]
    assert type(examples[0].answers[0].start) is int


# --- the real dev file ----------------------------------------------------------------------------------

needs_dev = pytest.mark.skipif(not DEV_PART.exists(), reason=f"{DEV_PART} is not present")


@needs_dev
def test_dev_part_counts_split_and_round_trip(tmp_path):
    examples, report = data.read_squad(DEV_PART)
    assert len(examples) == 4611 and sum(e.is_impossible for e in examples) == 2427 and len(report) == 0
    titles = sorted({e.title for e in examples})
    assert len(titles) == 12
    train, evaluation = splits.split_by_title(examples, titles[:3])
    assert {e.title for e in train}.isdisjoint({e.title for e in evaluation})
    assert len({e.title for e in train}) == 9 and len(train) + len(evaluation) == len(examples)
    assert {e.id for e in train} | {e.id for e in evaluation} == {e.id for e in examples}

    assert data.read_squad(write(tmp_path, data.to_squad_json(examples)))[0] == examples
    for example in splits.as_multi_context(examples, 4, seed=0):
        for answer in example.answers:
            assert example.contexts[answer.context_index][answer.start :].startswith(answer.text)
