"""Selective fine-tuning: a chosen part of the encoder's own weights trains, the rest is frozen.

Three methods choose the part by parameter name and add nothing, so the model is unchanged at
step 0; the tagging head trains as a whole (model.Tagger):

- **BitFit** (Ben Zaken, Ravfogel & Goldberg, ACL 2022, "BitFit: Simple Parameter-efficient
  Fine-tuning for Transformer-based Masked Language-models"): every bias term of the encoder
  (the attention projections', the feed-forward pair's and the LayerNorms' shifts). Per BERT
  layer 7H + I numbers, plus the embeddings' LayerNorm bias: 0.1% of BERT-base.
- **LayerNorm tuning**: every LayerNorm's weight and bias (the embeddings' and two per layer),
  2 H (2 L + 1) numbers; PEFT's LN_TUNING on BERT's `LayerNorm` modules trains the same (the
  tests hold the two equal on copied weights). A cheap baseline beside BitFit.
- **Partial fine-tuning**: the top k encoder layers train whole (`train_layers: k`); the
  embeddings and the layers below stay frozen. Tinn et al. (Patterns 2023, "Fine-tuning large
  neural language models for biomedical natural language processing") found that freezing the
  lower layers of BERT-base costs little on BLURB and steadies small-data runs.

Left out: BitFit's subset variant (only the query and intermediate biases), and choices by
layer for the other two.

Dimensions: H hidden, I feed-forward width, L layers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn


def train_only(model: nn.Module, chosen: Callable[[str], bool]) -> list[str]:
    """requires_grad only on the parameters whose name `chosen` accepts; their names, in model
    order."""
    trained = []
    for name, param in model.named_parameters():
        param.requires_grad_(chosen(name))
        if param.requires_grad:
            trained.append(name)
    return trained


def is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


def is_layernorm(name: str) -> bool:
    """A LayerNorm's parameter, by BERT's module name `LayerNorm`."""
    return bool(re.search(r"(^|\.)LayerNorm\.(weight|bias)$", name))


def top_layers(layers: int, k: int) -> Callable[[str], bool]:
    """Accepts the parameters of BERT's encoder layers L - k ... L - 1 (`encoder.layer.<i>.`)."""
    if not 1 <= k <= layers:
        raise ValueError(f"train_layers must be between 1 and the encoder's {layers} layers, "
                         f"got {k}")
    top = {str(i) for i in range(layers - k, layers)}
    return lambda name: bool(re.match(r"encoder\.layer\.(\d+)\.", name)) and \
        name.split(".")[2] in top


# ---------------------------------------------------------------------------------------------
# The methods as the table applies them (methods.py)


def bitfit(encoder: nn.Module, cfg, sources: Sequence[Path] = ()) -> dict:
    """`method: bitfit`: every bias of the encoder trains, every weight is frozen."""
    train_only(encoder, is_bias)
    return {}


def layernorm(encoder: nn.Module, cfg, sources: Sequence[Path] = ()) -> dict:
    """`method: layernorm`: every LayerNorm weight and bias of the encoder trains."""
    train_only(encoder, is_layernorm)
    return {}


def partial(encoder: nn.Module, cfg, sources: Sequence[Path] = ()) -> dict:
    """`method: partial`: the top `cfg.train_layers` encoder layers train whole."""
    train_only(encoder, top_layers(encoder.config.num_hidden_layers, cfg.train_layers))
    return {}
