"""Is one system's entity F1 really higher than another's? A paired bootstrap over test sentences.

Implements the paired bootstrap (Efron & Tibshirani 1993, "An Introduction to the Bootstrap"),
as used for significance in NLP by Berg-Kirkpatrick, Burkett & Klein (2012), "An Empirical
Investigation of Statistical Significance in NLP". Both systems tagged the same S test
sentences; a replicate draws S sentences with replacement and scores both systems on that same
draw, so the sentence-to-sentence variation they share cancels out of their difference.

1. `read_predictions` reads a run's `predictions.txt` (`token gold predicted` per line, a blank
   line between sentences, as train.py writes it).
2. `scoring.sentence_counts` reduces a run to (true positives, predicted entities, gold
   entities) per sentence, (S, 3), with the entities train.py scores. An entity never crosses a
   sentence, so the micro F1 of any set of sentences is the F1 of the sum of their rows: a
   replicate costs a weighted sum, not a rescoring.
3. `paired_bootstrap` takes several runs (seeds) per system, paired in order. The difference is
   mean F1 over system A's runs minus mean F1 over B's; every replicate applies one draw of
   sentences to every run of both sides. It returns the difference on the full test set, a
   95% interval and a two-sided p-value from the replicates' differences by one rule
   (`interval_and_p`): p = min(1, 2 min(share of replicates <= 0, share >= 0)), and the
   interval runs from the m-th smallest to the m-th largest replicate, m = ceil(0.025 R), so
   that it excludes zero exactly when p < 0.05 (percentiles that interpolate between
   replicates can exclude zero while p = 0.05).
   `paired_bootstrap_reference` is the same test written plainly (a loop over replicates,
   seqeval on the resampled sentences); the tests hold the two equal.

Left out: resampling the seeds (the interval covers the choice of test sentences only; the
seeds' spread is the table's ± std), the approximate randomisation test, per-type and macro F1,
corrections for testing many experiments against one baseline, strict (IOB2-scheme) entity
extraction.

Dimensions: S test sentences, R bootstrap replicates, N runs (seeds) per system.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from seqeval.metrics import f1_score

from corpora.schemes import check_tag
from runs.scoring import micro_f1


def read_predictions(path: str | Path) -> tuple[list[list[str]], list[list[str]]]:
    """(gold, predicted) tags per sentence of a `predictions.txt`: `token gold predicted` per
    line, a blank line between sentences. The last two space-separated fields are the tags;
    what comes before them is the token."""
    path = Path(path)
    gold: list[list[str]] = []
    predicted: list[list[str]] = []
    sentence_gold: list[str] = []
    sentence_predicted: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if sentence_gold:
                    gold.append(sentence_gold)
                    predicted.append(sentence_predicted)
                    sentence_gold, sentence_predicted = [], []
                continue
            fields = line.rsplit(" ", 2)
            if len(fields) != 3 or not fields[0].strip():
                raise ValueError(f"{path}:{number}: expected 'token gold predicted', "
                                 f"found {line!r}")
            for tag in fields[1:]:
                if not check_tag(tag):
                    raise ValueError(f"{path}:{number}: tag {tag!r} is not O, B-<type> or "
                                     f"I-<type>")
            sentence_gold.append(fields[1])
            sentence_predicted.append(fields[2])
    if sentence_gold:
        gold.append(sentence_gold)
        predicted.append(sentence_predicted)
    if not gold:
        raise ValueError(f"{path}: no sentences")
    return gold, predicted


ALPHA = 0.05  # the interval is 1 - ALPHA, and a difference with p < ALPHA is marked


def interval_and_p(replicates: Sequence[float]) -> tuple[float, float, float]:
    """(low, high, p) of bootstrap replicates of a difference, by one rule: p is twice the
    smaller share of replicates on either side of zero (zeros count on both), and the interval
    is the m-th smallest and m-th largest replicate, m = ceil(ALPHA / 2 * R). Then the interval
    excludes zero if and only if p < ALPHA:

        low > 0  <=>  fewer than m replicates are <= 0  <=>  2 (that count) / R < ALPHA.
    """
    ordered = np.sort(np.asarray(replicates, dtype=np.float64))
    R = len(ordered)
    m = max(1, math.ceil(ALPHA / 2 * R))
    below, above = np.count_nonzero(ordered <= 0), np.count_nonzero(ordered >= 0)
    return float(ordered[m - 1]), float(ordered[R - m]), float(min(1.0, 2 * min(below, above) / R))


def bootstrap_indices(sentences: int, resamples: int, seed: int) -> np.ndarray:
    """(R, S) sentence indices, each row one draw of S with replacement; seeded, reproducible."""
    return np.random.default_rng(seed).integers(0, sentences, size=(resamples, sentences))


def _paired_runs(runs_a: Sequence, runs_b: Sequence, resamples: int, sentences) -> int:
    """Check the inputs of a paired bootstrap; return the number of pairs of runs."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not runs_a or not runs_b:
        raise ValueError(f"need at least one run per system, got {len(runs_a)} and {len(runs_b)}")
    lengths = sorted({sentences(run) for run in (*runs_a, *runs_b)})
    if len(lengths) > 1:
        raise ValueError(f"runs cover different numbers of test sentences: {lengths}; a paired "
                         f"test needs the same test set on both sides")
    return min(len(runs_a), len(runs_b))


