"""BERTScore against the `bert-score` package (0.3.13) on the real MiniLM folder, the same layer, pair by pair.

Expected numbers come from `bert_score.score` (its own tokenizer, PyTorch model, IDF and rescaling code); the
SQuAD 2.0 rules (empty answers, several gold answers) are checked against bert-score's scores of the pairs
that remain plus the 1/0 outcomes the rules define.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

import qajax.hf
from qajax import cli
from qajax.errors import CheckpointError, ConfigError, DataError
from qajax.metrics.bertscore import BertScorer, read_baseline, score_answers
from qajax.pretrained import MINILM_INSTALL, minilm_dir

MINILM = minilm_dir()
needs_minilm = pytest.mark.skipif(MINILM is None, reason=f"MiniLM checkpoint not installed ({MINILM_INSTALL})")
LAYER = 4  # not the last one, so that picking the layer is tested too
TOLERANCE = 1e-4

LONG_ANSWER = (  # ~90 word pieces: far longer than a SQuAD answer, in the 128 bucket
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
    "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under their "
    "leader Rollo, agreed to swear fealty to King Charles III of West Francia; in 1066 William the Conqueror "
    "crossed the Channel."
)

# (candidate, reference): short spans, punctuation, numbers, unicode, long answers, near misses and unrelated text.
PAIRS = [
    ("Paris", "Paris, France"),
    ("the Eiffel Tower", "Eiffel Tower"),
    ("in 1832", "1832"),
    ("Goethe", "Johann Wolfgang von Goethe"),
    ("Denmark, Iceland and Norway", "Denmark, Iceland, and Norway"),
    ("10th and 11th centuries", "the 10th and 11th centuries"),
    ("William the Conqueror", "William"),
    ("Rollo", "King Charles III"),
    ("100 °C", "100 degrees Celsius"),
    ("212 °F", "212 degrees Fahrenheit"),
    ("$1.5 billion", "1.5 billion dollars"),
    ("3.14159", "pi"),
    ("50%", "half"),
    ("Zürich", "Zurich"),
    ("São Paulo", "Sao Paulo, Brazil"),
    ("naïve café", "naive cafe"),
    ("Mötley Crüe", "Motley Crue"),
    ("東京", "Tokyo"),
    ("東京タワー", "東京"),
    ("北京大学", "Peking University"),
    ("Москва", "Moscow"),
    ("Ελλάδα", "Greece"),
    ("the 🎉 party", "party"),
    ("e\u0301cole", "école"),
    ("non\u00a0breaking space", "non breaking space"),
    ("tabs\tand\nnewlines", "tabs and newlines"),
    ("“quoted” — dashes", '"quoted" - dashes'),
    ("it’s", "it's"),
    ("½ cup", "half a cup"),
    ("the ﬁrst", "the first"),
    ("!!!", "..."),
    ("(a) [b] {c}", "a b c"),
    ("U.S.A.", "USA"),
    ("e-mail", "email"),
    ("COVID-19", "the coronavirus disease 2019"),
    ("Dr. Martin Luther King Jr.", "Martin Luther King"),
    ("Normandy", LONG_ANSWER),
    (LONG_ANSWER, "Normandy, a region in France"),
    (LONG_ANSWER, LONG_ANSWER.replace("Normans", "Vikings")),
    (LONG_ANSWER[:300], LONG_ANSWER),
    ("a region in France", "a region in northern France"),
    ("Norse raiders", "Viking raiders and pirates"),
    ("King Charles III of West Francia", "Charles the Simple"),
    ("1066", "in 1066"),
    ("the Channel", "English Channel"),
    ("photosynthesis", "the process by which plants make food from light"),
    ("mitochondria", "the powerhouse of the cell"),
    ("Isaac Newton", "Newton"),
    ("Albert Einstein", "Marie Curie"),
    ("red", "blue"),
    ("yes", "no"),
    ("the", "a"),
    ("New York City", "NYC"),
    ("UNESCO World Heritage Site", "a World Heritage Site"),
    ("over 2,000 years ago", "more than two thousand years ago"),
    ("Paris", "Paris"),
    ("Paris", "PARIS"),
    ("  padded with spaces  ", "padded with spaces"),
    ("DNA", "deoxyribonucleic acid"),
    ("the quick brown fox jumps over the lazy dog", "a fast brown fox leaped over a lazy dog"),
    ("Schrödinger's cat", "Schrodinger cat"),
    ("Ångström", "angstrom"),
]
CANDIDATES = [c for c, _ in PAIRS]
REFERENCES = [r for _, r in PAIRS]


def _reference(candidates, references, **options):
    """bert-score's (P, R, F1) as numpy arrays, on the same folder and layer, on the CPU."""
    bert_score = pytest.importorskip("bert_score", reason="bert-score not installed (pip install bert-score==0.3.13)")
    scores = bert_score.score(
        list(candidates),
        list(references),
        model_type=str(MINILM),
        num_layers=options.pop("num_layers", LAYER),
        batch_size=options.pop("batch_size", 64),
        nthreads=0,
        device="cpu",
        **options,
    )
    return np.stack([s.numpy() for s in scores], axis=1)


