"""Model-independent scores for QA answers, text reconstruction, perplexity and retrieval.

Every score is a float in ``[0, 1]`` (BLEU included, although sacrebleu reports 0-100) so tables
can mix them without rescaling. Recall-style scores return ``None`` when the reference has nothing
to recall: averaging a vacuous 1.0 into a table would flatter a model.

QA scores follow the SQuAD v1.1 evaluation script (lower-case, drop punctuation and the articles
a/an/the, collapse whitespace), which is also what HotpotQA, NQ-Open and LoCoMo build on.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from r3mem.hierarchy import entity_spans

__all__ = [
    "normalize_answer",
    "exact_match",
    "f1",
    "subspan_exact_match",
    "best_over_answers",
    "token_exact_match",
    "token_accuracy",
    "string_exact_match",
    "bleu",
    "corpus_bleu",
    "rouge_l",
    "entity_recall",
    "number_recall",
    "ReconstructionScores",
    "reconstruction_scores",
    "perplexity",
    "recall_at_k",
    "auroc",
    "confidence_calibration",
]

Tokens = str | Sequence[str] | Sequence[int]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
# Integers, decimals, thousands separators and clock times: "1,000", "3.14", "12:30", "1908".
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,:]\d+)*(?![\w])")
_WORD = re.compile(r"\w+", re.UNICODE)


# --------------------------------------------------------------------------------------------
# QA answers (SQuAD style)
# --------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD normalisation, so "The Beatles." and "beatles" count as the same answer."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the normalised strings are identical, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(answer))


def f1(prediction: str, answer: str) -> float:
    """Bag-of-tokens F1 after normalisation; partial credit for partly right answers."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(answer).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def subspan_exact_match(prediction: str, answer: str) -> float:
    """1.0 when the normalised answer occurs inside the normalised prediction.

    This is the "best-subspan EM" of Lost-in-the-Middle (NQ-Open): chatty models that wrap the
    answer in a sentence are not penalised. Like the original it is a plain substring test, so
    published numbers stay comparable.
    """
    gold = normalize_answer(answer)
    if not gold:
        return 0.0
    return float(gold in normalize_answer(prediction))


def best_over_answers(prediction: str, answers: Iterable[str], fn: Callable[[str, str], float]) -> float:
    """Maximum of ``fn(prediction, a)`` over all gold answers, as SQuAD and NQ score aliases."""
    scores = [fn(prediction, a) for a in answers]
    if not scores:
        raise ValueError("best_over_answers: no gold answers given")
    return max(scores)


# --------------------------------------------------------------------------------------------
# Reconstruction (reference text vs. text regenerated from memory)
# --------------------------------------------------------------------------------------------


def _as_tokens(x: Tokens) -> list:
    """Whitespace tokens for a string; any other sequence (e.g. LM token ids) is used as is."""
    return x.split() if isinstance(x, str) else list(x)


def token_exact_match(reference: Tokens, hypothesis: Tokens) -> float:
    """Fraction of reference tokens reproduced at the same position.

    Positional on purpose: a reversible memory must give back the text in order, so a dropped
    token shifts everything after it and is punished, unlike in BLEU or F1.
    Strings are split on whitespace; pass LM token-id lists to score at tokenizer level.
    """
    ref, hyp = _as_tokens(reference), _as_tokens(hypothesis)
    if not ref:
        return float(not hyp)
    return sum(r == h for r, h in zip(ref, hyp)) / len(ref)


def token_accuracy(reference: Tokens, hypothesis: Tokens) -> float:
    """Positional matches divided by the longer length, so extra generated tokens also cost.

    ``token_exact_match`` ignores what the model adds after the reference ends; this one does not
    (a hypothesis that repeats the passage twice scores 0.5, not 1.0).
    """
    ref, hyp = _as_tokens(reference), _as_tokens(hypothesis)
    longest = max(len(ref), len(hyp))
    if longest == 0:
        return 1.0
    return sum(r == h for r, h in zip(ref, hyp)) / longest


