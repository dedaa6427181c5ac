"""A run's corpus, from sentences to model inputs: labels, tokens once, windows, length batches.

The path from a corpus to model inputs:

1. `load_corpus` reads the three splits (corpora/: a folder or a name in the data directory,
   IOB files in any tagging scheme, or a hub dataset `hf:...` of sentences or BigBio
   documents; all handed on as BIO). With `test_dataset`, test is another corpus's test split,
   scored on the types it annotates.
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
import hashlib
import json
import random
import sys
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from config import Config
from corpora import hub
from corpora.iob import Sentence, read_iob
from corpora.schemes import mention_spans
from corpora.sources import SPLITS, Origin, find_corpus

PAD_TAG = -100  # tag id at padded word positions; cross-entropy ignores it

# ---------------------------------------------------------------------------------------------
# The corpus of a run


def entity_types_of(tags: Iterable[str]) -> list[str]:
    """The entity types of BIO tags, sorted: [O, B-Disease, I-Disease, B-Chemical] ->
    [Chemical, Disease]."""
    return sorted({tag[2:] for tag in tags if tag != "O"})


def tags_of(sentences: Sequence[Sentence]) -> Iterator[str]:
    return (tag for s in sentences for tag in s.tags)


def build_labels(train: Sequence[Sentence]) -> list[str]:
    """`O`, then `B-X`, `I-X` for every entity type X of the training split, types sorted."""
    return ["O"] + [f"{prefix}-{t}" for t in entity_types_of(tags_of(train))
                    for prefix in ("B", "I")]


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
                     origin: Origin) -> None:
    """A tag the training split never had makes the model's score on it meaningless."""
    unseen = sorted({tag for s in sentences for tag in s.tags} - set(labels))
    if unseen:
        raise ValueError(
            f"{origin}: tags {unseen} of the {split} split do not occur in the training split "
            f"(labels: {list(labels)}); set allow_unseen_tags: true to evaluate anyway "
            f"(those entities then count as missed)"
        )


def keep_types(tags: Sequence[str], types: Container[str]) -> list[str]:
    """BIO tags with every mention of a type outside `types` set to O (BIO stays BIO):
    ["B-A", "I-A", "B-B"], {"B"} -> ["O", "O", "B-B"]."""
    return [tag if tag == "O" or tag[2:] in types else "O" for tag in tags]


def rename_types(sentences: Sequence[Sentence], type_map: dict[str, str]) -> list[Sentence]:
    """The sentences with each type of `type_map`'s keys renamed to its value."""
    if not type_map:
        return list(sentences)
    def renamed(tag: str) -> str:
        return tag if tag == "O" else tag[:2] + type_map.get(tag[2:], tag[2:])

    return [Sentence(s.tokens, [renamed(tag) for tag in s.tags]) for s in sentences]


