"""significance.py: reading predictions, and the paired bootstrap against a plain loop over
replicates. Dimensions: S sentences, N runs per system."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_error_names_line, noisy_copy, random_tags

import train
from comparison import significance
from corpora import iob
from runs.scoring import sentence_counts

# ------------------------------------------------------------------ reading


def test_reads_what_train_writes(tmp_path):
    gold = random_tags(20, seed=0)
    predicted = noisy_copy(gold, 0.3, seed=1)
    split = [iob.Sentence([f"w{i}" for i in range(len(g))], g) for g in gold]
    path = tmp_path / "predictions.txt"
    path.write_text(train.predictions_text(split, predicted), encoding="utf-8")
    assert significance.read_predictions(path) == (gold, predicted)


@pytest.mark.parametrize("text, line, words", [
    ("a O O\nb B-A\n", 2, "expected 'token gold predicted'"),
    ("a O O\n\nb O X-A\n", 3, "tag 'X-A' is not O"),
    ("a O O\n  O O\n", 2, "expected 'token gold predicted'"),
])
def test_malformed_line_names_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "predictions.txt"
    assert_error_names_line(significance.read_predictions, path, text, line, words)
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="no sentences"):
        significance.read_predictions(path)


# ------------------------------------------------------------------ the paired bootstrap


def system(gold, error: float, seeds) -> list[tuple[list, list]]:
    """(gold, predicted) per run of a system with the given tag error rate."""
    return [(gold, noisy_copy(gold, error, seed)) for seed in seeds]


def counts_of(runs) -> list[np.ndarray]:
    return [sentence_counts(gold, predicted) for gold, predicted in runs]


def test_vectorised_equals_a_loop_over_replicates_with_seqeval():
    gold = random_tags(25, seed=7)
    a, b = system(gold, 0.2, [1, 2, 3]), system(gold, 0.25, [4, 5, 6])
    fast = significance.paired_bootstrap(counts_of(a), counts_of(b), resamples=200, seed=3)
    slow = significance.paired_bootstrap_reference(a, b, resamples=200, seed=3)
    assert fast == slow
    assert 0.05 < fast["p_value"] < 1 and fast["ci_low"] < 0 < fast["delta"] < fast["ci_high"]


def test_an_experiment_identical_to_the_baseline_gets_nothing():
    gold = random_tags(40, seed=8)
    runs = counts_of(system(gold, 0.3, [1, 2, 3]))
    result = significance.paired_bootstrap(runs, [c.copy() for c in runs], resamples=300)
    assert result == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0,
                      "resamples": 300, "pairs": 3}


def test_a_clearly_better_system_is_significant_and_a_worse_one_negative():
    gold = random_tags(200, seed=9)
    better, worse = counts_of(system(gold, 0.05, [1, 2])), counts_of(system(gold, 0.3, [3, 4]))
    up = significance.paired_bootstrap(better, worse, resamples=500, seed=1)
    assert up["delta"] > 0.1 and 0 < up["ci_low"] < up["delta"] < up["ci_high"]
    assert up["p_value"] < 0.05
    down = significance.paired_bootstrap(worse, better, resamples=500, seed=1)
    assert down["delta"] == -up["delta"] and down["ci_high"] < 0 and down["p_value"] < 0.05


def test_same_seed_same_result_other_seed_other_replicates():
    gold = random_tags(50, seed=10)
    a, b = counts_of(system(gold, 0.2, [1, 2])), counts_of(system(gold, 0.25, [3, 4]))
    first = significance.paired_bootstrap(a, b, resamples=200, seed=5)
    assert significance.paired_bootstrap(a, b, resamples=200, seed=5) == first
    other = significance.paired_bootstrap(a, b, resamples=200, seed=6)
    assert other["delta"] == first["delta"] and other["ci_low"] != first["ci_low"]


def test_unequal_numbers_of_runs_use_the_first_pairs():
    gold = random_tags(30, seed=11)
    a, b = counts_of(system(gold, 0.2, [1, 2, 3])), counts_of(system(gold, 0.3, [4, 5]))
    result = significance.paired_bootstrap(a, b, resamples=100)
    assert result["pairs"] == 2
    assert result == significance.paired_bootstrap(a[:2], b, resamples=100)


def test_runs_on_different_test_sets_are_an_error():
    a = counts_of(system(random_tags(30, seed=12), 0.2, [1]))
    with pytest.raises(ValueError, match=r"different numbers of test sentences: \[29, 30\]"):
        significance.paired_bootstrap(a, [a[0][:29]])
    other = counts_of(system(random_tags(30, seed=13), 0.2, [1]))
    with pytest.raises(ValueError, match="gold entities"):
        significance.paired_bootstrap(a, other)
    with pytest.raises(ValueError, match="at least one run"):
        significance.paired_bootstrap(a, [])
    with pytest.raises(ValueError, match="resamples"):
        significance.paired_bootstrap(a, a, resamples=0)


@pytest.mark.parametrize("seed", range(30))
def test_the_interval_excludes_zero_exactly_when_p_is_below_alpha(seed):
    """One rule for both: near the boundary (25 of 1,000 replicates on one side, as the issue's
    lora-r16-crf row had) interpolated percentiles disagreed with p."""
    rng = np.random.default_rng(seed)
    R = int(rng.choice([200, 999, 1000, 1001]))
    on_the_other_side = int(rng.integers(0, 60))
    replicates = np.concatenate([-rng.random(on_the_other_side), rng.random(R - on_the_other_side)])
    if seed % 5 == 0:
        replicates[:3] = 0.0  # ties at zero count on both sides
    low, high, p = significance.interval_and_p(rng.permutation(replicates))
    assert (low > 0 or high < 0) == (p < significance.ALPHA), (R, on_the_other_side, low, p)
    assert low <= high


def test_the_issues_boundary_case():
    replicates = np.concatenate([-np.ones(25), np.ones(975)])  # 2.5% at or below zero
    low, _, p = significance.interval_and_p(replicates)
    assert p == 0.05 and low < 0  # not significant, and the interval says the same
    low, _, p = significance.interval_and_p(np.concatenate([-np.ones(24), np.ones(976)]))
    assert p == 0.048 and low > 0