def string_exact_match(reference: str, hypothesis: str, *, collapse_whitespace: bool = True) -> float:
    """1.0 when the whole strings agree; whitespace runs are collapsed by default.

    Collapsing is the default because detokenisation commonly changes spacing (e.g. double spaces
    after full stops in the NQ passages) without changing the content.
    """
    if collapse_whitespace:
        reference, hypothesis = " ".join(reference.split()), " ".join(hypothesis.split())
    return float(reference == hypothesis)


def bleu(reference: str, hypothesis: str) -> float:
    """Sentence BLEU-4 in [0, 1] via sacrebleu (13a tokenisation, exponential smoothing).

    Smoothing matters for short passages: without it one missing 4-gram match zeroes the score.
    """
    import sacrebleu

    score = sacrebleu.sentence_bleu(hypothesis, [reference]).score / 100.0
    return min(1.0, max(0.0, score))


def corpus_bleu(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus BLEU-4 in [0, 1]: n-gram counts pooled over all pairs, the number papers report."""
    if len(references) != len(hypotheses):
        raise ValueError(f"corpus_bleu: {len(references)} references but {len(hypotheses)} hypotheses")
    import sacrebleu

    score = sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score / 100.0
    return min(1.0, max(0.0, score))


class _WordTokenizer:
    """Unicode word tokenizer for rouge-score, whose default one drops every non-ASCII letter."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


@lru_cache(maxsize=1)
def _rouge_l_scorer():
    """Built once: importing rouge-score pulls in nltk, which takes about a second."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_WordTokenizer())


def rouge_l(reference: str, hypothesis: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of lower-cased word tokens)."""
    return float(_rouge_l_scorer().score(reference, hypothesis)["rougeL"].fmeasure)


def _occurs(needle: str, text: str) -> bool:
    """Whole-word occurrence, so the name "Paul" is not found inside "Pauline"."""
    return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", text) is not None


def _names(text: str) -> set[str]:
    """Entity mentions widened to whole Unicode words.

    ``entity_spans`` matches ASCII letters only, so "Röntgen" would come back as "R"; widening
    the span keeps the name intact and the whole-word check in ``_occurs`` meaningful.
    """
    names = set()
    for span in entity_spans(text):
        start, end = span.start, span.end
        while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
            start -= 1
        while end < len(text) and (text[end].isalnum() or text[end] == "_"):
            end += 1
        names.add(text[start:end])
    return names


def _fraction(found: int, total: int) -> float | None:
    return None if total == 0 else found / total


def entity_recall(reference: str, hypothesis: str) -> float | None:
    """Fraction of distinct capitalised names in the reference found verbatim in the hypothesis.

    Names are what lossy compressors garble first (a plausible but wrong name keeps BLEU high),
    so this is reported separately. ``None`` when the reference has no names.
    """
    names = _names(reference)
    return _fraction(sum(_occurs(name, hypothesis) for name in names), len(names))


def number_recall(reference: str, hypothesis: str) -> float | None:
    """Fraction of distinct numbers in the reference that are also numbers in the hypothesis.

    Numbers are compared whole ("1" is not found in "1,000"); ``None`` when the reference has none.
    """
    numbers = set(_NUMBER.findall(reference))
    return _fraction(len(numbers & set(_NUMBER.findall(hypothesis))), len(numbers))


@dataclass(frozen=True)
class ReconstructionScores:
    """All reconstruction scores for one (reference, hypothesis) pair; recalls may be None."""

    token_exact_match: float
    token_accuracy: float
    string_exact_match: float
    bleu: float
    rouge_l: float
    entity_recall: float | None
    number_recall: float | None


def reconstruction_scores(reference: str, hypothesis: str) -> ReconstructionScores:
    """Every reconstruction score at once, for per-passage result rows."""
    return ReconstructionScores(
        token_exact_match=token_exact_match(reference, hypothesis),
        token_accuracy=token_accuracy(reference, hypothesis),
        string_exact_match=string_exact_match(reference, hypothesis),
        bleu=bleu(reference, hypothesis),
        rouge_l=rouge_l(reference, hypothesis),
        entity_recall=entity_recall(reference, hypothesis),
        number_recall=number_recall(reference, hypothesis),
    )


# --------------------------------------------------------------------------------------------
# Language modelling and retrieval
# --------------------------------------------------------------------------------------------


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood in nats); sums, not means, so segments can be pooled."""
    if n_tokens <= 0:
        raise ValueError(f"perplexity: n_tokens must be positive, got {n_tokens}")
    mean = nll_sum / n_tokens
    return math.exp(mean) if mean < 709.0 else math.inf


def recall_at_k(retrieved: Sequence[Hashable], relevant: Iterable[Hashable], k: int) -> float | None:
    """Fraction of the relevant items (e.g. LoCoMo evidence dia_ids) among the first k retrieved.

    ``None`` when nothing is relevant (LoCoMo has QA items without evidence).
    """
    if k <= 0:
        raise ValueError(f"recall_at_k: k must be positive, got {k}")
    gold = set(relevant)
    if not gold:
        return None
    return len(gold & set(retrieved[:k])) / len(gold)


# --------------------------------------------------------------------------------------------
# Recall confidence: does the decoder's probability predict a correct reconstruction?
# --------------------------------------------------------------------------------------------


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Probability that a random positive scores higher than a random negative (ties count 1/2);
    ``None`` when either class is empty."""
    import bisect

    pos = sorted(s for s, y in zip(scores, labels) if y)
    neg = sorted(s for s, y in zip(scores, labels) if not y)
    if not pos or not neg:
        return None
    wins = 0.0
    for p in pos:
        below, upto = bisect.bisect_left(neg, p), bisect.bisect_right(neg, p)
        wins += below + 0.5 * (upto - below)
    return wins / (len(pos) * len(neg))


