"""Held-out articles and distractor passages (qajax.tasks.squad.splits) on hand-made articles."""

from __future__ import annotations

import pytest

from qajax.errors import DataError
from qajax.tasks.squad import splits
from qajax.tasks.squad.data import Answer, Example


def articles() -> list[Example]:
    """Article A has three paragraphs, B one; B's questions must borrow from A."""
    examples = []
    for title, paragraphs in (("A", ["a0 text.", "a1 text.", "a2 text."]), ("B", ["b0 text."])):
        for p, context in enumerate(paragraphs):
            answers = (Answer("text", 3),) if p % 2 == 0 else ()
            examples += [Example(f"{title}{p}-{n}", "?", (context,), answers, title) for n in range(2)]
    return examples


def test_as_multi_context_is_deterministic_and_keeps_answers_on_their_text():
    examples = articles()
    first = splits.as_multi_context(examples, 3, seed=0)
    assert first == splits.as_multi_context(examples, 3, seed=0)
    assert {e.id: e for e in first} == {e.id: e for e in splits.as_multi_context(examples[::-1], 3, seed=0)}
    assert first != splits.as_multi_context(examples, 3, seed=1)
    for original, multi in zip(examples, first, strict=True):
        assert multi.id == original.id and len(set(multi.contexts)) == 3
        assert original.contexts[0] in multi.contexts
        assert multi.is_impossible == original.is_impossible
        for answer in multi.answers:
            assert multi.contexts[answer.context_index][answer.start :][: len(answer.text)] == answer.text
            assert multi.contexts[answer.context_index] == original.contexts[0]
        if original.title == "A":  # a long enough article lends only its own paragraphs
            assert set(multi.contexts) == {"a0 text.", "a1 text.", "a2 text."}
        else:
            assert sum(c.startswith("a") for c in multi.contexts) == 2
    # The own paragraph's position varies with the seed, so a model cannot learn "the answer is in context 0".
    assert len({a.context_index for e in first for a in e.answers}) > 1
    with pytest.raises(ValueError, match="contexts_per_question"):
        splits.as_multi_context(examples, 5, seed=0)


def test_split_by_title():
    examples = articles()
    train, evaluation = splits.split_by_title(examples, ["B"])
    assert {e.title for e in train} == {"A"} and [e.id for e in evaluation] == ["B0-0", "B0-1"]
    with pytest.raises(DataError, match=r"no question has eval title 'Bb'; did you mean \['B'\]"):
        splits.split_by_title(examples, ["Bb"])
