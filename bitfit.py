"""BitFit: fine-tune the biases of a frozen encoder, and nothing else.

Implements Ben Zaken, Ravfogel & Goldberg (2022), "BitFit: Simple Parameter-efficient
Fine-tuning for Transformer-based Masked Language-models": every bias term of the encoder
trains (the attention projections', the feed-forward pair's and the LayerNorms' shifts), every
weight stays frozen, and the task head trains as a whole. The model is unchanged at step 0:
nothing is added. Per BERT layer that is 7H + I parameters, plus the embeddings' LayerNorm
bias: 0.1% of BERT-base.

Left out: the paper's subset variant (only the query and intermediate biases).

Dimensions: H hidden, I feed-forward width.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn


def freeze_all_but_biases(model: nn.Module) -> list[str]:
    """requires_grad only on parameters named `bias`; their names, in model order."""
    trained = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.rsplit(".", 1)[-1] == "bias")
        if param.requires_grad:
            trained.append(name)
    return trained


def apply(encoder: nn.Module, cfg, sources: Sequence[Path] = ()) -> dict:
    """`method: bitfit`: every bias of the encoder trains, every weight is frozen."""
    freeze_all_but_biases(encoder)
    return {}