def reliability(probs: Sequence[float], correct: Sequence[bool], bins: int = 10
                ) -> tuple[float | None, list[tuple[float, float, int, float | None, float | None]]]:
    """The reliability table of predicted probabilities: for `bins` equal-width bins (1.0 in the last),
    (lo, hi, count, mean probability, fraction correct), and the expected calibration error (the
    count-weighted gap between the two; None without probabilities)."""
    rows = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [(p, ok) for p, ok in zip(probs, correct) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        rows.append((lo, hi, len(members), sum(p for p, _ in members) / len(members) if members else None,
                     sum(float(ok) for _, ok in members) / len(members) if members else None))
    ece = sum(n * abs(mp - acc) for _, _, n, mp, acc in rows if n) / max(1, len(probs))
    return (ece if len(probs) else None), rows


def confidence_calibration(references: Sequence[Sequence[int]], produced: Sequence[Sequence[int]],
                           probs: Sequence[Sequence[float]], bins: int = 10) -> dict:
    """How well per-token probabilities of reconstructions predict correctness.

    A produced token is correct when it equals the reference token at its position. Reports the
    AUROC of token probability for correctness; token accuracy of the least and most confident
    quartile of slots (slots ranked by the geometric mean of their token probabilities); and a
    reliability table: for `bins` equal-width probability bins, the tokens' mean probability and
    their accuracy (a calibrated decoder has the two equal).
    """
    flat_p, flat_ok, slots = [], [], []
    for ref, ids, ps in zip(references, produced, probs, strict=True):
        ok = [i < len(ref) and t == ref[i] for i, t in enumerate(ids)]
        flat_p += list(ps)
        flat_ok += ok
        geo = math.exp(sum(math.log(max(p, 1e-12)) for p in ps) / len(ps)) if ps else 0.0
        slots.append((geo, sum(ok[: len(ref)]) / len(ref) if ref else 0.0))
    slots.sort()
    q = max(1, len(slots) // 4)

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    ece, rows = reliability(flat_p, flat_ok, bins)
    table = [{"lo": lo, "hi": hi, "n_tokens": n, "mean_prob": mp, "accuracy": acc} for lo, hi, n, mp, acc in rows]
    return {"token_auroc": auroc(flat_p, flat_ok), "n_tokens": len(flat_p), "n_slots": len(slots),
            "token_accuracy_least_confident_quartile": mean([a for _, a in slots[:q]]) if slots else None,
            "token_accuracy_most_confident_quartile": mean([a for _, a in slots[-q:]]) if slots else None,
            "mean_token_prob_correct": mean([p for p, c in zip(flat_p, flat_ok) if c]),
            "mean_token_prob_wrong": mean([p for p, c in zip(flat_p, flat_ok) if not c]),
            "expected_calibration_error": ece, "reliability": table}
