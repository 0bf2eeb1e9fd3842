"""A SQuAD 2.0-format data set generated at run time: invented towns, their facts, and questions.

Each passage states some facts about one invented town; each question asks for one fact. A question is
answerable when its fact is stated in the passage and unanswerable when it is not (the passage is about
the same town but leaves that fact out, which is the hard kind of SQuAD 2.0 question). Names are made
from syllables, so no text is copied from anywhere and a pretrained model cannot know the answers.
"""

from __future__ import annotations

import numpy as np

from qajax.tasks.squad.data import Answer, Example

_SYLLABLES = "ka lo ven dra mi tor sel wen bar ost ril na the um gar fen lis cor dul pa rek sim vo yan".split()
_FIRST = "Maria Tomas Ilse Arvid Nadia Oskar Lena Pavel Greta Jonas Vera Emil Sofia Karl Irena Hugo".split()
_PRODUCTS = "salt wool copper glass cheese timber paper silk clocks bells honey ink".split()
_REGIONS = "the northern hills|the river delta|the eastern plain|the high valley|the southern coast".split("|")

# fact name -> (sentence template, question templates, how to draw the value)
_FACTS = {
    "founded": ("{town} was founded in {value}.", ("When was {town} founded?", "In what year was {town} founded?")),
    "founder": ("Its founder was {value}.", ("Who founded {town}?", "Who was the founder of {town}?")),
    "river": ("The river {value} runs through the town.", ("Which river runs through {town}?",)),
    "product": (
        "{town} is known for its {value}.",
        ("What is {town} known for?", "What product made {town} famous?"),
    ),
    "population": ("About {value} people live there.", ("How many people live in {town}?",)),
    "region": ("The town lies in {value}.", ("Where does {town} lie?", "In which region is {town}?")),
    "mayor": ("The current mayor is {value}.", ("Who is the mayor of {town}?",)),
}


def _name(rng: np.random.Generator, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES, parts)).capitalize()


def _value(fact: str, rng: np.random.Generator) -> str:
    if fact == "founded":
        return str(int(rng.integers(1100, 1950)))
    if fact in ("founder", "mayor"):
        return f"{rng.choice(_FIRST)} {_name(rng, 3)}"
    if fact == "river":
        return _name(rng, 2)
    if fact == "product":
        return str(rng.choice(_PRODUCTS))
    if fact == "population":
        return f"{int(rng.integers(2, 90)) * 1000:,}"
    return str(rng.choice(_REGIONS))


def generate_examples(num_passages: int, seed: int, *, questions_per_passage: int = 4) -> list[Example]:
    """Passages of 3-5 of the 7 facts; each question asks for a different fact, so about 40% are unanswerable."""
    rng = np.random.default_rng(seed)
    examples = []
    facts = list(_FACTS)
    for p in range(num_passages):
        town = _name(rng, 2)
        stated = list(rng.choice(facts, int(rng.integers(3, 6)), replace=False))
        stated.sort(key=facts.index)  # "founded" first, so that "Its founder" refers to the town
        # Without "founded", name the town first: the passage must say which town its questions ask about.
        context = "" if stated[0] == "founded" else f"{town} is a town. "
        starts, values = {}, {}
        for fact in stated:
            values[fact] = _value(fact, rng)
            sentence = _FACTS[fact][0].format(town=town, value="\0")
            starts[fact] = len(context) + sentence.index("\0")
            context += sentence.replace("\0", values[fact]) + " "
        context = context.strip()
        for q, fact in enumerate(rng.choice(facts, questions_per_passage, replace=False)):
            question = str(rng.choice(_FACTS[fact][1])).format(town=town)
            answers = (Answer(values[fact], starts[fact]),) if fact in values else ()
            examples.append(Example(f"gen-{seed}-{p}-{q}", question, (context,), answers, title=town))
    return examples