@pytest.fixture(scope="module")
def encoder():
    """MiniLM loaded once: (model, params, spec), shared by the scorers of every layer."""
    if MINILM is None:
        pytest.skip(f"MiniLM checkpoint not installed ({MINILM_INSTALL})")
    return qajax.hf.from_pretrained(MINILM, head="encoder")


@pytest.fixture(scope="module")
def scorer(encoder):
    return BertScorer(*encoder, LAYER)


def _ours(scores):
    return np.stack(scores, axis=1)


# --- parity with bert-score ---


@needs_minilm
def test_per_pair_scores_match_bert_score(scorer):
    assert len(PAIRS) >= 50
    expected = _reference(CANDIDATES, REFERENCES)
    got = _ours(scorer.score(CANDIDATES, REFERENCES))
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
    assert expected[:, 2].std() > 0.05  # the pairs span a real range of similarity


@needs_minilm
def test_idf_weights_from_the_references_match_bert_score(scorer):
    expected = _reference(CANDIDATES, REFERENCES, idf=True)
    got = _ours(scorer.score(CANDIDATES, REFERENCES, idf=scorer.idf(REFERENCES)))
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
    # IDF changes the numbers, so the comparison above is not the unweighted one again.
    assert np.abs(got - _ours(scorer.score(CANDIDATES, REFERENCES))).max() > 1e-3


@needs_minilm
def test_baseline_rescaling_matches_bert_score(scorer, tmp_path):
    baseline_file = tmp_path / "baseline.tsv"  # bert-score's layout: one row per layer, 0 = embeddings
    rows = [
        f"{layer},{0.30 + 0.05 * layer:.4f},{0.31 + 0.05 * layer:.4f},{0.32 + 0.05 * layer:.4f}" for layer in range(7)
    ]
    baseline_file.write_text("LAYER,P,R,F\n" + "\n".join(rows) + "\n")
    baseline = read_baseline(baseline_file, LAYER)
    assert baseline == pytest.approx((0.50, 0.51, 0.52))
    expected = _reference(
        CANDIDATES, REFERENCES, rescale_with_baseline=True, lang="en", baseline_path=str(baseline_file)
    )
    got = _ours(scorer.score(CANDIDATES, REFERENCES, baseline=baseline))
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


@needs_minilm
def test_several_references_take_the_maximum_as_bert_score_does(scorer):
    groups = [[REFERENCES[k], REFERENCES[(k + 7) % len(PAIRS)], REFERENCES[(k + 3) % len(PAIRS)]] for k in range(20)]
    candidates = CANDIDATES[:20]
    expected = _reference(candidates, groups)
    got = _ours(scorer.score(candidates, groups))
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
    # The maximum is taken per score: P, R and F1 may each come from a different reference.
    singles = np.stack([_ours(scorer.score(candidates, [g[i] for g in groups])) for i in range(3)])
    np.testing.assert_allclose(got, singles.max(axis=0), atol=1e-6)


@needs_minilm
@pytest.mark.slow
def test_last_layer_matches_bert_score_without_its_padding_artifact(encoder):
    """At MiniLM's last layer some token's best cosine is negative ("Rollo" against "King Charles III"). bert-score
    pads the pairs of a batch and lets a padded position offer a cosine of 0, so in a batch its score depends on
    its batch mates; with one pair per batch it has no padding, and that is the score defined here."""
    last = BertScorer(*encoder)
    assert (last.layer, last.num_layers) == (6, 6)
    candidates, references = CANDIDATES[:12], REFERENCES[:12]
    got = _ours(last.score(candidates, references))
    np.testing.assert_allclose(
        got, _reference(candidates, references, num_layers=6, batch_size=1), atol=TOLERANCE, rtol=0
    )
    batched = _reference(candidates, references, num_layers=6)
    differs = np.abs(got - batched).max(axis=1) > TOLERANCE
    assert differs.tolist() == [k == 7 for k in range(12)]  # only "Rollo", where the padding's 0 wins
    assert (batched[differs] >= got[differs] - 1e-6).all()


@needs_minilm
@pytest.mark.slow
def test_text_beyond_the_model_length_is_truncated_as_bert_score_does(scorer):
    very_long = " ".join([LONG_ANSWER] * 6)  # ~700 word pieces: cut at 512 on both sides
    candidates, references = [very_long, "Normandy", very_long[:2000]], ["Normandy", very_long, very_long]
    expected = _reference(candidates, references)
    np.testing.assert_allclose(_ours(scorer.score(candidates, references)), expected, atol=TOLERANCE, rtol=0)


