"""Shared test factories: a tiny random BERT saved as a local encoder folder, and tiny corpora.

Everything here is built on the fly, seeded, and needs no network.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

# Words of the tiny corpora. Chemicals and diseases are split into several word pieces by the
# vocabulary below, so first-subword gathering is exercised.
CHEMICALS = ["aspirin", "cocaine", "lithium", "heparin", "nicotine"]
DISEASES = ["fever", "hypotension", "seizure", "anemia", "nausea"]
FILLER = ["the", "patient", "was", "given", "and", "developed", "after", "with", "a", "of", "."]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab() -> list[str]:
    """Whole filler words, plus letters and '##'-letters so that entity names split into pieces."""
    letters = sorted(set("".join(CHEMICALS + DISEASES)))
    return SPECIAL + FILLER + letters + ["##" + c for c in letters]


def make_tiny_bert(seed: int = 0, vocab_size: int | None = None, max_positions: int = 64,
                   hidden: int = 32, layers: int = 2, intermediate: int = 64) -> BertModel:
    """A BERT with random weights, by default 2 layers of hidden size 32 (dropout off unless a
    test turns it on). `hidden` must be a multiple of its 4 attention heads."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size or len(tiny_vocab()),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(config, add_pooling_layer=False)


def save_tiny_encoder(folder: Path, seed: int = 0, max_length: int = 64, hidden: int = 32,
                      layers: int = 2, intermediate: int = 64) -> Path:
    """Write a tiny BERT (sizes as in `make_tiny_bert`) and its fast WordPiece tokenizer as a
    local `model:` folder."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {piece: i for i, piece in enumerate(tiny_vocab())}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    make_tiny_bert(seed, max_positions=max_length, hidden=hidden, layers=layers,
                   intermediate=intermediate).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


def make_sentences(n: int, seed: int, min_words: int = 3, max_words: int = 12):
    """`n` random (tokens, tags) sentences mixing filler words with Chemical/Disease mentions."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        tokens, tags = [], []
        while len(tokens) < rng.randint(min_words, max_words):
            roll = rng.random()
            if roll < 0.2:
                kind, words = "Chemical", CHEMICALS
            elif roll < 0.4:
                kind, words = "Disease", DISEASES
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
                continue
            length = rng.choice([1, 1, 2])
            tokens += [rng.choice(words) for _ in range(length)]
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (length - 1)
        sentences.append((tokens, tags))
    return sentences


def write_iob(path: Path, sentences) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = ["\n".join(f"{t}\t{g}" for t, g in zip(tokens, tags)) for tokens, tags in sentences]
    path.write_text("\n\n".join(blocks) + "\n")
    return path


def write_corpus(folder: Path, sizes=(40, 12, 12), seed: int = 0) -> Path:
    """A corpus folder with train/devel/test.tsv of the given sentence counts."""
    for offset, (split, n) in enumerate(zip(("train", "devel", "test"), sizes)):
        write_iob(folder / f"{split}.tsv", make_sentences(n, seed=seed * 10 + offset))
    return folder


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


def assert_error_names_line(read, path: Path, text: str, line: int, words: str) -> None:
    """`read(path)` of a file holding `text` raises a ValueError naming `path:line` and `words`."""
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        read(path)
    assert f"{path}:{line}:" in str(error.value) and words in str(error.value)


# Tag sequences for the scoring and significance tests
TAGS = ["O", "B-A", "I-A", "B-B", "I-B"]


def random_tags(n_sentences: int, seed: int, max_words: int = 12) -> list[list[str]]:
    """Tag sequences drawn uniformly from TAGS, so ill-formed ones (I-A after O, B-A I-B, I-B at
    the start) are common."""
    rng = random.Random(seed)
    return [[rng.choice(TAGS) for _ in range(rng.randint(1, max_words))]
            for _ in range(n_sentences)]


def noisy_copy(gold: list[list[str]], error: float, seed: int) -> list[list[str]]:
    """A system's predictions: each tag of `gold` replaced by a random one with probability
    `error`."""
    rng = random.Random(seed)
    return [[rng.choice(TAGS) if rng.random() < error else t for t in sentence]
            for sentence in gold]


# Hub-layout dataset folders (corpora/hub.py)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty 🤗 Datasets cache of the test's own, for this process and the runs it spawns."""
    import datasets

    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def write_parquet(path: Path, columns: dict, features=None) -> Path:
    """One split file of a hub-layout folder (`features`: 🤗 Datasets Features, e.g. ClassLabel
    tags; None: inferred from the values)."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return path


def tag_features(names: list[str], **more):
    """Features of token rows whose `ner_tags` are ClassLabel integers of `names`."""
    from datasets import ClassLabel, Features, List, Value

    return Features({"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=names)),
                     **more})


def hub_folder_of(corpus: Path, folder: Path, names: dict[str, str] | None = None,
                  readme: bool = False) -> Path:
    """The two-column corpus folder `corpus` as a hub-layout folder of parquet files with
    ClassLabel tags. `names`: the file name of each split (train, devel, test; default the same);
    with `readme`, the files go under data/ and a README `configs:` header names the splits
    train, validation and test."""
    from corpora.iob import read_iob

    names = names or {split: split for split in ("train", "devel", "test")}
    splits = {split: read_iob(corpus / f"{split}.tsv") for split in names}
    labels = sorted({tag for sentences in splits.values() for s in sentences for tag in s.tags})
    header = []
    for split, sentences in splits.items():
        stem = names[split]
        path = folder / "data" / f"{stem}-00000-of-00001.parquet" if readme else \
            folder / f"{stem}.parquet"
        write_parquet(path, {"tokens": [s.tokens for s in sentences],
                             "ner_tags": [[labels.index(t) for t in s.tags] for s in sentences]},
                      tag_features(labels))
        header.append(f"  - split: {'validation' if split == 'devel' else split}\n"
                      f"    path: data/{path.name}\n")
    if readme:
        (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                          + "".join(header) + "---\n# a tiny corpus\n")
    return folder
