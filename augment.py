"""Entity-swap augmentation: fresh variants of the training sentences every epoch.

Implements mention replacement (Dai & Adel, COLING 2020, "An Analysis of Simple Data
Augmentation for Named Entity Recognition"): each entity mention of a training sentence is
replaced, with probability p, by a mention of the same type drawn uniformly from the distinct
mentions of the *training* split. The words around it are untouched and the new mention's tags
are re-emitted as B-X I-X ... for its own length. Swapping works on any per-word items, so the
same draws splice subword pieces during training (no re-tokenising) and token strings in the
tests that check the splice.

`aug: {p, copies}` turns it on for any method; train.py asks `EntitySwapper.epoch` for each
epoch's sentences. Left out: the paper's other operations (synonym replacement, shuffling
within segments), and swaps across entity types.

Dimensions: W words.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from corpora.iob import Sentence
from corpora.schemes import mention_spans
from data import TokenizedSentence, tokenize_sentences


def build_mention_bank(train: Sequence[Sentence]) -> dict[str, list[tuple[str, ...]]]:
    """Distinct mention surface forms per entity type, sorted. Pass the training split only:
    drawing from devel or test would leak evaluation entities into training."""
    bank: dict[str, set[tuple[str, ...]]] = {}
    for sentence in train:
        for start, end, entity_type in mention_spans(sentence.tags):
            bank.setdefault(entity_type, set()).add(tuple(sentence.tokens[start:end]))
    return {entity_type: sorted(mentions) for entity_type, mentions in sorted(bank.items())}


def swap_mentions(words: Sequence, tags: Sequence[str], bank: dict[str, Sequence[Sequence]],
                  p: float, rng: random.Random) -> tuple[list, list[str]]:
    """`words` (tokens, or subword pieces per word) with each mention replaced with probability
    `p` by a mention of the same type from `bank`; the new words and their BIO tags."""
    new_words: list = []
    new_tags: list[str] = []
    position = 0
    for start, end, entity_type in mention_spans(tags):
        new_words += words[position:start]
        new_tags += tags[position:start]
        if rng.random() < p and bank.get(entity_type):
            mention = list(bank[entity_type][rng.randrange(len(bank[entity_type]))])
        else:
            mention = list(words[start:end])
        new_words += mention
        new_tags += [f"B-{entity_type}"] + [f"I-{entity_type}"] * (len(mention) - 1)
        position = end
    return new_words + list(words[position:]), new_tags + list(tags[position:])


class EntitySwapper:
    """Fresh swapped variants of the tokenised training split for every epoch.

    The bank's mentions are tokenised once; each epoch splices their subword pieces into the
    sentences, seeded by the epoch's seed: reproducible, and new variants every epoch.
    """

    def __init__(self, train: Sequence[Sentence], tokenized: Sequence[TokenizedSentence],
                 tokenizer, labels: Sequence[str], p: float, copies: int):
        self.labels = list(labels)
        self.tokenized = tokenized
        self.tags = [s.tags for s in train]
        self.p, self.copies = p, copies
        bank = build_mention_bank(train)
        self.bank = {}  # type → subword pieces per word of each mention
        for entity_type, mentions in bank.items():
            pseudo = [Sentence(list(m), ["O"] * len(m)) for m in mentions]
            self.bank[entity_type] = [t.pieces for t in
                                      tokenize_sentences(pseudo, tokenizer, labels)]

    def epoch(self, seed: int) -> list[TokenizedSentence]:
        """One epoch's sentences, drawn with `seed` (the epoch's own: train.epoch_seed).
        copies = 0: every sentence swapped in place; copies = k: the originals plus k swapped
        variants of each."""
        rng = random.Random(seed)
        index = {tag: i for i, tag in enumerate(self.labels)}
        result = [] if self.copies == 0 else list(self.tokenized)
        for _ in range(max(1, self.copies)):
            for sentence, tags in zip(self.tokenized, self.tags):
                pieces, new_tags = swap_mentions(sentence.pieces, tags, self.bank, self.p, rng)
                result.append(TokenizedSentence(pieces, [index.get(t, 0) for t in new_tags]))
        return result