def paired_bootstrap(runs_a: Sequence[np.ndarray], runs_b: Sequence[np.ndarray],
                     resamples: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap of mean F1(A) - mean F1(B) over test sentences.

    runs_a, runs_b: per run (seed), its `sentence_counts` (S, 3) on the same S test sentences.
    Runs are paired in order (A's i-th with B's i-th); with unequal numbers of runs only the
    first min(len(runs_a), len(runs_b)) of each side take part ("pairs" in the result). Every
    replicate draws one resample of the S sentences and applies it to all runs of both sides.
    Returns {"delta", "ci_low", "ci_high", "p_value", "resamples", "pairs"}: delta on the full
    test set, and the 95% interval and two-sided p-value of the replicates' deltas by
    `interval_and_p`. Memory: two (R, S) arrays.
    """
    pairs = _paired_runs(runs_a, runs_b, resamples, lambda run: np.shape(run)[0])
    a = np.stack([np.asarray(run) for run in runs_a[:pairs]]).astype(np.float64)  # (N, S, 3)
    b = np.stack([np.asarray(run) for run in runs_b[:pairs]]).astype(np.float64)  # (N, S, 3)
    if a.shape[2:] != (3,):
        raise ValueError(f"counts must be (S, 3) per run, got {a.shape[1:]}")
    if (a[:, :, 2] != a[:1, :, 2]).any() or (b[:, :, 2] != a[:1, :, 2]).any():
        raise ValueError("runs disagree on the gold entities per sentence: not the same test set")
    R, S = resamples, a.shape[1]
    index = bootstrap_indices(S, R, seed)  # (R, S)
    # weights[r, s]: how often replicate r drew sentence s (counts as floats: sums stay exact)
    weights = np.bincount((index + S * np.arange(R)[:, None]).ravel(), minlength=R * S)
    weights = weights.reshape(R, S).astype(np.float64)  # (R, S)
    delta = micro_f1(a.sum(1)).mean(0) - micro_f1(b.sum(1)).mean(0)
    totals_a, totals_b = weights @ a, weights @ b  # (N, R, 3): each run's counts per replicate
    replicates = micro_f1(totals_a).mean(0) - micro_f1(totals_b).mean(0)  # (R,)
    low, high, p = interval_and_p(replicates)
    return {"delta": float(delta), "ci_low": low, "ci_high": high, "p_value": p,
            "resamples": R, "pairs": pairs}


def paired_bootstrap_reference(runs_a: Sequence[tuple[list, list]],
                               runs_b: Sequence[tuple[list, list]], resamples: int = 1000,
                               seed: int = 0) -> dict:
    """`paired_bootstrap` written plainly, for the tests: runs are (gold, predicted) tag lists as
    `read_predictions` returns them, and every replicate rescores the resampled sentences of
    every run with seqeval. Slow: R x 2N seqeval calls."""
    pairs = _paired_runs(runs_a, runs_b, resamples, lambda run: len(run[0]))
    runs_a, runs_b = runs_a[:pairs], runs_b[:pairs]

    def mean_f1(runs, rows) -> float:
        return np.mean([f1_score([gold[i] for i in rows], [predicted[i] for i in rows],
                                 zero_division=0) for gold, predicted in runs])

    S = len(runs_a[0][0])
    delta = mean_f1(runs_a, range(S)) - mean_f1(runs_b, range(S))
    replicates = []
    for rows in bootstrap_indices(S, resamples, seed):
        replicates.append(mean_f1(runs_a, rows) - mean_f1(runs_b, rows))
    ordered = sorted(replicates)
    m = math.ceil(ALPHA / 2 * resamples)  # the m-th from each end, written out
    below = sum(d <= 0 for d in replicates) / resamples
    above = sum(d >= 0 for d in replicates) / resamples
    return {"delta": float(delta), "ci_low": float(ordered[m - 1]),
            "ci_high": float(ordered[resamples - m]), "p_value": min(1.0, 2 * min(below, above)),
            "resamples": resamples, "pairs": pairs}
