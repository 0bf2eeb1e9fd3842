"""Extractive-QA examples from SQuAD files, multi-context files, the HF hub or TFDS, validated on the way in.

Offsets are Python `str` indices (code points), as in SQuAD's JSON: `context[start:start + len(text)] == text`.
A question that breaks a rule raises `DataError` naming the file, the question id (or the record's position
when it has none) and the field; with `skip_invalid=True` it is left out and counted in a `SkipReport`.

SQuAD files are the official layout (v1.1 and v2.0; `plausible_answers` is ignored). Our multi-context
layout has one record per question and answers that say which context they are in:

    {"version": "qajax-multi-context-1",
     "data": [{"id": "q1", "question": "...", "title": "optional",
               "contexts": ["first passage", "second passage"],
               "answers": [{"text": "...", "answer_start": 12, "context_index": 1}],
               "is_impossible": false}]}          # optional; without it, no answers means unanswerable
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterable
from typing import Any

from qajax.errors import DataError
from qajax.files import read_json

MULTI_CONTEXT_VERSION = "qajax-multi-context-1"
_V1_VERSIONS = ("1.1", "v1.1")  # the official v1.1 files say "1.1"
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
_JSON_NAMES.update({dict: "an object", type(None): "null"})


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset into contexts[context_index]
    context_index: int = 0


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    question: str
    contexts: tuple[str, ...]  # one for SQuAD; several for multi-context QA
    answers: tuple[Answer, ...]  # empty for unanswerable; dev sets give several references
    title: str = ""

    @property
    def is_impossible(self) -> bool:
        return not self.answers


@dataclasses.dataclass
class SkipReport:
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (question id or locator, reason)
    total: int = 0  # questions seen, skipped and dropped ones included
    unanswerable_dropped: int = 0  # left out on purpose by version="v1.1", not errors

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        text = f"skipped {len(self)} of {self.total} questions"
        reasons = collections.Counter(reason for _, reason in self.skipped)
        if reasons:
            text += ": " + ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        if self.unanswerable_dropped:
            text += f" ({self.unanswerable_dropped} unanswerable left out for v1.1)"
        return text


Loaded = tuple[list[Example], SkipReport]  # what every reader returns


class _Invalid(Exception):
    """A record's problem before we know whether to raise or skip it: a short `reason` to count, and the message."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _typed(value: Any, kind: type, name: str) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    key = name.rpartition(".")[2].split("[")[0]  # "contexts[3]" counts as "contexts" in the summary
    found = _JSON_NAMES.get(type(value), type(value).__name__)
    raise _Invalid(f"wrong type of {key}", f"field {name!r} must be {_JSON_NAMES[kind]}, found {found}")


def _get(record: Any, key: str, kind: type, parent: str = "") -> Any:
    name = f"{parent}.{key}" if parent else key
    if not isinstance(record, dict):
        found = _JSON_NAMES.get(type(record), type(record).__name__)
        raise _Invalid("not an object", f"{parent or 'the record'} must be a JSON object, found {found}")
    if key not in record:
        raise _Invalid(f"missing {key}", f"missing field {name!r}")
    return _typed(record[key], kind, name)


def _nonblank(text: str, name: str, what: str) -> str:
    if not text.strip():
        raise _Invalid(f"empty {what}", f"field {name!r} is empty or whitespace only")
    return text


def _answer_records(qa: dict) -> list:
    answers = qa.get("answers")
    if isinstance(answers, dict):  # the hub's columnar layout: {"text": [...], "answer_start": [...]}
        texts, starts = _get(answers, "text", list, "answers"), _get(answers, "answer_start", list, "answers")
        if len(texts) != len(starts):
            message = f"'answers.text' has {len(texts)} entries but 'answers.answer_start' has {len(starts)}"
            raise _Invalid("answers length mismatch", message)
        return [{"text": text, "answer_start": start} for text, start in zip(texts, starts, strict=True)]
    return _get(qa, "answers", list)


