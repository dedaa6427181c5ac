"""Entity-level precision, recall and F1 of BIO tags, as seqeval defines them, counted in one pass.

An entity is seqeval's (type, first word, last word) in its default (conlleval-style) mode:
an I-X after O or after another type starts an entity. A predicted entity is right when the
gold sentence holds the same triple. Micro scores sum the counts over sentences and types.

Only BIO tags (`O`, `B-X`, `I-X`) are scored, the only ones the reader hands on (corpora/iob.py
converts IOB1 and IOBES corpora to BIO): any other tag is a ValueError naming it. For such tags
seqeval itself joins the sentences and lets an entity run across a sentence break, which
counting sentence by sentence would not reproduce, so the equality with seqeval is claimed, and
tested, for BIO tags alone.

Why not seqeval's `classification_report` itself: on BC5CDR's devel split (4,581 sentences) it
takes 1.7 s, and a run scores devel after every epoch; counting the entities directly takes
0.2 s. The tests hold `score` equal to `classification_report` and `f1_from_counts` equal to
seqeval's `f1_score`, to the last bit.

Counts are (true positives, predicted entities, gold entities): per sentence for the paired
bootstrap (significance.py), per type for the table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from seqeval.metrics.sequence_labeling import get_entities

from corpora.schemes import check_tag


def _sentence_entities(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]):
    """Per sentence, its (gold, predicted) entity sets, after checking the shapes agree."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    for s, (true_tags, predicted_tags) in enumerate(zip(gold, predicted)):
        if len(true_tags) != len(predicted_tags):
            raise ValueError(f"sentence {s}: {len(true_tags)} gold tags but "
                             f"{len(predicted_tags)} predicted ones")
        for side, tags in (("gold", true_tags), ("predicted", predicted_tags)):
            wrong = next((tag for tag in tags if not check_tag(tag)), None)
            if wrong is not None:
                raise ValueError(f"sentence {s}: {side} tag {wrong!r} is not BIO (O, B-<type>, "
                                 f"I-<type>); convert other schemes first (schemes.to_bio)")
        yield set(get_entities(list(true_tags))), set(get_entities(list(predicted_tags)))


def sentence_counts(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
                    ) -> np.ndarray:
    """(S, 3) int: per sentence, (true positives, predicted entities, gold entities).

    An entity never crosses a sentence, so the micro F1 of any set of sentences is that of the
    sum of their rows. Example: gold [B-A I-A O], predicted [I-A I-A B-A] -> [1, 2, 1].
    """
    rows = [(len(true & guessed), len(guessed), len(true))
            for true, guessed in _sentence_entities(gold, predicted)]
    return np.array(rows, dtype=np.int64).reshape(len(rows), 3)  # (S, 3)


def type_counts(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
                ) -> dict[str, np.ndarray]:
    """Per entity type found in either side, (true positives, predicted, gold) summed over all
    sentences, sorted by type."""
    counts: dict[str, list[int]] = {}
    for true, guessed in _sentence_entities(gold, predicted):
        for column, entities in enumerate((true & guessed, guessed, true)):
            for entity_type, _, _ in entities:
                counts.setdefault(entity_type, [0, 0, 0])[column] += 1
    return {t: np.array(counts[t], dtype=np.int64) for t in sorted(counts)}


def precision_recall_f1(totals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 (...) of summed counts (..., 3); 0 where a ratio has no
    denominator. P and R first, then 2 P R / (P + R): seqeval's order of operations, so the
    figures agree with it to the last bit."""
    tp, guessed, true = (totals[..., i].astype(np.float64) for i in range(3))  # (...) each
    precision = np.divide(tp, guessed, out=np.zeros_like(tp), where=guessed > 0)
    recall = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    return precision, recall, f1


def micro_f1(totals: np.ndarray) -> np.ndarray:
    """Micro F1 (...) of summed counts (..., 3)."""
    return precision_recall_f1(totals)[2]


def f1_from_counts(counts: np.ndarray) -> float:
    """Micro F1 of the sentences whose counts (S, 3) are given (or of one (3,) total)."""
    counts = np.asarray(counts)
    return float(micro_f1(counts.sum(0) if counts.ndim == 2 else counts))


def score(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Micro precision, recall and F1, and per type the same with its gold support: what
    seqeval's classification_report(..., zero_division=0) gives, as floats."""
    by_type = type_counts(gold, predicted)
    total = np.sum(list(by_type.values()), axis=0) if by_type else np.zeros(3, dtype=np.int64)

    def scores(counts: np.ndarray) -> dict:
        precision, recall, f1 = precision_recall_f1(counts)
        return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}

    per_type = {t: {**scores(c), "support": int(c[2])} for t, c in by_type.items()}
    return {**scores(total), "per_type": per_type}
