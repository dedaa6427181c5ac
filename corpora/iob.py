"""Two-column IOB files: `token<TAB>tag` per line, a blank line between sentences.

The format of the corpora this project ships configs for (the MTL-Bioinformatics-2016 IOB
folders) and of `predict.py --format iob`. `read_iob` names the file and line of every problem,
and hands on BIO tags whatever the file's scheme (schemes.py converts IOB1 and IOBES).
`tag_problem` and `in_bio` are the same checks and conversion for sentences read from
elsewhere (hub.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from corpora import schemes


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]  # BIO, one per token


def read_iob(path: str | Path, tag_scheme: str = "auto") -> list[Sentence]:
    """Sentences of an IOB file: `token<TAB>tag` (or space-separated; with extra middle columns
    the first field is the token and the last the tag), a blank line between sentences.

    Tags are read in `tag_scheme` (bio, iob1, iobes; auto: detected from the file, schemes.py)
    and returned in BIO; a converted file is named on stderr."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    with path.open("rb") as lines:  # bytes, so that a decoding error can name its line
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{number}: not UTF-8 text ({error.reason} at byte "
                                 f"{error.start} of the line)") from error
            if not line.strip():
                if tokens:
                    sentences.append(Sentence(tokens, tags))
                    tokens, tags = [], []
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) < 2:
                raise ValueError(
                    f"{path}:{number}: expected 'token<TAB>tag' (2 or more columns), "
                    f"found {len(fields)} column: {line!r}"
                )
            token, tag = fields[0].strip(), fields[-1].strip()
            if not token:
                raise ValueError(f"{path}:{number}: empty token in {line!r}")
            problem = tag_problem(tag, tag_scheme)
            if problem:
                raise ValueError(f"{path}:{number}: {problem}")
            tokens.append(token)
            tags.append(tag)
    if tokens:
        sentences.append(Sentence(tokens, tags))
    if not sentences:
        raise ValueError(f"{path}: no sentences (empty split)")
    return in_bio(sentences, tag_scheme, str(path))


def tag_problem(tag: str, tag_scheme: str = "auto") -> str | None:
    """Why `tag` cannot be read in `tag_scheme` (auto: any scheme schemes.py reads), or None."""
    allowed = schemes.PREFIXES.get(tag_scheme, schemes.PREFIXES["iobes"])
    parsed = schemes.split_tag(tag)
    if any(c.isspace() for c in tag):  # predictions.txt writes `token gold predicted`
        return f"tag {tag!r} holds a space, which the run's files cannot keep apart"
    if parsed is not None and (parsed[0] == "O" or parsed[0] in allowed):
        return None
    if tag_scheme == "auto":
        return (f"tag {tag!r} is not O, B-<type> or I-<type> (BIO, IOB1), nor E-/S-/U-/L-<type> "
                f"(IOBES, BILOU)")
    return f"tag {tag!r} is not O or {'/'.join(allowed)}-<type> ({tag_scheme})"


def in_bio(sentences: list[Sentence], tag_scheme: str, name: str) -> list[Sentence]:
    """The sentences with BIO tags: read in `tag_scheme` (auto: detected from all of them,
    schemes.py), converted, and `name` said on stderr when they were not BIO already. Every tag
    must have passed `tag_problem`."""
    scheme = schemes.detect([s.tags for s in sentences]) if tag_scheme == "auto" else tag_scheme
    if scheme == "bio":
        return sentences
    print(f"{name}: tags read as {scheme.upper()}, converted to BIO", file=sys.stderr)
    return [Sentence(s.tokens, schemes.to_bio(s.tags, scheme)) for s in sentences]