class _Reader:
    """Builds examples one question at a time, raising the first problem or recording it in the report."""

    def __init__(self, path: str, skip_invalid: bool, *, multi_context: bool = False, v1: bool = False):
        self.path, self.skip_invalid, self.multi_context, self.v1 = path, skip_invalid, multi_context, v1
        self.examples: list[Example] = []
        self.report = SkipReport()
        self._first_seen: dict[str, str] = {}  # question id -> locator where it first appeared

    def problem(self, name: str, where: str, error: _Invalid) -> None:
        if not self.skip_invalid:
            raise DataError(str(error), path=self.path, where=where)
        self.report.skipped.append((name, error.reason))

    def question(self, locator: str, qa: Any, holder: Any, titled: Any) -> None:
        """`holder` carries the context(s) (the paragraph, or the record itself); `titled` the optional title."""
        self.report.total += 1
        try:
            qid = _get(qa, "id", str)
        except _Invalid as error:
            return self.problem(locator, locator, error)
        where = f"question {qid!r} ({locator})"
        if qid in self._first_seen:
            message = f"question id {qid!r} is used twice: at {self._first_seen[qid]} and at {locator}"
            return self.problem(qid, where, _Invalid("duplicate id", message))
        self._first_seen[qid] = locator
        try:
            example = self._example(qid, qa, holder, titled)
        except _Invalid as error:
            return self.problem(qid, where, error)
        if example is None:
            self.report.unanswerable_dropped += 1
        else:
            self.examples.append(example)

    def _example(self, qid: str, qa: dict, holder: dict, titled: dict) -> Example | None:
        question = _nonblank(_get(qa, "question", str), "question", "question")
        if self.multi_context:
            raw_contexts = _get(holder, "contexts", list)
            if not raw_contexts:
                raise _Invalid("no contexts", "field 'contexts' is an empty list")
            names = [f"contexts[{i}]" for i in range(len(raw_contexts))]
            contexts = tuple(
                _nonblank(_typed(c, str, n), n, "context") for c, n in zip(raw_contexts, names, strict=True)
            )
        else:
            contexts = (_nonblank(_get(holder, "context", str), "context", "context"),)
        title = _get(titled, "title", str) if "title" in titled else ""

        answers = []
        for n, raw in enumerate(_answer_records(qa)):
            name = f"answers[{n}]"
            text, start = _get(raw, "text", str, name), _get(raw, "answer_start", int, name)
            index = _get(raw, "context_index", int, name) if self.multi_context else 0
            if not 0 <= index < len(contexts):
                message = f"field '{name}.context_index' is {index}, but there are {len(contexts)} contexts"
                raise _Invalid("context_index out of range", message)
            context = contexts[index]
            if not text:
                raise _Invalid("empty answer", f"field '{name}.text' is empty")
            if start < 0 or start + len(text) > len(context):
                message = f"field '{name}.answer_start' is {start}: the answer ({len(text)} characters) does not fit"
                raise _Invalid("answer_start out of range", f"{message} in the context ({len(context)} characters)")
            if context[start : start + len(text)] != text:
                found, first = context[start : start + len(text)], context.find(text)
                hint = f" (the text first occurs at {first})" if first >= 0 else " (the text is not in the context)"
                message = f"field '{name}.answer_start' is {start}, which reads {found!r}, not the answer {text!r}"
                raise _Invalid("answer_start mismatch", message + hint)
            answers.append(Answer(text, start, index))

        # Without the flag, v1.1 questions are all answerable; elsewhere no answers means unanswerable.
        flagged = "is_impossible" in qa
        impossible = _typed(qa["is_impossible"], bool, "is_impossible") if flagged else not (answers or self.v1)
        if impossible and answers:
            raise _Invalid("impossible with answers", f"field 'is_impossible' is true but {len(answers)} answers given")
        if not impossible and not answers:
            why = "'is_impossible' is false" if flagged else "SQuAD v1.1 questions are all answerable"
            raise _Invalid("no answers", f"field 'answers' is empty, but {why}")
        if impossible and self.v1:
            return None
        return Example(qid, question, contexts, tuple(answers), title)


def _data(document: Any, path: str, what: str) -> list:
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(f"expected {what}: a JSON object whose field 'data' is a list", path=path)
    return document["data"]


def _parse_squad(document: Any, path: str, skip_invalid: bool, version: str | None) -> Loaded:
    if version not in (None, "v1.1", "v2.0"):
        raise ValueError(f"version must be None, 'v1.1' or 'v2.0', not {version!r}")
    articles = _data(document, path, "a SQuAD file")
    v1 = version == "v1.1" or (version is None and document.get("version") in _V1_VERSIONS)
    reader = _Reader(path, skip_invalid, v1=v1)
    for i, article in enumerate(articles):
        try:
            paragraphs = _get(article, "paragraphs", list)
        except _Invalid as error:
            reader.problem(f"data[{i}]", f"data[{i}]", error)
            continue
        title = article.get("title")
        for j, paragraph in enumerate(paragraphs):
            locator = f"data[{i}].paragraphs[{j}]"
            try:
                qas = _get(paragraph, "qas", list)
            except _Invalid as error:
                reader.problem(locator, f"{locator} (title {title!r})", error)
                continue
            for k, qa in enumerate(qas):
                reader.question(f"{locator}.qas[{k}]", qa, paragraph, article)
    return reader.examples, reader.report


def _parse_multi_context(document: Any, path: str, skip_invalid: bool) -> Loaded:
    reader = _Reader(path, skip_invalid, multi_context=True)
    for i, record in enumerate(_data(document, path, "a multi-context file")):
        reader.question(f"data[{i}]", record, record, record)  # `id` is read first, so a non-object fails there
    return reader.examples, reader.report


def read_squad(path, *, skip_invalid: bool = False, version: str | None = None) -> Loaded:
    """Reads a SQuAD JSON file -> (examples, SkipReport), in file order.

    `version=None` follows the file: "1.1" means every question needs answers. `version="v1.1"` gives v1.1
    semantics on v2.0 data: questions marked `is_impossible` are dropped (counted in `unanswerable_dropped`).
    """
    path = os.fspath(path)
    return _parse_squad(read_json(path), path, skip_invalid, version)