@needs_minilm
def test_an_empty_side_scores_zero_as_in_bert_score(scorer):
    candidates, references = ["", "Paris", "   ", "Paris"], ["Paris", "", "Paris", "Paris"]
    got = _ours(scorer.score(candidates, references))
    np.testing.assert_array_equal(got[:3], 0.0)
    np.testing.assert_allclose(got[3], 1.0, atol=1e-5)


# --- SQuAD 2.0 rules ---


@needs_minilm
def test_squad_empty_answers_and_several_gold_answers(scorer):
    predictions = ["", "", "Paris", "  ", "Paris", "Paris", "Goethe"]
    golds = [[], [""], [], ["Paris"], ["", "Paris, France"], ["Paris, France", "France", "the capital"], ["Goethe"]]
    got = _ours(score_answers(scorer, predictions, golds))
    np.testing.assert_array_equal(got[0], 1.0)  # no answer expected, none given
    np.testing.assert_array_equal(got[1], 1.0)  # an empty gold answer is "no answer" too
    np.testing.assert_array_equal(got[2], 0.0)  # an answer where none is expected
    np.testing.assert_array_equal(got[3], 0.0)  # whitespace is no answer, where one is expected
    pairs = [("Paris", "Paris, France"), ("Paris", "Paris, France"), ("Paris", "France"), ("Paris", "the capital")]
    reference = _reference([c for c, _ in pairs], [r for _, r in pairs])
    np.testing.assert_allclose(got[4], reference[0], atol=TOLERANCE)  # the empty gold answer is dropped
    np.testing.assert_allclose(got[5], reference[1:].max(axis=0), atol=TOLERANCE)  # max over the gold answers
    assert got[6] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)

    # A baseline rescales similarities, not the no-answer outcomes.
    rescaled = _ours(score_answers(scorer, predictions, golds, baseline=(0.5, 0.5, 0.5)))
    np.testing.assert_array_equal(rescaled[:4], got[:4])
    np.testing.assert_allclose(rescaled[5], (got[5] - 0.5) / 0.5, atol=1e-6)


