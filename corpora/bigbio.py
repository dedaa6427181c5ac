"""BigBio's `bigbio_kb` schema as sentences: documents with character offsets to BIO tags.

A `bigbio_kb` row is one document (Fries et al. 2022, BigBio). Its `passages` each hold `text`, a
list of strings, and `offsets`, one [start, end) pair per string into the document (a title and
an abstract are two passages). Its `entities` each hold a `type` and `offsets`, one pair per
fragment: a discontinuous mention has several.

Each passage string is cut into sentences and tokens by text.py, exactly as predict.py cuts raw
text (a passage is a line of a document, as a title is in predict.py's input, so no sentence
runs from one passage into the next). Then each entity becomes tags on those tokens:

- a discontinuous entity becomes the span from its first fragment's start to its last
  fragment's end (the words between its fragments are tagged too);
- its tokens are those the span touches: a boundary inside a token takes the whole token, and
  an entity that touches no token (its offsets in no passage) is dropped;
- entities are placed in document order, the longer first where two start together, and an
  entity whose tokens overlap one already placed is dropped: of nested mentions the outermost
  is kept, as BIO has room for one;
- a mention that crosses a sentence end joins the two sentences, so that no mention is cut;
- with `entity_types`, entities of other types are left out before any is placed;
- a type's spaces become `_` (`Gene or gene product` -> `Gene_or_gene_product`): a run's files
  write tags space-separated.

`to_sentences` counts the entities each rule placed, changed or dropped, and hub.py prints the
counts, one line per split.

Worked example: the document "Ca2+ and X-linked ALD." (one passage, offsets [0, 22)) with the
entities Chemical [0, 2) (`Ca`, a boundary inside the token `Ca2`), Disease [9, 21) (`X-linked
ALD`) and Gene [9, 17) (`X-linked`, inside the Disease):

    Ca2 B-Chemical | + O | and O | X B-Disease | - I-Disease | linked I-Disease |
    ALD I-Disease | . O

    3 entities: 2 placed (1 with a boundary inside a token), 1 overlapping dropped (the Gene:
    the Disease is longer and starts with it, so it was placed first)

Left out: the schema's `events`, `relations` and `coreferences`, and checking that an entity's
`text` equals the document's text at its offsets.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields

from corpora import text
from corpora.iob import Sentence

COLUMNS = ("passages", "entities")  # the columns that make a dataset bigbio_kb


def is_bigbio_kb(columns: Sequence[str]) -> bool:
    return all(column in columns for column in COLUMNS)


@dataclass
class Counts:
    """What becoming BIO did to a split's entities."""
    documents: int = 0
    sentences: int = 0
    placed: int = 0  # entities tagged
    overlapping: int = 0  # dropped: its tokens overlap an entity placed before it
    outside: int = 0  # dropped: no token under it (offsets in no passage, or on space only)
    discontinuous: int = 0  # placed, made the span from its first fragment to its last
    inside_token: int = 0  # placed, a boundary inside a token: the whole token taken
    joined: int = 0  # sentence ends removed because a placed entity crossed them
    other_types: int = 0  # left out by entity_types

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def __str__(self) -> str:
        return (f"{self.documents:,} documents, {self.sentences:,} sentences, "
                f"{self.placed:,} entities placed; dropped {self.overlapping:,} overlapping one "
                f"placed before, {self.outside:,} on no token; {self.discontinuous:,} "
                f"discontinuous made contiguous, {self.inside_token:,} with a boundary inside a "
                f"token, {self.joined:,} sentence ends removed inside an entity"
                + (f"; {self.other_types:,} of other types left out" if self.other_types else ""))


def passage_tokens(passages: Sequence[dict]) -> tuple[list[text.Token], list[int]]:
    """The tokens of a document's passages in order, offsets into the document, and the index
    of each sentence's first token."""
    pieces = sorted((start, piece) for passage in passages
                    for piece, (start, _) in zip(passage["text"], passage["offsets"]))
    tokens: list[text.Token] = []
    starts: list[int] = []
    for offset, piece in pieces:
        for begin, end in text.split_sentences(piece):
            starts.append(len(tokens))
            tokens += text.tokenize(piece[begin:end], offset + begin)
    return tokens, starts


def document_sentences(passages: Sequence[dict], entities: Sequence[dict],
                       entity_types: Sequence[str] = ()) -> tuple[list[Sentence], Counts]:
    """One document's sentences with BIO tags, and what placing its entities did (module
    docstring)."""
    counts = Counts(documents=1)
    tokens, sentence_starts = passage_tokens(passages)
    starts = [t.start for t in tokens]
    ends = [t.end for t in tokens]
    spans = []  # (start, end, type, fragments) of each entity kept
    for entity in entities:
        if entity_types and entity["type"] not in entity_types:
            counts.other_types += 1
            continue
        offsets = entity["offsets"]
        if not offsets:
            counts.outside += 1
            continue
        kind = re.sub(r"\s+", "_", entity["type"].strip())  # tags are written space-separated
        spans.append((min(s for s, _ in offsets), max(e for _, e in offsets), kind, len(offsets)))
    tags = ["O"] * len(tokens)
    breaks = set(sentence_starts)
    for start, end, kind, fragments in sorted(spans, key=lambda s: (s[0], -s[1])):
        first = bisect.bisect_right(ends, start)  # the first token that ends after `start`
        last = bisect.bisect_left(starts, end)  # one past the last token that starts before `end`
        if first >= last:
            counts.outside += 1
            continue
        if any(tag != "O" for tag in tags[first:last]):
            counts.overlapping += 1
            continue
        tags[first:last] = [f"B-{kind}"] + [f"I-{kind}"] * (last - first - 1)
        counts.placed += 1
        counts.discontinuous += fragments > 1
        counts.inside_token += starts[first] < start or ends[last - 1] > end
        crossed = breaks.intersection(range(first + 1, last))
        counts.joined += len(crossed)
        breaks -= crossed
    cuts = sorted(breaks) + [len(tokens)]
    sentences = [Sentence([t.text for t in tokens[a:b]], tags[a:b])
                 for a, b in itertools.pairwise(cuts) if b > a]
    counts.sentences = len(sentences)
    return sentences, counts


def records(value: list[dict] | dict[str, list]) -> list[dict]:
    """A list of structs as 🤗 Datasets reads it: a list of dicts (BigBio's features, `[{...}]`),
    or a dict of lists (the older `Sequence({...})`)."""
    if isinstance(value, dict):
        return [dict(zip(value, row)) for row in zip(*value.values())]
    return value


def to_sentences(rows, entity_types: Sequence[str] = ()) -> tuple[list[Sentence], Counts]:
    """The sentences of every document of a `bigbio_kb` split (a 🤗 Dataset), in order, and the
    counts summed."""
    total = Counts()
    sentences: list[Sentence] = []
    for document_passages, document_entities in zip(rows["passages"], rows["entities"]):
        found, counts = document_sentences(records(document_passages), records(document_entities),
                                           entity_types)
        sentences += found
        total.add(counts)
    return sentences, total
