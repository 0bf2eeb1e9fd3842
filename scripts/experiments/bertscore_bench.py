"""BERTScore speed: qajax.metrics.bertscore against the `bert-score` package (0.3.13), side by side, one process.

    nice -n 10 .venv/bin/python scripts/experiments/bertscore_bench.py [--pairs 2000] [--layer 4] [--batch-size 64]

What is measured: the wall-clock time to score N (candidate, reference) answer pairs with the same encoder (the
MiniLM-L6 HF folder of `qajax.pretrained.minilm_dir()`), the same hidden layer and the same batch size, on
this machine's CPU (float32; PyTorch and XLA each use every core). Pairs come from the real SQuAD 2.0 dev
articles in ../shared/data when present (reference: the first gold answer; candidate: that answer with a few
words of context around it, as a sloppy prediction), else from the generated SQuAD data.

- "load": building the scorer (weights from disk; ours also traces the init);
- "first": the first `score` call (ours includes XLA compilation, one per length bucket);
- "warm": the median of `--repeats` further calls: the steady-state cost, the number the ratio uses.
Ours is also split into embedding and host-side greedy matching. The closing lines give the F1 ratio
(bert-score warm / ours warm) and the largest per-pair F1 difference between the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEV_PART = REPO.parent / "shared" / "data" / "squad2" / "dev-part.json"


def answer_pairs(count: int) -> tuple[list[str], list[str], str]:
    """(candidates, references, where they came from): real SQuAD answers if the shared data is there."""
    if DEV_PART.is_file():
        data = json.loads(DEV_PART.read_text(encoding="utf-8"))["data"]
        rows = [
            (p["context"], qa["answers"][0]) for a in data for p in a["paragraphs"] for qa in p["qas"] if qa["answers"]
        ]
        source = str(DEV_PART)
    else:
        from qajax.tasks.squad.generate import generate_examples

        examples = [e for e in generate_examples(count, 0) if e.answers]
        rows = [(e.contexts[0], {"text": e.answers[0].text, "answer_start": e.answers[0].start}) for e in examples]
        source = "qajax.tasks.squad.generate (no ../shared/data)"
    candidates, references = [], []
    for k in range(count):
        context, answer = rows[k % len(rows)]
        start, end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
        # Widen the gold span by 0-3 words on each side: a prediction that is close but not exact.
        before = context[:start].split()[-(k % 4) :] if k % 4 else []
        after = context[end:].split()[: (k // 4) % 4]
        candidates.append(" ".join([*before, answer["text"], *after]))
        references.append(answer["text"])
    return candidates, references, source


def timed(fn, repeats: int):
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - start)
    return result, first, statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--layer", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import bert_score
    import numpy as np
    import torch

    from qajax.metrics.bertscore import BertScorer, _match
    from qajax.pretrained import MINILM_INSTALL, minilm_dir

    folder = minilm_dir()
    if folder is None:
        raise SystemExit(f"MiniLM checkpoint not installed ({MINILM_INSTALL})")
    candidates, references, source = answer_pairs(args.pairs)
    print(
        f"{args.pairs} pairs from {source}; layer {args.layer}, batch {args.batch_size}, torch threads "
        f"{torch.get_num_threads()}"
    )

    start = time.perf_counter()
    ours = BertScorer.from_pretrained(folder, args.layer, batch_size=args.batch_size)
    ours_load = time.perf_counter() - start
    ours_scores, ours_first, ours_warm = timed(lambda: ours.score(candidates, references), args.repeats)

    # Where our time goes: embedding the distinct texts vs matching on the host.
    texts = list(dict.fromkeys([*candidates, *references]))
    ids, special = ours._encode(texts)
    start = time.perf_counter()
    vectors = ours._embed_all(ids)
    embed_s = time.perf_counter() - start
    weights = [ours._weights(i, s, None) for i, s in zip(ids, special, strict=True)]
    index = {t: k for k, t in enumerate(texts)}
    pairs = [(index[c], index[r]) for c, r in zip(candidates, references, strict=True)]
    start = time.perf_counter()
    _match(pairs, vectors, weights)
    match_s = time.perf_counter() - start

    start = time.perf_counter()
    theirs = bert_score.BERTScorer(
        model_type=str(folder), num_layers=args.layer, batch_size=args.batch_size, nthreads=1, device="cpu"
    )
    theirs_load = time.perf_counter() - start
    theirs_scores, theirs_first, theirs_warm = timed(
        lambda: theirs.score(candidates, references, batch_size=args.batch_size), args.repeats
    )

    difference = np.abs(np.asarray(ours_scores.f1) - theirs_scores[2].numpy())
    print(
        f"qajax      load {ours_load:6.2f} s  first {ours_first:6.2f} s  warm {ours_warm:6.2f} s  "
        f"(embedding {embed_s:.2f} s, matching {match_s:.2f} s, {ours.compile_count()} compiled shapes)"
    )
    print(f"bert-score load {theirs_load:6.2f} s  first {theirs_first:6.2f} s  warm {theirs_warm:6.2f} s")
    print(f"ratio bert-score / qajax: warm {theirs_warm / ours_warm:.2f}x, first call {theirs_first / ours_first:.2f}x")
    print(f"per-pair F1 difference: max {difference.max():.2e}, pairs above 1e-4: {(difference > 1e-4).sum()}")


if __name__ == "__main__":
    main()
