"""Tiny multitask data, tokenizer and config for tests: files in the minBERT format (written with the csv
module, quoted fields included), a WordPiece vocabulary over their words, a random 2-layer encoder."""

import csv
from pathlib import Path

import ml_collections
import numpy as np

from qajax import config as config_lib

WORDS = [f"w{i}" for i in range(20)] + ["good", "bad", "fine", "awful", "great"]
SENTIMENT = ["awful", "bad", "fine", "good", "great"]  # the label word of each SST class


def write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for i, row in enumerate(rows):
            writer.writerow([i, *row])


def make_files(folder: Path, num_examples: int = 48, seed: int = 0) -> Path:
    """SST: a sentence holds its class's word. Quora: duplicates share their words. STS: the score is the
    number of shared words. Learnable by a tiny model, so that the loss visibly falls."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sentence = lambda n: " ".join(rng.choice(WORDS[:20], n))
    for split, n in (("train", num_examples), ("dev", num_examples // 2)):
        labels = rng.integers(0, 5, n)
        rows = [[f"s{split}{i}", f"{sentence(3)} {SENTIMENT[y]} {sentence(2)}", y] for i, y in enumerate(labels)]
        write_tsv(folder / f"ids-sst-{split}.csv", ["", "id", "sentence", "sentiment"], rows)
        rows = []
        for i in range(n):
            a = sentence(5)
            duplicate = int(rng.integers(0, 2))
            rows.append([f"q{split}{i}", a, a if duplicate else sentence(5), f"{duplicate}.0"])
        write_tsv(folder / f"quora-{split}.csv", ["", "id", "sentence1", "sentence2", "is_duplicate"], rows)
        rows = []
        for i in range(n):
            a = rng.choice(WORDS[:20], 5)
            shared = int(rng.integers(0, 6))
            b = list(a[:shared]) + list(rng.choice(WORDS[:20], 5 - shared))
            rows.append([f"t{split}{i}", " ".join(a), " ".join(b), float(shared)])
        write_tsv(folder / f"sts-{split}.csv", ["", "id", "sentence1", "sentence2", "similarity"], rows)
    return folder


def make_tokenizer(folder: Path) -> Path:
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(folder))
    return folder


def tiny_config(tmp_path: Path, *overrides: str) -> ml_collections.ConfigDict:
    data = make_files(tmp_path / "data")
    tokenizer = make_tokenizer(tmp_path / "tokenizer")
    config = config_lib.load("configs/multitask.py")
    with config.unlocked():
        config.model = ml_collections.ConfigDict(
            dict(
                pretrained="",
                family="bert",
                vocab_size=40,
                hidden_size=32,
                num_layers=2,
                num_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
                hidden_dropout=0.0,
                attention_dropout=0.0,
            )
        )
    base = [
        f"task.data_dir={data}",
        f"task.tokenizer={tokenizer}",
        "task.max_seq_length=16",
        "task.head_dropout=0.0",
        "train.steps=24",
        "train.epochs=0.0",
        "train.batch_size=8",
        "train.eval_batch_size=16",
        "train.log_every=4",
        "train.eval_every=0",
        "optimizer.learning_rate=3e-3",
        "optimizer.warmup_ratio=0.0",
        "checkpoint.every_steps=12",
        "checkpoint.best_metric=",
        "log.progress=false",
        "log.tensorboard=false",
    ]
    return config_lib.apply_overrides(config, base + list(overrides))
