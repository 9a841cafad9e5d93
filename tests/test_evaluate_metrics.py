"""Known values for the evaluation metrics (SQuAD answers, reconstruction, perplexity, recall@k)."""

from __future__ import annotations

import math

import pytest

from r3mem.evaluate import metrics as M
from r3mem.evaluate.metrics import (
    best_over_answers,
    bleu,
    corpus_bleu,
    entity_recall,
    exact_match,
    f1,
    normalize_answer,
    number_recall,
    perplexity,
    recall_at_k,
    reconstruction_scores,
    rouge_l,
    string_exact_match,
    subspan_exact_match,
    token_accuracy,
    token_exact_match,
)

NOBEL = (
    "The first Nobel Prize in Physics was awarded in 1901 to Wilhelm Conrad Röntgen, of Germany, "
    "who received 150,782 SEK."
)


# --- QA answers ----------------------------------------------------------------------------


def test_normalize_answer_follows_squad() -> None:
    assert normalize_answer("The  Beatles!") == "beatles"
    assert normalize_answer("an Apple, a day") == "apple day"


def test_exact_match_squad_examples() -> None:
    assert exact_match("Denver Broncos", "Denver Broncos") == 1.0
    assert exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match("Carolina Panthers", "Denver Broncos") == 0.0


def test_f1_partial_overlap() -> None:
    # prediction "denver broncos won" vs gold "denver broncos": P = 2/3, R = 1 -> F1 = 0.8
    assert f1("the Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    assert f1("Santa Clara", "Levi's Stadium") == 0.0
    assert f1("", "") == 1.0
    assert f1("the", "Denver") == 0.0  # normalises to empty prediction


def test_f1_counts_repeated_tokens_once_each() -> None:
    # common = min counts: "a a b" vs "a b b" share one "a" and one "b" -> P = R = 2/3
    assert f1("x x y", "x y y") == pytest.approx(2 / 3)


def test_subspan_exact_match_accepts_wrapped_answer() -> None:
    assert subspan_exact_match("I think it was Wilhelm Conrad Röntgen.", "Wilhelm Conrad Röntgen") == 1.0
    assert subspan_exact_match("Marie Curie", "Wilhelm Conrad Röntgen") == 0.0
    assert subspan_exact_match("anything", "the") == 0.0  # empty after normalisation


def test_best_over_answers_takes_the_best_alias() -> None:
    answers = ["Denver Broncos", "Broncos", "Denver"]
    assert best_over_answers("Broncos", answers, exact_match) == 1.0
    # "broncos team" vs "broncos": P = 1/2, R = 1 -> 2/3, better than 1/2 against "denver broncos"
    assert best_over_answers("the Broncos team", answers, f1) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no gold answers"):
        best_over_answers("x", [], f1)


# --- Reconstruction --------------------------------------------------------------------------


def test_token_exact_match_is_positional() -> None:
    assert token_exact_match("a b c d", "a b x d") == 0.75
    assert token_exact_match("a b c d", "a c d") == 0.25  # a dropped token shifts the rest
    assert token_exact_match("a b c d", "a b c d e f") == 1.0  # extra tokens are not counted
    assert token_exact_match([1, 2, 3, 4], [1, 2, 3, 9]) == 0.75  # LM token ids work too
    assert token_exact_match("", "") == 1.0


def test_token_accuracy_penalises_extra_tokens() -> None:
    assert token_accuracy("a b c d", "a b c d e f") == pytest.approx(4 / 6)
    assert token_accuracy("a b c d", "a b c d") == 1.0
    assert token_accuracy("a b", "a b a b") == 0.5
    assert token_accuracy("", "") == 1.0


def test_string_exact_match_whitespace_option() -> None:
    assert string_exact_match("a  b\nc", "a b c") == 1.0
    assert string_exact_match("a  b\nc", "a b c", collapse_whitespace=False) == 0.0
    assert string_exact_match("a b c", "a b C") == 0.0


def test_bleu_known_values() -> None:
    assert bleu(NOBEL, NOBEL) == pytest.approx(1.0)
    assert bleu("the cat sat on the mat", "dogs bark") == 0.0
    # all n-gram precisions are 1 (smoothed where empty), so BLEU is the brevity penalty e^(1 - 6/2)
    assert bleu("the cat sat on the mat", "the cat") == pytest.approx(math.exp(-2), rel=1e-6)
    assert 0.0 < bleu("the cat sat on the mat", "the cat sat on a mat") < 1.0


def test_corpus_bleu() -> None:
    refs = ["the cat sat on the mat", "dogs bark at night"]
    assert corpus_bleu(refs, refs) == pytest.approx(1.0)
    assert corpus_bleu(refs, ["the cat sat on the mat", "birds sing"]) < 1.0
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        corpus_bleu(refs, ["x"])


def test_rouge_l_known_lcs() -> None:
    # LCS of "a b c d e" and "a x c y e" is "a c e": P = R = 3/5
    assert rouge_l("a b c d e", "a x c y e") == pytest.approx(0.6)
    # LCS "a b d" (3), P = 3/3, R = 3/4 -> F = 6/7
    assert rouge_l("a b c d", "a b d") == pytest.approx(6 / 7)
    assert rouge_l(NOBEL, NOBEL) == pytest.approx(1.0)
    assert rouge_l("Röntgen", "Rontgen") == 0.0  # non-ASCII letters are kept, not dropped


def test_entity_recall() -> None:
    hyp = "The first Nobel Prize in Physics went in 1902 to Wilhelm Röntgen of Germany, who got 150,782 SEK."
    # names: Nobel Prize, Physics, Wilhelm Conrad Röntgen, Germany, SEK -> all but the full name
    assert entity_recall(NOBEL, hyp) == pytest.approx(4 / 5)
    assert entity_recall(NOBEL, NOBEL) == 1.0
    assert entity_recall("We met Paul at home.", "We met Pauline at home.") == 0.0  # whole words only
    assert entity_recall("it rained all day.", "anything") is None


def test_number_recall() -> None:
    assert number_recall(NOBEL, "In 1901 someone got 150,782 SEK.") == 1.0
    assert number_recall(NOBEL, "In 1902 someone got 150,783 SEK.") == 0.0
    assert number_recall("He was 1 year old.", "It cost 1,000 dollars.") == 0.0
    assert number_recall("no numbers here", "42") is None


def test_reconstruction_scores_identical_text() -> None:
    scores = reconstruction_scores(NOBEL, NOBEL)
    assert scores.token_exact_match == scores.token_accuracy == scores.string_exact_match == 1.0
    assert scores.bleu == pytest.approx(1.0) and scores.rouge_l == pytest.approx(1.0)
    assert scores.entity_recall == scores.number_recall == 1.0


# --- Perplexity and retrieval -----------------------------------------------------------------


def test_perplexity() -> None:
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(10 * math.log(2.0), 10) == pytest.approx(2.0)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="n_tokens must be positive"):
        perplexity(1.0, 0)


