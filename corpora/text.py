"""Raw text into the corpora's sentences and tokens, with the character offsets of each token.

A tagger learns words as its training corpus cut them, so text it tags must be cut the same
way. The corpora here (BC5CDR and NCBI Disease, as cambridgeltl ships them) cut every run of
letters and digits into one token and every other non-space character into a token of its own:
`56-year-old` is `56 - year - old`, `Ca2+` is `Ca2 +`, `[Ca2+]i` is `[ Ca2 + ] i`. Every one of
their 403,118 tokens is of one of those two kinds, so `tokenize` (one regular expression,
`\\w+|[^\\w\\s]`) rebuilds them exactly from any spacing of the text (bench/text_match.py
measures it on both test splits).

Sentences end at a `.`, `?` or `!` followed by space and a capital letter, a digit or an
opening bracket or quote, unless the word before the period is an abbreviation (`e.g.`, `vs.`,
`al.`, `Fig.`) or dotted initials (`U.S.`); a line break always ends one (a PubMed title on its
own line). A single capital before a period does end a sentence: in abstracts `amphotericin B.`
and `hepatitis C.` are far more common than a person's initial. The corpora's own splitter cut
in places this one does not (inside decimals: NCBI's `10 .` | `5 %`), so sentence boundaries
agree with theirs less often than tokens do; bench/text_match.py measures that too.

Worked example:

    tokenize("Ca2+-induced")  -> [Token("Ca2", 0, 3), Token("+", 3, 4), Token("-", 4, 5),
                                  Token("induced", 5, 12)]
    split_sentences("Aspirin helps. Fever fell.\\nNext.") -> [(0, 14), (15, 26), (27, 32)]

Left out: other tokenisations (spaCy's, PubTator's), hyphenation across line breaks, and
documents in markup (give plain text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN = re.compile(r"\w+|[^\w\s]")
ENDS = ".?!"
CLOSERS = ")]}\"'"
# Words that end in a period without ending the sentence (lower case, without the period).
ABBREVIATIONS = frozenset({
    "e.g", "i.e", "vs", "al", "fig", "figs", "ref", "refs", "approx", "ca", "cf", "dr", "mr",
    "mrs", "ms", "prof", "no", "nos", "vol", "eq", "resp", "etc", "sp", "spp", "var", "st",
    "inc", "ltd", "co", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "min", "max", "p.o", "i.v", "i.m", "i.p", "s.c", "b.i.d", "t.i.d",
})
INITIALS = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # `U.S`, `M.I.N.I` before the final period


@dataclass(frozen=True)
class Token:
    text: str
    start: int  # character offset of its first character in the text it came from
    end: int  # one past its last: text[start:end] == token.text


def tokenize(text: str, offset: int = 0) -> list[Token]:
    """The corpora's tokens of `text`, with offsets into `text` (plus `offset`)."""
    return [Token(m.group(), m.start() + offset, m.end() + offset) for m in TOKEN.finditer(text)]


def ends_sentence(text: str, period: int, end: int, following: int) -> bool:
    """Whether the `.`, `?` or `!` at `text[period]` (with any closing brackets after it, up to
    `end`) ends a sentence, the next token starting at `following` (len(text) when there is
    none); see the module docstring."""
    gap = text[end:following]
    if following == len(text) or "\n" in gap:
        return True
    if not gap:  # `p.Val204Asp`, `3.5`: no space, no sentence end
        return False
    first = text[following]
    if not (first.isupper() or first.isdigit() or first in "([\"'"):
        return False
    if text[period] != ".":
        return True
    begins = max(text.rfind(space, 0, period) for space in " \t\n") + 1
    word = text[begins:period].lstrip("([\"'")
    return word.lower() not in ABBREVIATIONS and not INITIALS.fullmatch(word)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, from its first token's first character to its
    last token's last; every token of the text is in exactly one. Closing brackets and quotes
    right after the period belong to the sentence it ends: `(Twice a day.)`."""
    tokens = list(TOKEN.finditer(text))
    spans, start = [], None
    period = None  # where the last `.`, `?` or `!` is, while only closers have followed it
    for i, match in enumerate(tokens):
        if start is None:
            start = match.start()
        if match.group() in ENDS:
            period = match.start()
        elif match.group() not in CLOSERS or text[match.start() - 1] not in ENDS + CLOSERS:
            period = None  # anything but a closer glued to the period ends the chance
        following = tokens[i + 1].start() if i + 1 < len(tokens) else len(text)
        if "\n" in text[match.end():following] or (
                period is not None and ends_sentence(text, period, match.end(), following)):
            spans.append((start, match.end()))
            start, period = None, None
    if start is not None:
        spans.append((start, tokens[-1].end()))
    return spans


def sentences(text: str) -> list[list[Token]]:
    """The tokens of each sentence of `text`, offsets into `text`."""
    return [tokenize(text[start:end], start) for start, end in split_sentences(text)]


def read_documents(text: str) -> list[str]:
    """The documents of an input file: separated by blank lines when the text has any, else
    one per line. Each keeps its own text exactly (offsets count from its first character);
    lines that hold only space are dropped."""
    if re.search(r"\n[ \t]*\n", text.strip()):
        blocks = re.split(r"\n[ \t]*\n", text)
    else:
        blocks = text.split("\n")
    return [block.strip("\n") for block in blocks if block.strip()]


def join_tokens(tokens: list[str]) -> str:
    """A plausible text for a corpus sentence: the tokens with English spacing (no space
    before closing punctuation or after opening brackets; hyphens, slashes and `+` joined to
    their neighbours). The inverse of `tokenize` for measuring it, not a record of how the
    original read."""
    text = ""
    for token in tokens:
        previous = text[-1:] if text else ""
        # 0.5, 1,000, P < .05: no space between a separator and the digits after it
        decimal = previous in ".," and token[:1].isdigit() and not text[-2:-1].isalpha()
        glue = (not text or token in ".,;:!?)]}%+" or previous in "([{-/+" or token in "-/"
                or decimal)
        text += token if glue else " " + token
    return text
