"""How the read examples become a run's data sets: articles held out by title, and report 000's open-domain
setting, where each question sees its paragraph among distractor passages."""

from __future__ import annotations

import collections
import dataclasses
import difflib
import random
from collections.abc import Iterable, Sequence

from qajax.errors import DataError
from qajax.tasks.squad import data
from qajax.tasks.squad.data import Example


def split_by_title(examples: Iterable[Example], eval_titles: Sequence[str]) -> tuple[list[Example], list[Example]]:
    """(train, eval): eval holds every question of the articles named in `eval_titles`, train the rest."""
    examples, wanted = list(examples), set(eval_titles)
    titles = {e.title for e in examples}
    if wanted - titles:
        title = sorted(wanted - titles)[0]
        close = difflib.get_close_matches(title, titles, n=3)
        raise DataError(f"no question has eval title {title!r}" + (f"; did you mean {close}?" if close else ""))
    train = [e for e in examples if e.title not in wanted]
    return train, [e for e in examples if e.title in wanted]


def as_multi_context(examples: Iterable[Example], contexts_per_question: int, seed: int) -> list[Example]:
    """Each question gets its paragraph and `contexts_per_question - 1` others, in a shuffled order.

    Others come from the same article first, then from other articles when it is short. Each question's draw
    is seeded by (seed, id) over sorted paragraphs, so it does not depend on the order of the examples.
    """
    examples = list(examples)
    owner: dict[str, str] = {}  # each distinct paragraph -> the first title it appears under
    for example in examples:
        owner.setdefault(data.single_context(example, "as_multi_context"), example.title)
    pool = sorted(owner)  # sorted, so that the draw does not depend on the order of the examples
    by_title: dict[str, list[str]] = collections.defaultdict(list)
    for context in pool:
        by_title[owner[context]].append(context)
    if not 1 <= contexts_per_question <= len(pool):
        raise ValueError(f"contexts_per_question must be in 1..{len(pool)} (distinct paragraphs)")

    result = []
    for example in examples:
        rng = random.Random(f"{seed}/{example.id}")  # str seeds hash with sha512: stable across runs
        own, wanted = example.contexts[0], contexts_per_question - 1
        same_article = [c for c in by_title[example.title] if c != own]
        chosen = rng.sample(same_article, min(wanted, len(same_article)))
        taken = {own, *chosen}
        while len(chosen) < wanted:  # the article is short: draw from the others
            context = pool[rng.randrange(len(pool))]
            if context not in taken:
                chosen.append(context)
                taken.add(context)
        contexts = [own, *chosen]
        rng.shuffle(contexts)
        index = contexts.index(own)
        answers = tuple(dataclasses.replace(a, context_index=index) for a in example.answers)
        result.append(Example(example.id, example.question, tuple(contexts), answers, example.title))
    return result
