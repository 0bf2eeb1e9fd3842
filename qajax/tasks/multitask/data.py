"""Readers for the minBERT tab-separated files: a header row, a leading row-index column, quoted fields.

    ids-sst-*.csv   (index) id  sentence             sentiment     0..4
    quora-*.csv     (index) id  sentence1 sentence2  is_duplicate  0/1 (written 0.0 / 1.0)
    sts-*.csv       (index) id  sentence1 sentence2  similarity    0..5

Fields go through the csv module (tab delimiter), never `line.split`: quoted fields hold tabs and doubled
quotes. Every problem is a `DataError` naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

from qajax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    texts: tuple[str, ...]  # one sentence, or the two of a pair
    label: float | int | None  # None when the file has no label column (a test set)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What one task's files look like and what its label is."""

    text_columns: tuple[str, ...]
    label_column: str
    parse_label: Callable[[str], float | int]  # raises ValueError with what was expected


def _class_label(num_classes: int):
    def parse(text: str) -> int:
        value = float(text)  # the files write 3 or 3.0
        if value != int(value) or not 0 <= value < num_classes:
            raise ValueError(f"expected an integer class 0..{num_classes - 1}")
        return int(value)

    return parse


def _score(low: float, high: float):
    def parse(text: str) -> float:
        value = float(text)
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"expected a number in [{low}, {high}]")
        return value

    return parse


DATASETS = {
    "sst": Dataset(("sentence",), "sentiment", _class_label(5)),
    "quora": Dataset(("sentence1", "sentence2"), "is_duplicate", _class_label(2)),
    "sts": Dataset(("sentence1", "sentence2"), "similarity", _score(0.0, 5.0)),
}


def read(
    path: str | Path, dataset: Dataset | str, *, require_labels: bool = True, skipped: list[str] | None = None
) -> list[Example]:
    """The examples of one file; `dataset` is a `Dataset` or a name in `DATASETS`. A malformed row raises,
    unless a `skipped` list is given: then the row is left out and its error message appended there."""
    dataset = DATASETS[dataset] if isinstance(dataset, str) else dataset
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", path=str(path))
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise DataError("empty file; expected a header row", path=str(path))
        header = [h.strip() for h in header]
        wanted = ("id", *dataset.text_columns) + ((dataset.label_column,) if require_labels else ())
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(f"header {header} lacks the columns {missing}; expected {list(wanted)}", path=str(path))
        index = {name: header.index(name) for name in header}
        has_label = dataset.label_column in index
        examples, seen = [], {}
        for row in reader:
            line = reader.line_num  # the physical line where this record ends
            if not any(field.strip() for field in row):
                continue  # blank line
            try:
                example = _parse_row(row, line, path, dataset, header, index, has_label, seen)
            except DataError as e:
                if skipped is None:
                    raise
                skipped.append(str(e))
                continue
            examples.append(example)
    if not examples:
        raise DataError("no examples after the header", path=str(path))
    return examples


def _parse_row(row, line, path, dataset, header, index, has_label, seen) -> Example:
    """One record -> an Example, or a DataError naming the file, line and column."""
    where = lambda column: f"line {line}, column {column!r}"
    if len(row) != len(header):
        raise DataError(
            f"{len(row)} fields, expected {len(header)} ({header}); an unquoted tab or quote?",
            path=str(path),
            where=f"line {line}",
        )
    example_id = row[index["id"]].strip()
    if not example_id:
        raise DataError("empty id", path=str(path), where=where("id"))
    if example_id in seen:
        raise DataError(
            f"duplicate id {example_id!r} (first on line {seen[example_id]})", path=str(path), where=where("id")
        )
    texts = tuple(row[index[c]].strip() for c in dataset.text_columns)
    for column, text in zip(dataset.text_columns, texts, strict=True):
        if not text:
            raise DataError("empty text", path=str(path), where=where(column))
    label = None
    if has_label:
        raw = row[index[dataset.label_column]].strip()
        try:
            label = dataset.parse_label(raw)
        except ValueError as e:
            message = str(e) if str(e).startswith("expected") else "expected a number"
            raise DataError(f"{raw!r}: {message}", path=str(path), where=where(dataset.label_column)) from e
    seen[example_id] = line
    return Example(example_id, texts, label)


def write_predictions(path: str | Path, dataset: Dataset | str, examples: list[Example], predictions) -> None:
    """The input format (index, id, texts, label column) with the predicted labels, written atomically."""
    import io

    from qajax.files import atomic_write_text

    dataset = DATASETS[dataset] if isinstance(dataset, str) else dataset
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["", "id", *dataset.text_columns, dataset.label_column])
    for row_index, (example, prediction) in enumerate(zip(examples, predictions, strict=True)):
        writer.writerow([row_index, example.id, *example.texts, prediction])
    atomic_write_text(path, buffer.getvalue())