def _squad_file(path, questions):
    qas = [
        {
            "id": qid,
            "question": "?",
            "answers": [{"text": t, "answer_start": 0} for t in texts],
            "is_impossible": not texts,
        }
        for qid, texts in questions
    ]
    path.write_text(
        json.dumps({"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "c", "qas": qas}]}]})
    )
    return path


def _run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
    return status, out.getvalue(), err.getvalue()


QUESTIONS = [
    ("q1", ["Paris", "Paris, France"]),
    ("q2", ["Johann Wolfgang von Goethe", "Goethe"]),
    ("q3", ["1832"]),
    ("q4", []),
    ("q5", []),
]
PREDICTIONS = {"q1": "in Paris", "q2": "Goethe's Faust", "q3": "", "q4": "", "q5": "Zürich"}


@needs_minilm
@pytest.mark.parametrize("idf", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_squad_eval_cli_prints_bertscore_with_hasans_noans(tmp_path, idf):
    bert_score = pytest.importorskip("bert_score")
    data = _squad_file(tmp_path / "dev.json", QUESTIONS)
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(PREDICTIONS))
    argv = ["squad-eval", str(data), str(predictions), "--bertscore", str(MINILM), "--bertscore-layer", str(LAYER)]
    status, out, err = _run_cli(argv + (["--idf"] if idf else []))
    assert status == 0, err
    scores = json.loads(out)
    for prefix in ("", "HasAns_", "NoAns_"):
        for key in ("precision", "recall", "f1"):
            assert f"{prefix}bertscore_{key}" in scores
    assert {"exact", "f1", "HasAns_f1", "NoAns_f1"} <= set(scores)  # the official keys stay

    # Expected: bert-score on the answered HasAns questions (q1, q2), 0 for q3 (no answer given where one is
    # expected), 1 for q4 (no answer, rightly), 0 for q5 (an answer where none is expected).
    options = {}
    if idf:
        tokenizer = bert_score.utils.get_tokenizer(str(MINILM))
        golds = [t for _, texts in QUESTIONS for t in texts]
        options["idf"] = bert_score.utils.get_idf_dict(golds, tokenizer, nthreads=0)
    answered = _reference([PREDICTIONS["q1"], PREDICTIONS["q2"]], [QUESTIONS[0][1], QUESTIONS[1][1]], **options)
    has_answer = np.concatenate([answered, np.zeros((1, 3))])
    no_answer = np.array([[1.0] * 3, [0.0] * 3])
    for prefix, rows in (("HasAns_", has_answer), ("NoAns_", no_answer), ("", np.concatenate([has_answer, no_answer]))):
        got = [scores[f"{prefix}bertscore_{key}"] for key in ("precision", "recall", "f1")]
        np.testing.assert_allclose(got, 100 * rows.mean(axis=0), atol=100 * TOLERANCE)


@needs_minilm
@pytest.mark.slow
def test_eval_cli_reports_bertscore_of_its_own_predictions(tmp_path):
    """`qajax eval --bertscore`: the keys equal squad-eval's on the prediction files it writes (same na_probs)."""
    context = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France."
    qas = [
        {
            "id": "a",
            "question": "Where is the tower?",
            "answers": [{"text": "Paris, France", "answer_start": context.index("Paris")}],
        },
        {
            "id": "b",
            "question": "What is it made of?",
            "answers": [{"text": "wrought-iron", "answer_start": context.index("wrought")}],
        },
        {"id": "c", "question": "Who painted it?", "answers": [], "is_impossible": True},
    ]
    data = tmp_path / "dev.json"
    data.write_text(
        json.dumps({"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]})
    )
    options = ["--bertscore", str(MINILM), "--bertscore-layer", "2"]
    window = ["--max-seq-length", "64", "--doc-stride", "16", "--max-query-length", "16"]
    status, out, err = _run_cli(["eval", str(MINILM), str(data), "--out", str(tmp_path / "out"), *window, *options])
    assert status == 0, err
    scores = json.loads(out)
    assert {"bertscore_f1", "HasAns_bertscore_f1", "NoAns_bertscore_f1", "exact"} <= set(scores)
    files = [str(tmp_path / "out" / "predictions.json"), "--na-prob", str(tmp_path / "out" / "null_odds.json")]
    status, out, err = _run_cli(["squad-eval", str(data), *files, *options])
    assert status == 0, err
    assert json.loads(out) == pytest.approx(scores)


# --- compile once per bucket ---


@needs_minilm
def test_a_long_list_compiles_once_per_bucket(encoder):
    small = BertScorer(*encoder, 1, batch_size=8)
    words = LONG_ANSWER.split()
    texts = [" ".join(words[:k]) for k in range(1, 49)]  # 48 lengths, from 3 to ~60 tokens
    lengths = [len(ids) for ids in small._encode(texts)[0]]
    buckets = {16 if n <= 16 else 32 if n <= 32 else 64 for n in lengths}
    small.score(texts, texts[::-1])
    compiled = small.compile_count()
    assert len(buckets) == 3 and compiled <= 2 * len(buckets)  # a full batch and a last batch per bucket at most
    shifted = [" ".join(words[3 : 3 + k]) for k in range(1, 45)]  # other exact lengths, in the same buckets
    small.score(shifted, shifted[::-1])
    assert small.compile_count() <= 2 * len(buckets) + 2  # at most new last-batch sizes, never a new length


# --- errors ---


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        BertScorer.from_pretrained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no config.json"):
        BertScorer.from_pretrained(tmp_path)


@needs_minilm
def test_the_default_layer_is_the_last(encoder):
    assert (BertScorer(*encoder).layer, BertScorer(*encoder, 0).layer) == (6, 0)


@needs_minilm
@pytest.mark.parametrize("layer", [-1, 7])
def test_a_layer_out_of_range_names_the_valid_range(encoder, layer):
    with pytest.raises(ConfigError, match=r"layer -?\d+ is out of range .* expected 0 \(embeddings\) to 6"):
        BertScorer(*encoder, layer)


def test_cli_errors_are_clear(tmp_path):
    data = _squad_file(tmp_path / "dev.json", QUESTIONS)
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(PREDICTIONS))
    status, _, err = _run_cli(["squad-eval", str(data), str(predictions), "--bertscore", str(tmp_path / "nothing")])
    assert status == 2 and "not a folder" in err
    status, _, err = _run_cli(["squad-eval", str(data), str(predictions), "--idf"])
    assert status == 2 and "need --bertscore MODEL_DIR" in err


def test_baseline_file_errors(tmp_path):
    path = tmp_path / "baseline.tsv"
    path.write_text("LAYER,P,R,F\n0,0.1,0.2,0.3\n")
    assert read_baseline(path, 0) == (0.1, 0.2, 0.3)
    with pytest.raises(DataError, match="no row for layer 3"):
        read_baseline(path, 3)
    path.write_text("LAYER,P,R,F\n0,0.1,x,0.3\n")
    with pytest.raises(DataError, match="line 2"):
        read_baseline(path, 0)
    with pytest.raises(DataError, match="cannot read"):
        read_baseline(tmp_path / "absent.tsv", 0)
