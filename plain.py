"""A trained tagger's encoder as a plain BERT encoder: each method's change folded into BERT's
own weights, so that transformers alone computes what the tagger did (export.py).

A method can be folded when what it adds is linear in a weight BERT already has:

    LoRA        W0 + s B A                       merged into W0 (lora.py's merge)
    DoRA        m * (W0 + s B A) / ||W0 + s B A||  merged into W0, per output row (lora.py)
    IA3, keys   l * (W x + b) = (diag(l) W) x + l * b       rows of W and b scaled
    IA3, FFN    W (l * a) + b = (W diag(l)) a + b            columns of W scaled
    fusion      W0 + Σ_i w_i s_i B_i A_i         merge mode, fixed or learned weights

then the wrapper goes and its base nn.Linear, holding the folded weight, takes its place. Full
fine-tuning, partial and LayerNorm tuning and BitFit change weights, never modules: their
encoder is a plain one already.

A method whose change is not a weight of BERT cannot be folded, and says why and what works
instead (`*_refusal(cfg)`, one line): a bottleneck adapter is a non-linear module in an output
block, a prefix adds keys and values, attention fusion mixes outputs per token. The method
table (methods.py) names, per method, its folding function (`to_plain`) or its refusal
(`not_plain`); export.py asks it.

Each fold is exact up to float rounding: tests/test_export.py holds the plain encoder's hidden
states equal to the tagger's for every exportable method of the table, and the exported folder's
pipeline equal to predict.py.

Why not in the method files: a run's fingerprint digests the code of its method's file
(comparison/fingerprint.py), so folding code there would retrain every finished run of those
methods though training never calls it. Here no run's fingerprint sees it.

Dimensions: H hidden, I feed-forward width, d_in / d_out a linear's widths, r rank.
"""

from __future__ import annotations

import torch
from torch import nn

import fusion
import ia3
import lora


def unchanged(encoder: nn.Module, cfg) -> None:
    """Full, partial and LayerNorm fine-tuning and BitFit: the trained weights are BERT's own;
    nothing to fold."""


@torch.no_grad()
def merge_lora(encoder: nn.Module, cfg) -> None:
    """Every LoRA (or DoRA) layer merged, W0 + ΔW (DoRA: its rescaled direction), and replaced by
    its base nn.Linear."""
    for name, layer in lora.lora_layers(encoder).items():
        layer.merge()  # idempotent
        encoder.set_submodule(name, layer.base, strict=True)


@torch.no_grad()
def fold_ia3(encoder: nn.Module, cfg) -> None:
    """Every IA3 vector folded into the weights it scales, and its layer replaced by the base:
    an output scale l (H,) multiplies the rows of W and the bias, an input scale l (I,) the
    columns of W (the bias comes after the scaling and stays)."""
    for name, layer in ia3.ia3_layers(encoder).items():
        base = layer.base
        scale = layer.ia3_scale.to(base.weight.dtype)
        if layer.scale_input:
            base.weight.mul_(scale[None, :])  # (d_out, d_in) columns
        else:
            base.weight.mul_(scale[:, None])  # (d_out, d_in) rows
            if base.bias is not None:
                base.bias.mul_(scale)  # (d_out,)
        encoder.set_submodule(name, base, strict=True)


@torch.no_grad()
def merge_fusion(encoder: nn.Module, cfg) -> None:
    """A merge-mode fusion: Σ_i w_i s_i B_i A_i added to each fused base weight (fixed weights
    are already merged by fusion.apply; learned ones, no longer learning, are added here), and
    each fused layer replaced by its base."""
    layers = {name: m for name, m in encoder.named_modules()
              if isinstance(m, fusion.MergedFusionLinear)}
    left = [type(m).__name__ for m in fusion.fusion_layers(encoder)
            if not isinstance(m, fusion.MergedFusionLinear)]
    if left:
        raise ValueError(f"{fusion_refusal(cfg)} (found {left[0]})")
    for name, layer in layers.items():
        if not layer.merged:  # merge() refuses learned weights, which change while training
            layer.base.weight += layer.delta_weight().to(layer.base.weight.dtype)  # (d_out, d_in)
        encoder.set_submodule(name, layer.base, strict=True)


def adapter_refusal(cfg) -> str:
    return ("a bottleneck adapter is a non-linear module in an output block, which no weight of "
            "a plain BERT can hold: export it with --format adapterhub (AdapterHub's folder) "
            "or tag with predict.py")


def prefix_refusal(cfg) -> str:
    return ("prefix tuning adds keys and values that every token attends to, which no weight of "
            "a plain BERT can hold: tag with predict.py")


def fusion_refusal(cfg) -> str:
    """Only a merge-mode fusion is a change of weights."""
    if cfg.fusion_mode == "merge":
        return ""
    return (f"fusion_mode: {cfg.fusion_mode} mixes its adapters' outputs per token, which no "
            f"weight of a plain BERT can hold: tag with predict.py (a fusion_mode: merge run "
            f"exports)")
