"""schemes.py: detection of a corpus's tagging scheme and conversion to BIO, against a slow
twin that rebuilds the entities and writes them back."""

from __future__ import annotations

import random

import pytest

from corpora import schemes


def test_docstring_examples():
    assert schemes.to_bio(["S-X", "B-Y", "I-Y", "E-Y"], "iobes") == ["B-X", "B-Y", "I-Y", "I-Y"]
    assert schemes.to_bio(["I-X", "I-X", "B-X", "O", "I-Y"], "iob1") == [
        "B-X", "I-X", "B-X", "O", "B-Y"]
    assert schemes.split_tag("B-Chemical") == ("B", "Chemical")
    assert schemes.split_tag("O") == ("O", "")
    assert schemes.split_tag("X-Y") is None and schemes.split_tag("B-") is None


def random_entities(rng: random.Random, words: int) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, type) entities, some adjacent and of the same type."""
    entities, position = [], 0
    while position < words:
        if rng.random() < 0.5:
            length = min(rng.randint(1, 3), words - position)
            entities.append((position, position + length, rng.choice("XY")))
            position += length
        else:
            position += 1
    return entities


def write(entities, words: int, scheme: str) -> list[str]:
    """The slow twin: each entity's tags in `scheme`, written out word by word."""
    tags = ["O"] * words
    for i, (start, end, kind) in enumerate(entities):
        touching = i > 0 and entities[i - 1][1] == start and entities[i - 1][2] == kind
        for w in range(start, end):
            if scheme == "bio":
                prefix = "B" if w == start else "I"
            elif scheme == "iob1":
                prefix = "B" if w == start and touching else "I"
            else:
                prefix = ("S" if end - start == 1 else "B") if w == start else \
                    ("E" if w == end - 1 else "I")
            tags[w] = f"{prefix}-{kind}"
    return tags


@pytest.mark.parametrize("seed", range(50))
def test_every_scheme_converts_to_the_bio_of_the_same_entities(seed):
    rng = random.Random(seed)
    words = rng.randint(1, 12)
    entities = random_entities(rng, words)
    for scheme in ("iob1", "iobes"):
        assert schemes.to_bio(write(entities, words, scheme), scheme) == \
            write(entities, words, "bio")


def test_detection_reads_each_scheme_from_its_tags():
    rng = random.Random(0)
    corpus = [(n := rng.randint(3, 12), random_entities(rng, n)) for _ in range(40)]
    for scheme in ("bio", "iob1", "iobes"):
        assert schemes.detect([write(e, n, scheme) for n, e in corpus]) == scheme
    assert schemes.detect([["O", "O"]]) == "bio"  # nothing to tell: BIO, which needs no change