def sentences_digest(sentences: Sequence[Sentence]) -> str:
    """Which sentences and gold tags these are, in 16 hex digits: two runs scored on the same
    test set have the same digest (comparison/report.py pairs rows by it)."""
    text = json.dumps([[s.tokens, s.tags] for s in sentences], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Corpus:
    train: list[Sentence]
    devel: list[Sentence]
    test: list[Sentence]
    labels: list[str]
    origins: dict[str, Origin]  # what each split was read from, by name (the fingerprint's)
    test_corpus: str  # the corpus test was read from: `test_dataset`, else `dataset`
    # the entity types the test corpus annotates (before eval_limit): with test_dataset,
    # predictions of other types are dropped before scoring
    test_types: list[str]
    cross_corpus: bool  # test comes from another corpus than training and devel (test_dataset)


# The config keys that choose a run's corpus: what `load_corpus` reads.
CORPUS_KEYS = ("dataset", "data_dir", "dataset_config", "dataset_revision", "tokens_column",
               "tags_column", "entity_type", "entity_types", "tag_scheme", "train_limit",
               "eval_limit", "allow_unseen_tags", "test_dataset", "test_dataset_config",
               "test_dataset_revision", "type_map")


def corpus_key(cfg: Config) -> str:
    """The runs whose corpus keys agree read the same corpus (preflight loads each once)."""
    return json.dumps({key: getattr(cfg, key) for key in CORPUS_KEYS}, sort_keys=True)


def is_cross_corpus(cfg: Config) -> bool:
    """Whether test comes from another corpus than training and devel (test_dataset)."""
    return bool(cfg.test_dataset) and \
        (cfg.test_dataset, cfg.test_dataset_config) != (cfg.dataset, cfg.dataset_config)


def test_corpus_name(cfg: Config) -> str:
    """The corpus a run's test split comes from, as the table names it: `ncbi_disease`,
    `hf:bigbio/blurb (ncbi_disease)`."""
    name, config = (cfg.test_dataset, cfg.test_dataset_config) if cfg.test_dataset else \
        (cfg.dataset, cfg.dataset_config)
    return f"{name} ({config})" if config else name


def read_splits(cfg: Config, dataset: str, splits: Sequence[str], config: str, revision: str,
                entity_types: Sequence[str]) -> tuple[dict[str, list[Sentence]], dict[str, Origin]]:
    """The `splits` of one corpus, in BIO, and what each was read from: a hub dataset
    (corpora/hub.py, bigbio.py; a BigBio one keeps `entity_types` only), or two-column files
    (corpora/sources.py, iob.py)."""
    if hub.is_hub(dataset):
        return hub.read_splits(dataset, splits, config, revision, cfg.tokens_column,
                               cfg.tags_column, cfg.entity_type, entity_types, cfg.tag_scheme)
    paths = find_corpus(dataset, cfg.data_dir or None)
    return ({split: read_iob(paths[split], cfg.tag_scheme) for split in splits},
            {split: Origin("file", str(paths[split])) for split in splits})


def load_corpus(cfg: Config) -> Corpus:
    """A run's three splits in BIO (corpora/: a folder, a name in the data directory or a known
    corpus, or a hub dataset `hf:...`), from the config's corpus keys (`CORPUS_KEYS`).

    With `test_dataset`, test is that corpus's test split, its types renamed by `type_map`;
    training and devel stay `dataset`'s. `entity_types` keeps those types in every split. Limits
    keep only the first N sentences (0 = all). Likely typos among the training types are named
    on stderr.

    The labels come from the whole training split, before `train_limit` slices it: a small slice
    may lack a rare type that devel and test have, which would stop the run (or, with
    allow_unseen_tags, score it as missed), and the label set would change with the limit."""
    own = ("train", "devel") if cfg.test_dataset else SPLITS
    splits, origins = read_splits(cfg, cfg.dataset, own, cfg.dataset_config,
                                  cfg.dataset_revision, cfg.entity_types)
    if cfg.test_dataset:
        # the test corpus's own names of the types kept: those type_map renames into one
        wanted = [t for t in cfg.entity_types if t not in cfg.type_map] + \
            [t for t, mapped in cfg.type_map.items() if mapped in cfg.entity_types]
        test, test_origin = read_splits(cfg, cfg.test_dataset, ("test",),
                                        cfg.test_dataset_config, cfg.test_dataset_revision,
                                        wanted if cfg.entity_types else [])
        there = entity_types_of(tags_of(test["test"]))
        unknown = sorted(set(cfg.type_map) - set(there))
        if unknown:
            raise ValueError(f"{test_origin['test']}: type_map renames {unknown}, which the test "
                             f"corpus lacks (its types: {', '.join(there)})")
        splits["test"] = rename_types(test["test"], cfg.type_map)
        origins["test"] = test_origin["test"]
    if cfg.entity_types:
        there = entity_types_of(tags_of(splits["train"]))
        missing = sorted(set(cfg.entity_types) - set(there))
        if missing:
            raise ValueError(f"{origins['train']}: entity_types names {missing}, which the "
                             f"training split lacks (its types: {', '.join(there)})")
        kept = set(cfg.entity_types)
        splits = {split: [Sentence(s.tokens, keep_types(s.tags, kept)) for s in sentences]
                  for split, sentences in splits.items()}
    for kind, n, other, many in likely_typos(splits["train"]):
        print(f"{origins['train']}: warning: entity type {kind!r} has {n} mention(s) beside "
              f"{other!r} with {many:,}: a typo? It is a label of its own", file=sys.stderr)
    labels = build_labels(splits["train"])
    test_types = entity_types_of(tags_of(splits["test"]))
    if cfg.train_limit:
        splits["train"] = splits["train"][:cfg.train_limit]
    if cfg.eval_limit:
        splits["devel"] = splits["devel"][:cfg.eval_limit]
        splits["test"] = splits["test"][:cfg.eval_limit]
    checked = ("devel",) if cfg.test_dataset else ("devel", "test")  # another corpus's types
    if not cfg.allow_unseen_tags:  # the model lacks count as missed: that is the question
        for split in checked:
            check_known_tags(splits[split], labels, split, origins[split])
    return Corpus(splits["train"], splits["devel"], splits["test"], labels, origins,
                  test_corpus_name(cfg), test_types, is_cross_corpus(cfg))


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
