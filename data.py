"""NER corpora: read IOB files, tokenise once, cut windows, and batch by length.

The path from a corpus folder to model inputs:

1. `read_iob` parses `token<TAB>tag` lines (blank line between sentences) with errors that name
   the file and line. `find_corpus` locates `{train,devel,test}.tsv` in a data directory, or
   downloads the known public corpora through 🤗 `datasets` when no directory is given.
2. `build_labels` fixes the label set from the whole training file: `O`, then `B-`/`I-` of
   every entity type, in sorted order, so it is the same whatever order the file lists mentions
   in, and whatever `train_limit` keeps.
3. `tokenize_sentences` runs the encoder's fast tokenizer once per split and keeps the subword
   pieces of every word. A model sees words through their first subword.
4. `make_windows` cuts a sentence longer than the encoder's limit into consecutive windows at
   word boundaries, so every word is seen and evaluated; nothing is truncated. (A single word
   longer than a whole window keeps only its first pieces; its first subword is still there.)
   A window after the first is flagged `continues`: it may begin inside a mention, with I-X,
   so the CRF must not score its first tag as a sentence start.
5. `length_grouped_batches` + `collate` group windows of similar length (little padding) and pad
   each batch to a multiple of 16 on a GPU (fewer distinct shapes for its kernel caches).
6. `EntitySwapper` (entity-swap augmentation, at the end) makes fresh variants of the training
   sentences every epoch by splicing the subword pieces of other mentions into them.

Dimensions: B batch, T subword tokens, W words.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

SPLITS = ("train", "devel", "test")
PAD_TAG = -100  # tag id at padded word positions; cross-entropy ignores it

# Public corpora known by name: folder of cambridgeltl/MTL-Bioinformatics-2016 on GitHub.
KNOWN_CORPORA = {
    "bc5cdr": "BC5CDR-IOB",
    "bc5cdr_chem": "BC5CDR-chem-IOB",
    "bc5cdr_disease": "BC5CDR-disease-IOB",
    "ncbi_disease": "NCBI-disease-IOB",
}
SOURCE_URL = "https://github.com/cambridgeltl/MTL-Bioinformatics-2016/raw/master/data/{folder}/{split}.tsv"
DATA_DIR_ENV = "NER_DATA_DIR"


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]


# ---------------------------------------------------------------------------------------------
# Reading and locating corpora


def check_tag(tag: str) -> bool:
    """True for `O`, `B-X` and `I-X` with a non-empty type X."""
    return tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-"))


def read_iob(path: str | Path) -> list[Sentence]:
    """Sentences of an IOB file: `token<TAB>tag` (or space-separated; with extra middle columns
    the first field is the token and the last the tag), a blank line between sentences."""
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
            if not check_tag(tag):
                raise ValueError(f"{path}:{number}: tag {tag!r} is not O, B-<type> or I-<type>")
            tokens.append(token)
            tags.append(tag)
    if tokens:
        sentences.append(Sentence(tokens, tags))
    if not sentences:
        raise ValueError(f"{path}: no sentences (empty split)")
    return sentences


def find_corpus(dataset: str, data_dir: str | None) -> dict[str, Path]:
    """Paths of the three splits of `dataset`.

    `dataset` is a folder holding `{train,devel,test}.tsv`, or a corpus name looked up as
    `<data_dir>/<dataset>/` (data_dir from the config, else $NER_DATA_DIR). Without a data
    directory, a known corpus is downloaded from its public source and cached by 🤗 datasets.
    """
    folder = Path(dataset).expanduser()
    if not folder.is_dir():
        data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
        if data_dir:
            folder = Path(data_dir).expanduser() / dataset
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"dataset {dataset!r}: no folder {folder} (data directory {data_dir!r} "
                    f"from the config key 'data_dir' or ${DATA_DIR_ENV})"
                )
        elif dataset in KNOWN_CORPORA:
            return download_corpus(dataset)
        else:
            raise FileNotFoundError(
                f"dataset {dataset!r} is neither a folder nor a known corpus "
                f"({', '.join(KNOWN_CORPORA)}), and no data directory is set"
            )
    paths = {split: folder / f"{split}.tsv" for split in SPLITS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dataset {dataset!r}: missing {', '.join(missing)}")
    return paths


def download_corpus(dataset: str) -> dict[str, Path]:
    """Download a known corpus through 🤗 datasets (cached under ~/.cache/huggingface)."""
    from datasets import DownloadManager

    urls = {s: SOURCE_URL.format(folder=KNOWN_CORPORA[dataset], split=s) for s in SPLITS}
    try:
        files = DownloadManager(dataset_name=dataset).download(urls)
    except Exception as error:  # no network, proxy, hub down: all end the same way for the user
        raise FileNotFoundError(
            f"dataset {dataset!r}: could not download it ({type(error).__name__}: {error}). "
            f"Offline, provide a folder <dir>/{dataset}/ holding train.tsv, devel.tsv and "
            f"test.tsv (two columns: token<TAB>tag) and set ${DATA_DIR_ENV}=<dir> or the "
            f"config key 'data_dir'"
        ) from error
    return {split: Path(path) for split, path in files.items()}


def build_labels(train: Sequence[Sentence]) -> list[str]:
    """`O`, then `B-X`, `I-X` for every entity type X of the training split, types sorted."""
    types = sorted({tag[2:] for s in train for tag in s.tags if tag != "O"})
    return ["O"] + [f"{prefix}-{t}" for t in types for prefix in ("B", "I")]


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
                eval_limit: int = 0, allow_unseen_tags: bool = False) -> Corpus:
    """Read the three splits; limits keep only the first N sentences (0 = all).

    The labels come from the whole training file, before `train_limit` slices it: a small slice
    may lack a rare type that devel and test have, which would stop the run (or, with
    allow_unseen_tags, score it as missed), and the label set would change with the limit."""
    paths = find_corpus(dataset, data_dir)
    splits = {split: read_iob(path) for split, path in paths.items()}
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


# ---------------------------------------------------------------------------------------------
# Entity-swap augmentation (mention replacement, Dai & Adel, COLING 2020)
#
# Each entity mention of a training sentence is replaced, with probability p, by a mention of
# the same type drawn uniformly from the distinct mentions of the *training* split. The words
# around it are untouched and the new mention's tags are re-emitted as B-X I-X ... for its own
# length. Swapping works on any per-word items, so the same draws splice subword pieces during
# training (no re-tokenising) and token strings in the tests that check the splice.


def mention_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start, end, entity type) of every mention, end exclusive; an `I-X` that follows no `X`
    starts a mention:

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
