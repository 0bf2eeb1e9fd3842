"""The minBERT readers: quoted fields with tabs and quotes, and errors naming file, line and column."""

import csv

import pytest

from qajax.errors import DataError
from qajax.tasks.multitask import data
from tests.tasks.multitask.tiny import write_tsv


def test_quoted_fields_with_tabs_quotes_and_newlines(tmp_path):
    path = tmp_path / "quora.csv"
    rows = [["a", 'He said "hi"\tthen left', "two\nlines", "1.0"], ["b", "plain", "plain too", "0.0"]]
    write_tsv(path, ["", "id", "sentence1", "sentence2", "is_duplicate"], rows)
    examples = data.read(path, "quora")
    assert [e.id for e in examples] == ["a", "b"]
    assert examples[0].texts == ('He said "hi"\tthen left', "two\nlines")
    assert [e.label for e in examples] == [1, 0]


def test_sst_and_sts_labels(tmp_path):
    write_tsv(tmp_path / "sst.csv", ["", "id", "sentence", "sentiment"], [["x", "ok", 4], ["y", "meh", "2.0"]])
    assert [e.label for e in data.read(tmp_path / "sst.csv", "sst")] == [4, 2]
    write_tsv(tmp_path / "sts.csv", ["", "id", "sentence1", "sentence2", "similarity"], [["x", "a", "b", "3.8"]])
    assert data.read(tmp_path / "sts.csv", "sts")[0].label == pytest.approx(3.8)


@pytest.mark.parametrize(
    "row, where, expected",
    [
        (["x", "fine", "7"], "line 3, column 'sentiment'", "integer class 0..4"),
        (["x", "fine", "good"], "line 3, column 'sentiment'", "expected a number"),
        (["x", "", "1"], "line 3, column 'sentence'", "empty text"),
        (["first", "fine", "1"], "line 3, column 'id'", "duplicate id"),
        (["x", "fine"], "line 3", "3 fields, expected 4"),
    ],
)
def test_bad_rows_name_file_line_and_column(tmp_path, row, where, expected):
    path = tmp_path / "sst.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["", "id", "sentence", "sentiment"])
        writer.writerow([0, "first", "fine", 1])
        writer.writerow([1, *row])
    with pytest.raises(DataError) as error:
        data.read(path, "sst")
    message = str(error.value)
    assert message.startswith(f"{path}, {where}: ") and expected in message, message
    skipped = []
    assert [e.id for e in data.read(path, "sst", skipped=skipped)] == ["first"]
    assert len(skipped) == 1 and where in skipped[0]


def test_missing_columns_and_missing_file(tmp_path):
    write_tsv(tmp_path / "x.csv", ["", "id", "sentence1", "label"], [["a", "b", 1]])
    with pytest.raises(DataError, match=r"lacks the columns \['sentence2', 'is_duplicate'\]"):
        data.read(tmp_path / "x.csv", "quora")
    with pytest.raises(DataError, match="no such file"):
        data.read(tmp_path / "absent.csv", "quora")


def test_predictions_round_trip_in_the_input_format(tmp_path):
    write_tsv(tmp_path / "in.csv", ["", "id", "sentence1", "sentence2", "similarity"], [["x", 'a "q"\tb', "c", 1.0]])
    examples = data.read(tmp_path / "in.csv", "sts")
    data.write_predictions(tmp_path / "out.csv", "sts", examples, ["4.2500"])
    again = data.read(tmp_path / "out.csv", "sts")
    assert again[0].texts == examples[0].texts and again[0].label == pytest.approx(4.25)
