"""scoring.py: entity counts and scores held equal to seqeval, to the last bit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TAGS, noisy_copy, random_tags
from seqeval.metrics import classification_report, f1_score

from runs import scoring


@pytest.mark.parametrize("seed", range(5))
def test_summed_counts_give_seqeval_micro_f1(seed):
    gold = random_tags(60, seed=seed)
    predicted = noisy_copy(gold, 0.4, seed=seed + 100)
    counts = scoring.sentence_counts(gold, predicted)  # (S, 3)
    assert counts.shape == (60, 3) and (counts[:, 0] <= counts[:, 1:].min(1)).all()
    assert scoring.f1_from_counts(counts) == f1_score(gold, predicted)
    assert scoring.f1_from_counts(counts[:17]) == f1_score(gold[:17], predicted[:17])


def test_counts_of_ill_formed_sequences_follow_conlleval():
    gold = [["B-A", "I-A", "O"], ["I-B", "I-B", "O", "I-A"], ["B-A", "I-B"]]
    predicted = [["I-A", "I-A", "B-A"], ["B-B", "I-B", "O", "O"], ["B-A", "I-A"]]
    # I-X after O or another type starts an entity: gold has A(0-1) | B(0-1), A(3) | A(0), B(1)
    counts = scoring.sentence_counts(gold, predicted)
    assert counts.tolist() == [[1, 2, 1], [1, 1, 2], [0, 1, 2]]
    with pytest.raises(ValueError, match="sentence 0: 3 gold tags but 2 predicted"):
        scoring.sentence_counts([["O"] * 3], [["O"] * 2])


def test_f1_is_zero_without_predicted_or_gold_entities():
    assert scoring.f1_from_counts(np.array([[0, 0, 3]])) == 0.0
    assert scoring.f1_from_counts(np.array([[0, 2, 0]])) == 0.0
    assert scoring.f1_from_counts(np.zeros((4, 3), dtype=int)) == 0.0
    assert scoring.f1_from_counts(np.array([3, 4, 6])) == pytest.approx(0.6)




def seqeval_report(gold, predicted) -> dict:
    """classification_report's dict in `scoring.score`'s shape: the reference."""
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    micro = report["micro avg"]
    return {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"],
            "per_type": {t: {"precision": r["precision"], "recall": r["recall"],
                             "f1": r["f1-score"], "support": int(r["support"])}
                         for t, r in report.items() if not t.endswith(" avg")}}


@pytest.mark.parametrize("seed", range(20))
def test_score_equals_seqeval_classification_report(seed):
    """Random, often ill-formed tags at error rates from none to all, with types that only
    one side has (C only predicted, sometimes D only in gold)."""
    gold = random_tags(40, seed=seed)
    if seed % 2:
        gold[0] = ["B-D", "I-D", "O"] + gold[0]
    predicted = noisy_copy(gold, error=seed / 19, seed=seed + 1)
    predicted[-1] = ["B-C"] * len(predicted[-1])
    assert scoring.score(gold, predicted) == seqeval_report(gold, predicted)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # seqeval's macro average of no types
@pytest.mark.parametrize("gold, predicted", [
    ([["O", "O"]], [["O", "O"]]),  # no entities anywhere
    ([["B-A", "O"]], [["O", "O"]]),  # nothing predicted
    ([["O", "O"]], [["I-B", "O"]]),  # nothing to find
    ([["B-A", "I-A"], ["O"]], [["B-A", "I-A"], ["O"]]),  # perfect
])
def test_score_equals_seqeval_at_the_edges(gold, predicted):
    assert scoring.score(gold, predicted) == seqeval_report(gold, predicted)


def test_per_type_counts_sum_to_the_sentence_counts():
    gold = random_tags(50, seed=7)
    predicted = noisy_copy(gold, 0.3, seed=8)
    by_type = scoring.type_counts(gold, predicted)
    assert list(by_type) == sorted(by_type) and set(by_type) <= {t[2:] for t in TAGS[1:]}
    assert (sum(by_type.values()) == scoring.sentence_counts(gold, predicted).sum(0)).all()


@pytest.mark.parametrize("tag", ["U-A", "L-A", "X", "E-B", "S-A", "B-"])
def test_tags_outside_bio_are_refused_naming_the_sentence_and_the_tag(tag):
    gold = [["O", "B-A"], ["B-A", "I-A", "O"]]
    predicted = [["O", "B-A"], ["B-A", tag, "O"]]
    for score in (scoring.score, scoring.sentence_counts, scoring.type_counts):
        with pytest.raises(ValueError, match=f"sentence 1: predicted tag '{tag}' is not BIO"):
            score(gold, predicted)
    with pytest.raises(ValueError, match=f"sentence 1: gold tag '{tag}' is not BIO"):
        scoring.score(predicted, gold)
