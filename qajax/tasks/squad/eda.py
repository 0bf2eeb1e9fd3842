"""EDA for QA contexts (report 000 section 2.3): random swap, deletion and duplication of context words.

Report 000 drops EDA's synonym replacement and insertion (no synonym lists) and keeps three operations on
the context: swap two words, delete a word, and duplicate one (insert a copy of a random word at a random
place). The question is never touched, nor the words of any answer, so every answer text still sits at
its (recomputed) `start`. The rate follows a schedule over epochs: constant, or linear (the report's best,
"Scheduled EDA (0 -> 10%)"; strong 10% and weak 5% constant rates hurt it).

Words are runs of non-whitespace. A protected block is an answer's characters widened to the whole words
they touch (an answer may start or end inside a word: "1990" in "1990s"); overlapping answers share one
block. Blocks never move relative to each other, are never deleted or duplicated, and keep their text
byte for byte; the free words between and around them are what the operations act on. Separators stay
where they were: a swap exchanges two words' texts, a deletion takes the whitespace before the word, and
a duplicate is set off by one space.

With l free words in a context and rate p (per operation): the number of swaps and of duplicates are
Binomial(l, p) draws (EDA's n = p * l, as a count whose mean is p * l also for short contexts) and each word
is deleted with probability p (EDA's random deletion). Operations run in the order swap, delete, duplicate.
Everything is a pure function of (seed, epoch, example id): a resumed run sees the same contexts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence

import numpy as np

from qajax.errors import ConfigError
from qajax.tasks.squad.data import Example

SCHEDULES = ("constant", "linear")
_WORD = re.compile(r"\S+")


@dataclasses.dataclass(frozen=True)
class EdaConfig:
    schedule: str = "linear"  # constant: end_rate every epoch; linear: start_rate at epoch 0 -> end_rate
    start_rate: float = 0.0
    end_rate: float = 0.1  # report 000: 0.1 (strong), 0.05 (weak), 0 -> 0.1 linear (the best of the three)
    ramp_epochs: int = 1  # linear: end_rate is reached at epoch ramp_epochs - 1 and kept after
    swap: float = 1.0  # each operation's rate = the scheduled rate * this share (0 switches it off)
    delete: float = 1.0
    duplicate: float = 1.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"techniques.eda.schedule={self.schedule!r}: expected one of {SCHEDULES}")
        for name in ("start_rate", "end_rate", "swap", "delete", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"techniques.eda.{name}={value!r}: expected a number in [0, 1]")
        if not isinstance(self.ramp_epochs, int) or self.ramp_epochs < 1:
            raise ConfigError(f"techniques.eda.ramp_epochs={self.ramp_epochs!r}: expected a positive integer")

    def rate(self, epoch: int) -> float:
        """The scheduled rate p of `epoch` (0-based)."""
        if self.schedule == "constant" or self.ramp_epochs == 1:
            return self.end_rate
        progress = min(epoch / (self.ramp_epochs - 1), 1.0)
        return self.start_rate + (self.end_rate - self.start_rate) * progress


def augment_examples(examples: Sequence[Example], config: EdaConfig, *, seed: int, epoch: int) -> list[Example]:
    """Every example with its contexts augmented at the rate of `epoch`; answers moved with their text."""
    p = config.rate(epoch)
    rates = (p * config.swap, p * config.delete, p * config.duplicate)
    if not any(rates):
        return list(examples)
    return [augment_example(e, *rates, rng=example_rng(seed, epoch, e.id)) for e in examples]


def example_rng(seed: int, epoch: int, example_id: str) -> np.random.Generator:
    """One stream per (seed, epoch, example): independent of the order and number of examples."""
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    return np.random.default_rng([seed, epoch, int.from_bytes(digest[:8], "little")])


def augment_example(
    example: Example, swap_rate: float, delete_rate: float, duplicate_rate: float, *, rng: np.random.Generator
) -> Example:
    contexts, answers = list(example.contexts), list(example.answers)
    for j, context in enumerate(example.contexts):
        mine = [i for i, a in enumerate(answers) if a.context_index == j]
        spans = [(answers[i].start, answers[i].start + len(answers[i].text)) for i in mine]
        new_context, new_starts = augment_context(context, spans, swap_rate, delete_rate, duplicate_rate, rng)
        contexts[j] = new_context
        for i, start in zip(mine, new_starts, strict=True):
            answers[i] = dataclasses.replace(answers[i], start=start)
    return dataclasses.replace(example, contexts=tuple(contexts), answers=tuple(answers))


@dataclasses.dataclass
class _Piece:
    separator: str  # the whitespace before the text
    text: str
    block: int  # -1 for a free word; else the protected block's index


def augment_context(
    context: str,
    spans: Sequence[tuple[int, int]],  # answer [start, end) characters
    swap_rate: float,
    delete_rate: float,
    duplicate_rate: float,
    rng: np.random.Generator,
) -> tuple[str, list[int]]:
    """(augmented context, new start of each span); the text of each span is unchanged."""
    blocks = _protected_blocks(context, spans)
    pieces, trailing = _pieces(context, blocks)
    _swap(pieces, swap_rate, rng)  # 1.
    pieces, trailing = _delete(pieces, trailing, delete_rate, rng)  # 2.
    _duplicate(pieces, duplicate_rate, rng)  # 3.
    return _rebuild(pieces, trailing, blocks, spans)  # 4.


def _free(pieces: list[_Piece]) -> list[int]:
    return [i for i, piece in enumerate(pieces) if piece.block < 0]


def _swap(pieces: list[_Piece], rate: float, rng: np.random.Generator) -> None:
    """1. Swap: exchange the texts of two free words, Binomial(l, p) times (in place)."""
    words = _free(pieces)
    if len(words) >= 2:
        for _ in range(rng.binomial(len(words), rate)):
            a, b = rng.choice(words, 2, replace=False)
            pieces[a].text, pieces[b].text = pieces[b].text, pieces[a].text


def _delete(pieces: list[_Piece], trailing: str, rate: float, rng: np.random.Generator) -> tuple[list[_Piece], str]:
    """2. Delete each free word with probability p (with the whitespace before it; the first keeps it)."""
    words = _free(pieces)
    doomed = {w for w, gone in zip(words, rng.random(len(words)) < rate, strict=True) if gone}
    kept = []
    for i, piece in enumerate(pieces):
        if i in doomed:
            if not kept:  # the leading whitespace stays at the front
                next_index = i + 1
                if next_index < len(pieces):
                    pieces[next_index].separator = piece.separator
                else:
                    trailing = piece.separator + trailing
            continue
        kept.append(piece)
    return kept, trailing


def _duplicate(pieces: list[_Piece], rate: float, rng: np.random.Generator) -> None:
    """3. Duplicate: insert a copy of a random free word at a random place, Binomial(l, p) times (in place)."""
    words = [pieces[i].text for i in _free(pieces)]
    if words:
        for _ in range(rng.binomial(len(words), rate)):
            text = words[rng.integers(len(words))]
            at = int(rng.integers(len(pieces) + 1))
            if at < len(pieces):  # takes the separator of the piece it goes before, which gets a space
                pieces.insert(at, _Piece(pieces[at].separator, text, -1))
                pieces[at + 1].separator = " "
            else:
                pieces.append(_Piece(" ", text, -1))


def _rebuild(
    pieces: list[_Piece], trailing: str, blocks: list[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> tuple[str, list[int]]:
    """4. Rebuild, noting where each block starts now: (context, new start of each span)."""
    out, block_starts, length = [], {}, 0
    for piece in pieces:
        out.append(piece.separator)
        length += len(piece.separator)
        if piece.block >= 0:
            block_starts[piece.block] = length
        out.append(piece.text)
        length += len(piece.text)
    out.append(trailing)
    new_starts = []
    for start, _ in spans:
        b = next(k for k, (lo, hi) in enumerate(blocks) if lo <= start <= hi)
        new_starts.append(block_starts[b] + start - blocks[b][0])
    return "".join(out), new_starts


def _protected_blocks(context: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint [lo, hi) character ranges: each span widened to the words it touches, then merged."""
    words = [m.span() for m in _WORD.finditer(context)]
    widened = []
    for lo, hi in spans:
        if not 0 <= lo <= hi <= len(context):
            raise ValueError(f"answer [{lo}, {hi}) runs outside a context of {len(context)} characters")
        touching = [(a, b) for a, b in words if a < hi and b > lo]  # for an empty span: the word around it
        widened.append((min([lo] + [a for a, _ in touching]), max([hi] + [b for _, b in touching])))
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(widened):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _pieces(context: str, blocks: list[tuple[int, int]]) -> tuple[list[_Piece], str]:
    """The context as free words and protected blocks, each with the whitespace before it; and the
    whitespace after the last one."""
    pieces, position = [], 0

    def add_words(lo: int, hi: int):
        nonlocal position
        for m in _WORD.finditer(context, lo, hi):
            pieces.append(_Piece(context[position : m.start()], m.group(), -1))
            position = m.end()

    for k, (lo, hi) in enumerate(blocks):
        add_words(position, lo)
        pieces.append(_Piece(context[position:lo], context[lo:hi], k))
        position = hi
    add_words(position, len(context))
    return pieces, context[position:]
