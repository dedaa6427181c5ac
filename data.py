"""A run's corpus, from sentences to model inputs: labels, tokens once, windows, length batches.

The path from a corpus to model inputs:

1. `load_corpus` reads the three splits (corpora/: a folder or a name in the data directory,
   IOB files in any tagging scheme, handed on as BIO).
2. `build_labels` fixes the label set from the whole training file: `O`, then `B-`/`I-` of
   every entity type, in sorted order, so it is the same whatever order the file lists mentions
   in, and whatever `train_limit` keeps. A type with very few mentions whose name is close to a
   frequent type's (`Chemcial` beside `Chemical`) is named in a warning: a likely typo.
3. `tokenize_sentences` runs the encoder's fast tokenizer once per split and keeps the subword
   pieces of every word. A model sees words through their first subword.
4. `make_windows` cuts a sentence longer than the encoder's limit into consecutive windows at
   word boundaries, so every word is seen and evaluated; nothing is truncated. (A single word
   longer than a whole window keeps only its first pieces; its first subword is still there.)
   A window after the first is flagged `continues`: it may begin inside a mention, with I-X,
   so the CRF must not score its first tag as a sentence start.
5. `length_grouped_batches` + `collate` group windows of similar length (little padding) and pad
   each batch to a multiple of 16 on a GPU (fewer distinct shapes for its kernel caches).

Dimensions: B batch, T subword tokens, W words.
"""

from __future__ import annotations

import difflib
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from corpora.iob import Sentence, read_iob
from corpora.schemes import mention_spans
from corpora.sources import find_corpus

PAD_TAG = -100  # tag id at padded word positions; cross-entropy ignores it

# ---------------------------------------------------------------------------------------------
# The corpus of a run


def build_labels(train: Sequence[Sentence]) -> list[str]:
    """`O`, then `B-X`, `I-X` for every entity type X of the training split, types sorted."""
    types = sorted({tag[2:] for s in train for tag in s.tags if tag != "O"})
    return ["O"] + [f"{prefix}-{t}" for t in types for prefix in ("B", "I")]


def likely_typos(train: Sequence[Sentence], rare: int = 3) -> list[tuple[str, int, str, int]]:
    """(type, its mentions, the similar type, its mentions) for every entity type with at most
    `rare` mentions whose name is close (difflib ratio >= 0.8) to a type with ten times as many:
    `Chemcial` (1 mention) beside `Chemical` (5,203)."""
    counts = Counter(kind for s in train for _, _, kind in mention_spans(s.tags))
    found = []
    for kind, n in sorted(counts.items()):
        if n > rare:
            continue
        close = [other for other in counts if other != kind and counts[other] >= 10 * n
                 and difflib.SequenceMatcher(None, kind.lower(), other.lower()).ratio() >= 0.8]
        if close:
            other = max(close, key=counts.get)
            found.append((kind, n, other, counts[other]))
    return found


def check_known_tags(sentences: Sequence[Sentence], labels: Sequence[str], split: str,
                     path: Path) -> None:
    """A tag the training split never had makes the model's score on it meaningless."""
    unseen = sorted({tag for s in sentences for tag in s.tags} - set(labels))
    if unseen:
        raise ValueError(
            f"{path}: tags {unseen} of the {split} split do not occur in the training split "
            f"(labels: {list(labels)}); set allow_unseen_tags: true to evaluate anyway "
            f"(those entities then count as missed)"
        )


@dataclass
class Corpus:
    train: list[Sentence]
    devel: list[Sentence]
    test: list[Sentence]
    labels: list[str]
    paths: dict[str, Path]


def load_corpus(dataset: str, data_dir: str | None = None, train_limit: int = 0,
                eval_limit: int = 0, allow_unseen_tags: bool = False,
                tag_scheme: str = "auto") -> Corpus:
    """Read the three splits (in `tag_scheme`, into BIO); limits keep only the first N sentences
    (0 = all). Likely typos among the training types are named on stderr.

    The labels come from the whole training file, before `train_limit` slices it: a small slice
    may lack a rare type that devel and test have, which would stop the run (or, with
    allow_unseen_tags, score it as missed), and the label set would change with the limit."""
    paths = find_corpus(dataset, data_dir)
    splits = {split: read_iob(path, tag_scheme) for split, path in paths.items()}
    for kind, n, other, many in likely_typos(splits["train"]):
        print(f"{paths['train']}: warning: entity type {kind!r} has {n} mention(s) beside "
              f"{other!r} with {many:,}: a typo? It is a label of its own", file=sys.stderr)
    labels = build_labels(splits["train"])
    if train_limit:
        splits["train"] = splits["train"][:train_limit]
    if eval_limit:
        splits["devel"] = splits["devel"][:eval_limit]
        splits["test"] = splits["test"][:eval_limit]
    if not allow_unseen_tags:
        for split in ("devel", "test"):
            check_known_tags(splits[split], labels, split, paths[split])
    return Corpus(splits["train"], splits["devel"], splits["test"], labels, paths)


# ---------------------------------------------------------------------------------------------
# Tokenising and windows


@dataclass
class TokenizedSentence:
    pieces: list[list[int]]  # subword ids of each word, special tokens excluded
    tag_ids: list[int]  # one per word; 0 (`O`) for a tag outside the label set


