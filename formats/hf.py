"""🤗 transformers' token-classification folder: what

    AutoModelForTokenClassification.from_pretrained(folder)
    pipeline("token-classification", model=folder, aggregation_strategy="first")

load with transformers alone. A tagger whose encoder is a plain BERT encoder (plain.py folds a
method's change into its weights) is exactly such a model: the encoder, then dropout, then a
linear head on each subword. The tagger reads the head at each word's first subword only, which
is what the pipeline's "first" strategy does, so the two tag alike (tests/test_export.py; where
they do not, docs/export.md).

The folder holds `config.json` (the encoder's config, with `id2label`/`label2id` from the run's
labels and the run's dropout as `classifier_dropout`), `model.safetensors` (the encoder's
weights and the head as `classifier`), and the tokenizer's files, all as transformers' own
`save_pretrained` writes them. The encoder's weights are loaded strictly: anything a method left
that BERT does not have (an adapter, a fusion's query) is an error, never a silent drop.

`token_classification_files` returns the files as bytes, {file name: content}; the caller adds
the model card and writes the folder whole or not at all (runs/folders.py).

Left out: encoders outside BERT's family (their head is not `classifier`), and any head but the
linear one (a CRF's transitions have no place in this model).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path

from torch import nn


def token_classification_files(encoder: nn.Module, head: nn.Linear, labels: Sequence[str],
                               dropout: float, tokenizer) -> dict[str, bytes]:
    """The files of a token-classification folder for `encoder` (a plain BERT encoder, without
    pooler) and `head` (hidden -> one score per label of `labels`), the dropout before the
    head, and the encoder's fast tokenizer."""
    from transformers import AutoModelForTokenClassification

    if head.out_features != len(labels):
        raise ValueError(f"the head scores {head.out_features} tags, the labels are "
                         f"{len(labels)}")
    config = copy.deepcopy(encoder.config)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.classifier_dropout = dropout
    model = AutoModelForTokenClassification.from_config(config)
    problems = model.base_model.load_state_dict(encoder.state_dict(), strict=False)
    if problems.missing_keys or problems.unexpected_keys:
        raise ValueError(f"the encoder is not a plain {type(model.base_model).__name__}: "
                         f"missing {problems.missing_keys[:3]}, unexpected "
                         f"{problems.unexpected_keys[:3]}")
    model.classifier.load_state_dict(head.state_dict())
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())
                if path.is_file()}
