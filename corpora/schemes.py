"""Tagging schemes of NER corpora, and their conversion to BIO, the scheme of everything else.

Corpora ship in several schemes. Each tags the words of an entity of type X:

    BIO (IOB2)     B-X I-X I-X     every entity starts with B-X
    IOB1           I-X I-X I-X     B-X only where an entity follows one of the same type
    IOBES (BIOES)  B-X I-X E-X     S-X for a one-word entity; BILOU's U-X and L-X are read as
                                   S-X and E-X

The reader (iob.read_iob) converts a file to BIO as it reads it, so the labels, the model,
the CRF's constraints, the table and predict.py only ever see BIO; `check_tag` says whether a
tag is BIO, and `mention_spans` reads the entity mentions out of BIO tags. `detect` names a file's
scheme from its tags: any S-, E-, U- or L- tag means IOBES; otherwise IOB1 when some entity
starts with I-X and every B-X follows a tag of its own type; otherwise BIO.

Worked example, IOB1 to BIO: [I-X, I-X, B-X, O, I-Y] -> [B-X, I-X, B-X, O, B-Y].

Left out: schemes with other prefixes (BMEWO, IO without entity boundaries), and repairing
malformed BIO (an I-X after O stays as it is, and counts as an entity start, as conlleval does).
"""

from __future__ import annotations

from collections.abc import Sequence

SCHEMES = ("bio", "iob1", "iobes")
# The prefixes each scheme may use; BILOU's U and L are IOBES's S and E under other names.
PREFIXES = {"bio": ("B", "I"), "iob1": ("B", "I"), "iobes": ("B", "I", "E", "S", "U", "L")}


def split_tag(tag: str) -> tuple[str, str] | None:
    """`B-Chemical` -> ("B", "Chemical"), `O` -> ("O", ""); None for anything else."""
    if tag == "O":
        return "O", ""
    prefix, dash, kind = tag.partition("-")
    if dash and kind and prefix in PREFIXES["iobes"]:
        return prefix, kind
    return None


def detect(sentences: Sequence[Sequence[str]]) -> str:
    """The scheme of the tag sequences `sentences` (module docstring)."""
    if any(tag[:2] in ("E-", "S-", "U-", "L-") for tags in sentences for tag in tags):
        return "iobes"
    starts_inside = False
    for tags in sentences:
        previous_kind = ""
        for tag in tags:
            prefix, kind = split_tag(tag) or ("O", "")
            if prefix == "B" and previous_kind != kind:
                return "bio"  # a B-X that begins an entity after O or another type: IOB2
            starts_inside |= prefix == "I" and previous_kind != kind
            previous_kind = kind
    return "iob1" if starts_inside else "bio"


def to_bio(tags: Sequence[str], scheme: str) -> list[str]:
    """The same entities in BIO tags:

        iobes: [S-X, B-Y, I-Y, E-Y] -> [B-X, B-Y, I-Y, I-Y]
        iob1:  [I-X, I-X, B-X, O, I-Y] -> [B-X, I-X, B-X, O, B-Y]
    """
    if scheme not in SCHEMES:
        raise ValueError(f"tag scheme must be one of {SCHEMES}, got {scheme!r}")
    result = []
    previous_kind = ""
    for tag in tags:
        prefix, kind = split_tag(tag)
        if scheme == "iobes":
            prefix = {"S": "B", "U": "B", "E": "I", "L": "I"}.get(prefix, prefix)
        elif scheme == "iob1" and prefix == "I" and previous_kind != kind:
            prefix = "B"
        result.append("O" if prefix == "O" else f"{prefix}-{kind}")
        previous_kind = kind
    return result


def check_tag(tag: str) -> bool:
    """True for `O`, `B-X` and `I-X` with a non-empty type X: a BIO tag."""
    return tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-"))


def mention_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start, end, entity type) of every mention in BIO tags, end exclusive; an `I-X` that
    follows no `X` starts a mention:

        ["B-Chemical", "I-Chemical", "O", "I-Disease"] -> [(0, 2, "Chemical"), (3, 4, "Disease")]
    """
    spans = []
    for i, tag in enumerate(tags):
        if tag == "O":
            continue
        entity_type = tag[2:]
        if tag.startswith("B-") or not spans or spans[-1][1] != i or spans[-1][2] != entity_type:
            spans.append((i, i + 1, entity_type))
        else:
            spans[-1] = (spans[-1][0], i + 1, entity_type)
    return spans