def read_multi_context(path, *, skip_invalid: bool = False) -> Loaded:
    """Reads our multi-context JSON layout (module docstring) -> (examples, SkipReport)."""
    path = os.fspath(path)
    return _parse_multi_context(read_json(path), path, skip_invalid)


def _read_rows(rows: Iterable[dict], source: str, skip_invalid: bool) -> Loaded:
    reader = _Reader(source, skip_invalid)
    for n, row in enumerate(rows):
        reader.question(f"row {n}", row, row, row)
    return reader.examples, reader.report


def load_hub(name: str, split: str, *, skip_invalid: bool = False) -> Loaded:
    """A SQuAD-shaped hub dataset ("squad", "squad_v2": id, title, context, question, answers{text, answer_start})."""
    import datasets  # slow to import; only hub users pay for it

    source = f"hub dataset {name!r} split {split!r}"
    try:
        dataset = datasets.load_dataset(name, split=split)
    except (OSError, ValueError) as e:  # no network and an unknown name are OSErrors, an unknown split a ValueError
        hint = "check the name, split and network, or use a cached copy (HF_DATASETS_OFFLINE=1) or a local .json file"
        raise DataError(f"cannot load it: {e} ({hint})", path=source) from e
    missing = [c for c in ("id", "context", "question", "answers") if c not in dataset.column_names]
    if missing:
        raise DataError(f"missing columns {missing}; found {dataset.column_names}", path=source)
    return _read_rows(dataset.to_list(), source, skip_invalid)  # to_list: one Arrow conversion, not one per row


def _load_tfds(name: str, split: str, skip_invalid: bool) -> Loaded:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError("tensorflow_datasets is not installed: pip install qajax[tfds]", path=f"tfds:{name}") from e

    def decoded(record: dict) -> dict:  # tfds gives bytes and numpy arrays
        row = {key: record[key].decode("utf-8") for key in ("id", "title", "context", "question")}
        texts, starts = record["answers"]["text"], record["answers"]["answer_start"]
        row["answers"] = {"text": [t.decode("utf-8") for t in texts], "answer_start": [int(s) for s in starts]}
        if "is_impossible" in record:
            row["is_impossible"] = bool(record["is_impossible"])
        return row

    records = tfds.as_numpy(tfds.load(name, split=split))
    return _read_rows(map(decoded, records), f"tfds:{name} split {split!r}", skip_invalid)


def _is_multi_context(document: Any) -> bool:
    if not isinstance(document, dict):
        return False
    records = document.get("data")
    first = records[0] if isinstance(records, list) and records else None
    return document.get("version") == MULTI_CONTEXT_VERSION or (isinstance(first, dict) and "contexts" in first)


def load(source, split: str = "train", *, skip_invalid: bool = False) -> Loaded:
    """A local .json file (SQuAD or multi-context, detected; `split` unused), `tfds:<name>`, or a hub name."""
    source = os.fspath(source)
    if source.startswith("tfds:"):
        return _load_tfds(source.removeprefix("tfds:"), split, skip_invalid)
    if source.endswith(".json") or os.path.isfile(source):
        document = read_json(source)
        if _is_multi_context(document):
            return _parse_multi_context(document, source, skip_invalid)
        return _parse_squad(document, source, skip_invalid, None)
    return load_hub(source, split, skip_invalid=skip_invalid)


def single_context(example: Example, why: str) -> str:
    if len(example.contexts) != 1:
        message = f"has {len(example.contexts)} contexts; {why} needs exactly one"
        raise DataError(message, where=f"question {example.id!r}")
    return example.contexts[0]


def to_squad_json(examples: Iterable[Example], *, version: str = "v2.0") -> dict:
    """The official layout; articles by title and paragraphs by context, both in order of first appearance."""
    if version not in ("v1.1", "v2.0"):
        raise ValueError(f"version must be 'v1.1' or 'v2.0', not {version!r}")
    articles: dict[str, dict[str, list]] = {}  # title -> context -> qas
    for example in examples:
        context = single_context(example, "a SQuAD file")
        if version == "v1.1" and example.is_impossible:
            raise DataError("is unanswerable, which v1.1 cannot hold; use v2.0", where=f"question {example.id!r}")
        answers = [{"text": a.text, "answer_start": a.start} for a in example.answers]
        qa = {"id": example.id, "question": example.question, "answers": answers}
        if version == "v2.0":
            qa["is_impossible"] = example.is_impossible
        articles.setdefault(example.title, {}).setdefault(context, []).append(qa)
    data = [
        {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
        for title, paragraphs in articles.items()
    ]
    return {"version": version, "data": data}


def to_multi_context_json(examples: Iterable[Example]) -> dict:
    def record(e: Example) -> dict:
        answers = [{"text": a.text, "answer_start": a.start, "context_index": a.context_index} for a in e.answers]
        return {"id": e.id, "question": e.question, "title": e.title, "contexts": list(e.contexts), "answers": answers}

    return {"version": MULTI_CONTEXT_VERSION, "data": [record(e) for e in examples]}