def tokenize_sentences(sentences: Sequence[Sentence], tokenizer, labels: Sequence[str]
                       ) -> list[TokenizedSentence]:
    """Subword ids per word, from one call of the fast tokenizer over the whole split.

    A word the tokenizer turns into nothing (a stray control character) becomes [UNK], so
    that every word keeps a first subword to be tagged through.
    """
    tag_index = {tag: i for i, tag in enumerate(labels)}
    encoded = tokenizer([s.tokens for s in sentences], is_split_into_words=True,
                        add_special_tokens=False)
    result = []
    for i, sentence in enumerate(sentences):
        pieces: list[list[int]] = [[] for _ in sentence.tokens]
        for piece, word in zip(encoded["input_ids"][i], encoded.word_ids(i)):
            pieces[word].append(piece)
        for word_pieces in pieces:
            if not word_pieces:
                word_pieces.append(tokenizer.unk_token_id)
        tag_ids = [tag_index.get(tag, 0) for tag in sentence.tags]
        result.append(TokenizedSentence(pieces, tag_ids))
    return result


@dataclass
class Window:
    """A stretch of consecutive words of one sentence, ready to batch."""
    input_ids: list[int]  # [CLS] pieces... [SEP]
    word_starts: list[int]  # position in input_ids of each word's first subword
    tag_ids: list[int]
    sentence: int  # index of the sentence in its split
    first_word: int  # index in the sentence of this window's first word
    continues: bool  # first_word > 0: not the sentence's start, which the CRF must know


def make_windows(sentences: Sequence[TokenizedSentence], max_length: int, cls_id: int,
                 sep_id: int) -> list[Window]:
    """Cut each sentence into windows of at most `max_length` subwords, special tokens included.

    Greedy: a window takes words until the next one would not fit. Windows do not overlap, so a
    word near a cut sees context from one side only; this is the price of evaluating every word.

    Example: a first sentence of five words of 1, 2, 1, 3 and 1 pieces, max_length 8 (6 subwords
    between [CLS] 101 and [SEP] 102). The first three words take 4 subwords and the fourth's 3
    would make 7, so the cut falls before the fourth word:

        TokenizedSentence(pieces=[[7], [8, 9], [10], [11, 12, 13], [14]], tag_ids=[1, 2, 0, 3, 0])
        -> Window(input_ids=[101, 7, 8, 9, 10, 102], word_starts=[1, 2, 4], tag_ids=[1, 2, 0],
                  sentence=0, first_word=0, continues=False)
           Window(input_ids=[101, 11, 12, 13, 14, 102], word_starts=[1, 4], tag_ids=[3, 0],
                  sentence=0, first_word=3, continues=True)
    """
    budget = max_length - 2
    windows = []
    for index, sentence in enumerate(sentences):
        start = 0
        while start < len(sentence.pieces):
            ids, starts = [cls_id], []
            end = start
            while end < len(sentence.pieces):
                word = sentence.pieces[end][:budget]
                if len(ids) - 1 + len(word) > budget and end > start:
                    break
                starts.append(len(ids))
                ids.extend(word)
                end += 1
            ids.append(sep_id)
            windows.append(Window(ids, starts, sentence.tag_ids[start:end], index, start,
                                  continues=start > 0))
            start = end
    return windows


def merge_window_predictions(windows: Sequence[Window], predictions: Sequence[list[int]],
                             lengths: Sequence[int]) -> list[list[int]]:
    """Put per-window word predictions back together into one list per sentence."""
    merged = [[-1] * n for n in lengths]
    for window, predicted in zip(windows, predictions):
        merged[window.sentence][window.first_word:window.first_word + len(predicted)] = predicted
    assert all(-1 not in sentence for sentence in merged), "a word was left without a prediction"
    return merged


# ---------------------------------------------------------------------------------------------
# Batching


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int,
                           chunk_batches: int = 50) -> list[list[int]]:
    """Indices in batches of similar length: shuffle, sort by length inside chunks of
    `chunk_batches` batches, cut into batches, shuffle the batches. Seeded, so reproducible."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * chunk_batches
    batches = []
    for begin in range(0, len(order), chunk):
        ranked = sorted(order[begin:begin + chunk], key=lambda i: lengths[i], reverse=True)
        batches += [ranked[i:i + batch_size] for i in range(0, len(ranked), batch_size)]
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """For evaluation: indices sorted by length, longest first, so padding is minimal."""
    ranked = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [ranked[i:i + batch_size] for i in range(0, len(ranked), batch_size)]


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate(windows: Sequence[Window], pad_id: int, max_length: int, multiple: int = 16
            ) -> dict[str, torch.Tensor]:
    """Pad a batch of windows to tensors; T and W rounded up to `multiple` (T capped at
    max_length) so that a GPU sees few distinct shapes. `continues` (B,) marks the windows that
    do not start their sentence (for `CRF.nll` and `CRF.decode`)."""
    T = min(round_up(max(len(w.input_ids) for w in windows), multiple), max_length)
    W = round_up(max(len(w.word_starts) for w in windows), multiple)
    B = len(windows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros(B, T, dtype=torch.long)  # (B, T)
    word_index = torch.zeros(B, W, dtype=torch.long)  # (B, W): position of each word's 1st piece
    word_mask = torch.zeros(B, W, dtype=torch.bool)  # (B, W)
    tags = torch.full((B, W), PAD_TAG, dtype=torch.long)  # (B, W)
    continues = torch.tensor([w.continues for w in windows], dtype=torch.bool)  # (B,)
    for b, w in enumerate(windows):
        input_ids[b, :len(w.input_ids)] = torch.tensor(w.input_ids)
        attention_mask[b, :len(w.input_ids)] = 1
        n = len(w.word_starts)
        word_index[b, :n] = torch.tensor(w.word_starts)
        word_mask[b, :n] = True
        tags[b, :n] = torch.tensor(w.tag_ids)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "word_index": word_index, "word_mask": word_mask, "tags": tags,
            "continues": continues}