def test_recall_at_k() -> None:
    assert recall_at_k(["D1:3", "D2:1", "D4:7"], ["D2:1", "D4:7"], k=2) == 0.5
    assert recall_at_k(["D1:3", "D2:1", "D4:7"], ["D2:1", "D4:7"], k=3) == 1.0
    assert recall_at_k([3, 1], [1], k=1) == 0.0
    assert recall_at_k([3, 1], [], k=1) is None
    with pytest.raises(ValueError, match="k must be positive"):
        recall_at_k([1], [1], k=0)


def test_auroc_counts_pairs_and_ties():
    assert M.auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert M.auroc([0.1, 0.9], [True, False]) == 0.0
    assert M.auroc([0.5, 0.5], [True, False]) == 0.5
    assert M.auroc([0.3, 0.9, 0.6, 0.2], [True, True, False, False]) == 0.75  # 3 of 4 pairs ordered right
    assert M.auroc([0.3], [True]) is None


def test_confidence_calibration_separates_sure_from_unsure_slots():
    refs = [[1, 2, 3, 4], [5, 6, 7, 8], [1, 1, 1, 1], [2, 2, 2, 2]]
    produced = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 1], [9, 9, 2, 2]]
    probs = [[0.95] * 4, [0.9] * 4, [0.2, 0.25, 0.3, 0.8], [0.2, 0.3, 0.7, 0.75]]
    c = M.confidence_calibration(refs, produced, probs, bins=4)
    assert c["n_tokens"] == 16 and c["n_slots"] == 4 and c["token_auroc"] == 1.0
    assert c["token_accuracy_most_confident_quartile"] == 1.0
    assert c["token_accuracy_least_confident_quartile"] == 0.25  # slot 3: one of four right
    by_bin = {r["lo"]: r for r in c["reliability"]}
    assert by_bin[0.0]["n_tokens"] == 2 and by_bin[0.0]["accuracy"] == 0.0  # the two 0.2s (0.25 opens bin 1)
    assert by_bin[0.25]["n_tokens"] == 3 and by_bin[0.25]["accuracy"] == 0.0
    assert by_bin[0.75]["n_tokens"] == 10 and by_bin[0.75]["accuracy"] == 1.0  # 0.95, 0.9, 0.8, 0.75
    assert sum(r["n_tokens"] for r in c["reliability"]) == 16
    assert c["expected_calibration_error"] == pytest.approx(
        sum(r["n_tokens"] * abs(r["mean_prob"] - r["accuracy"]) for r in c["reliability"] if r["n_tokens"]) / 16)
    # produced past the reference's end is wrong; a longer reference counts its missing tokens as errors
    short = M.confidence_calibration([[1]], [[1, 2]], [[0.9, 0.8]])
    assert short["mean_token_prob_wrong"] == 0.8 and short["token_accuracy_most_confident_quartile"] == 1.0
