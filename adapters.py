"""Bottleneck adapters in a frozen encoder, as AdapterHub defines them: Pfeiffer, Houlsby, and
He et al.'s scaled parallel adapter.

An adapter is a bottleneck f(a) = s up(act(down(a))), down: H -> m, up: m -> H, m = H /
reduction, scale s. It sits in a sub-layer's output block, which in BERT computes

    LN(h + r),    h = dropout(dense(x)) the sub-layer's output, r the block's input,

and the block becomes LN(h + r + f(a)). What the adapter reads, a, is the placement
(`adapter_kind`), and follows AdapterHub's `adapters` 1.3 (`bottleneck_layer_forward`, the
`Adapter` and `ParallelAdapter` modules):

    pfeiffer  after each feed-forward block; a = LN(h + r), the layer's own LayerNorm
              (Pfeiffer et al. 2021, AdapterHub's `SeqBnConfig()`: original_ln_before)
    houlsby   after attention and after the feed-forward block; a = h, act = swish
              (Houlsby et al. 2019, AdapterHub's `DoubleSeqBnConfig()`)
    parallel  beside each feed-forward block; a = r, its input, s = 4
              (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
              Learning", AdapterHub's `ParBnConfig()`)

The keys take AdapterHub's option names: `original_ln_before` (a = LN(h + r) rather than h, for
the two sequential kinds), `non_linearity` (relu, swish, gelu, tanh) and `adapter_scaling` (s);
each defaults to its kind's own (`KIND_DEFAULTS`, filled in by `resolve`). `original_ln_before:
false, non_linearity: relu` is the variant this project ran before (the adapter reads h), which
AdapterHub computes with `SeqBnConfig(original_ln_before=False)`. bench/adapterhub_check.py
holds all of them equal to AdapterHub on copied weights.

Where we differ from AdapterHub: the up-projection starts at zero, so every adapter is the
identity at step 0 and the tagger starts as the bare encoder (Houlsby et al.'s near-identity
init; AdapterHub's default "bert" init draws both projections from N(0, 0.02), and only its
parallel adapter's "mam_adapter" init zeroes up). The down-projection keeps nn.Linear's init.

Each output block (BERT's `attention.output` and `output` modules) is swapped for an
`AdapterBlock` holding the same dense, dropout and LayerNorm, so transformers' source is never
edited and the frozen weights keep their names. Parameters per adapter: 2 H m + m + H.

Left out: AdapterHub's other options (LayerNorm inside the adapter, `residual_before_ln`,
`original_ln_after: false`, learned scaling, gating, adapter dropout, invertible adapters,
`leave_out`), per-layer reduction factors. fusion.py mixes the outputs of several trained
adapters (AdapterFusion).

Dimensions: B batch, T subword tokens, H hidden, m bottleneck width.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import inject

# Layer suffixes (inject.layer_suffix) of the output blocks each kind puts an adapter in.
POSITIONS = {"pfeiffer": ("output",),
             "houlsby": ("attention.output", "output"),
             "parallel": ("output",)}
KINDS = tuple(POSITIONS)  # the choices of `adapter_kind`
# Each kind's AdapterHub defaults, for the keys left at "the kind's own" (None, "", 0).
KIND_DEFAULTS = {
    "pfeiffer": {"original_ln_before": True, "non_linearity": "relu", "adapter_scaling": 1.0},
    "houlsby": {"original_ln_before": False, "non_linearity": "swish", "adapter_scaling": 1.0},
    "parallel": {"original_ln_before": False, "non_linearity": "relu", "adapter_scaling": 4.0},
}
# transformers' activations of these names, which AdapterHub uses (gelu: the exact erf form)
ACTIVATIONS = {"relu": torch.relu, "swish": F.silu, "gelu": F.gelu, "tanh": torch.tanh}
NON_LINEARITIES = ("", *ACTIVATIONS)  # the choices of `non_linearity`; "": the kind's own


class Bottleneck(nn.Module):
    """f(a) = scaling * up(act(down(a))) (..., H) for a (..., H): the adapter's update, without
    the residual. fp32 parameters whatever the base dtype; up starts at zero."""

    def __init__(self, hidden: int, width: int, non_linearity: str = "relu",
                 scaling: float = 1.0, device=None):
        super().__init__()
        self.down = nn.Linear(hidden, width, device=device)  # (m, H): nn.Linear's own init
        self.up = nn.Linear(width, hidden, device=device)  # (H, m)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.non_linearity = non_linearity
        self.scaling = scaling

    def forward(self, a: Tensor) -> Tensor:  # a: (..., H)
        # Outside autocast a bf16 base gives bf16 input while the adapter stays fp32, hence the cast.
        act = ACTIVATIONS[self.non_linearity]
        return self.up(act(self.down(a.to(self.down.weight.dtype)))) * self.scaling  # (..., H)

    def extra_repr(self) -> str:
        return f"non_linearity={self.non_linearity}, scaling={self.scaling}"


def kind_options(kind: str, original_ln_before: bool | None, non_linearity: str,
                 scaling: float) -> dict:
    """The three options with those left at None / "" / 0 replaced by `kind`'s defaults. A
    parallel adapter reads the block's input, so `original_ln_before: true` is a ValueError
    (AdapterHub ignores it there)."""
    if kind == "parallel" and original_ln_before:
        raise ValueError("key 'original_ln_before' must be false or null with adapter_kind: "
                         "parallel, whose adapter reads the block's input")
    defaults = KIND_DEFAULTS[kind]
    return {"original_ln_before": defaults["original_ln_before"] if original_ln_before is None
            else original_ln_before,
            "non_linearity": non_linearity or defaults["non_linearity"],
            "adapter_scaling": scaling or defaults["adapter_scaling"]}


def reads(kind: str, original_ln_before: bool) -> str:
    """What an adapter of `kind` reads: "input" (r), "normed" (LN(h + r)) or "output" (h)."""
    if kind == "parallel":
        return "input"
    return "normed" if original_ln_before else "output"


def adapter_input(read: str, h: Tensor, r: Tensor, layer_norm: nn.LayerNorm) -> Tensor:
    """The tensor an adapter (and a fusion's query) reads in an output block, (B, T, H), from
    h the sub-layer's output and r the block's input, both (B, T, H)."""
    if read == "input":
        return r
    return layer_norm(h + r) if read == "normed" else h


class AdapterBlock(nn.Module):
    """A sub-layer's output block with an adapter: LN(h + r + f(a)), h = dropout(dense(x)), a
    what `read` names. The block's own dense, dropout and LayerNorm stay frozen."""

    def __init__(self, block: nn.Module, width: int, read: str, non_linearity: str,
                 scaling: float):
        super().__init__()
        self.dense, self.dropout, self.LayerNorm = block.dense, block.dropout, block.LayerNorm
        self.read = read
        self.adapter = Bottleneck(self.dense.out_features, width, non_linearity, scaling,
                                  device=self.dense.weight.device)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        h = self.dropout(self.dense(hidden_states))  # (B, T, H)
        a = adapter_input(self.read, h, input_tensor, self.LayerNorm)  # (B, T, H)
        return self.LayerNorm(h + input_tensor + self.adapter(a).to(h.dtype))  # (B, T, H)

    def extra_repr(self) -> str:
        return f"read={self.read}"


def adapter_width(hidden: int, reduction: int) -> int:
    """m = H / reduction (at least 1): 384 / 16 = 24 for MiniLM, 768 / 16 = 48 for BERT-base."""
    return max(1, hidden // reduction)


def is_output_block(module: nn.Module) -> bool:
    """BERT's BertSelfOutput / BertOutput: a dense, a dropout and a LayerNorm."""
    return isinstance(getattr(module, "dense", None), nn.Linear) and \
        isinstance(getattr(module, "LayerNorm", None), nn.LayerNorm) and hasattr(module, "dropout")


def position_names(model: nn.Module, kind: str) -> list[str]:
    """The output blocks of `model` that `kind` puts an adapter in, in model order."""
    if kind not in KINDS:
        raise ValueError(f"adapter_kind must be one of {KINDS}, got {kind!r}")
    names = [name for name, m in model.named_modules()
             if inject.layer_suffix(name) in POSITIONS[kind] and is_output_block(m)]
    if not names:
        raise ValueError(f"the model has no output block (dense, dropout, LayerNorm) at the "
                         f"{kind} positions {', '.join(POSITIONS[kind])} (BERT's module names)")
    return names


def inject_adapters(model: nn.Module, kind: str = "pfeiffer", reduction: int = 16,
                    original_ln_before: bool | None = None, non_linearity: str = "",
                    scaling: float = 0.0) -> list[str]:
    """Put an adapter in each output block of `kind`'s placement, then freeze all but the
    adapters. Options left at None / "" / 0 take the kind's AdapterHub default. Returns the
    swapped block names in model order."""
    if any(isinstance(m, AdapterBlock) for m in model.modules()):
        raise ValueError("model already holds adapters; inject into a fresh model")
    if not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"reduction must be a positive int, got {reduction!r}")
    names = position_names(model, kind)
    options = kind_options(kind, original_ln_before, non_linearity, scaling)
    if options["non_linearity"] not in ACTIVATIONS:
        raise ValueError(f"non_linearity must be one of {tuple(ACTIVATIONS)}, "
                         f"got {options['non_linearity']!r}")
    width = adapter_width(model.get_submodule(names[0]).dense.out_features, reduction)
    read = reads(kind, options["original_ln_before"])
    model.requires_grad_(False)
    for name in names:
        model.set_submodule(name, AdapterBlock(model.get_submodule(name), width, read,
                                               options["non_linearity"],
                                               options["adapter_scaling"]), strict=True)
    return names


def adapter_weights(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """The adapters in an encoder's trained state, by output block name:

        {"encoder.layer.0.output.adapter.down.weight": W, ...}
        -> {"encoder.layer.0.output": {"down.weight": W, "down.bias": ..., ...}}

    Other keys are passed over; an adapter missing one of its four tensors is a ValueError."""
    found: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        module, marker, part = key.partition(".adapter.")
        if marker and part in ("down.weight", "down.bias", "up.weight", "up.bias"):
            found.setdefault(module, {})[part] = tensor
    for module, parts in found.items():
        missing = {"down.weight", "down.bias", "up.weight", "up.bias"} - set(parts)
        if missing:
            raise ValueError(f"{module}.adapter.{min(missing)} is missing")
    return found


# ---------------------------------------------------------------------------------------------
# The method as the table applies it (methods.py)


def resolve(cfg) -> dict:
    """The keys left at "the kind's own" (None, "", 0), filled in from `cfg.adapter_kind`, so
    that the config saved with a run names the values it ran with. A choice the kind rules out
    is a ValueError(key, message)."""
    try:
        return kind_options(cfg.adapter_kind, cfg.original_ln_before, cfg.non_linearity,
                            cfg.adapter_scaling)
    except ValueError as error:
        raise ValueError("original_ln_before", str(error)) from error


def apply(encoder: nn.Module, cfg, sources: Sequence[Path] = ()) -> dict:
    """`method: adapter`: bottleneck adapters at `cfg.adapter_kind`'s positions, width
    H / `cfg.reduction`, as its options say; everything else frozen."""
    inject_adapters(encoder, cfg.adapter_kind, cfg.reduction, cfg.original_ln_before,
                    cfg.non_linearity, cfg.adapter_scaling)
    return {}
