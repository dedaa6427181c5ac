"""Bottleneck adapters in a frozen encoder: Houlsby and Pfeiffer placements.

Implements the adapters of Houlsby et al. (2019), "Parameter-Efficient Transfer Learning for
NLP", and the single-adapter placement of Pfeiffer et al. (2021), "AdapterFusion:
Non-Destructive Task Composition for Transfer Learning", which AdapterFusion takes as input.
An adapter is a bottleneck with a residual,

    h + up(relu(down(h))),    down: H -> m, up: m -> H, m = H / reduction,

applied to the output h of a sub-layer's output projection, before BERT adds the sub-layer's
input back and normalises (dropout and LayerNorm stay the encoder's own). The up-projection
starts at zero, so every adapter is the identity at step 0 and the tagger starts as the bare
encoder. Placements (`adapter_kind`):

    pfeiffer  one adapter per layer, after the feed-forward block (`output.dense`)
    houlsby   two per layer: after attention (`attention.output.dense`) and after the
              feed-forward block

Each adapter is wrapped around the projection it follows (inject.py), so transformers' source
is never edited. Parameters per adapter: 2 H m + m + H.

Left out: AdapterHub's other options (LayerNorm inside the adapter, other non-linearities,
`original_ln_before/after`, invertible adapters), prefix placements, adapter dropout.
fusion.py mixes the outputs of several trained adapters (AdapterFusion).

Dimensions: B batch, T subword tokens, H hidden, m bottleneck width.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

import inject

# Layer suffixes (inject.layer_suffix) of the projections each placement puts an adapter after.
POSITIONS = {"pfeiffer": ("output.dense",),
             "houlsby": ("attention.output.dense", "output.dense")}
KINDS = tuple(POSITIONS)  # the choices of `adapter_kind`


class Bottleneck(nn.Module):
    """`up(relu(down(h)))` (..., H) for h (..., H): the adapter's update, without the residual.
    fp32 parameters whatever the base dtype; up starts at zero."""

    def __init__(self, hidden: int, width: int, device=None):
        super().__init__()
        self.down = nn.Linear(hidden, width, device=device)  # (m, H): nn.Linear's own init
        self.up = nn.Linear(width, hidden, device=device)  # (H, m)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:  # h: (..., H)
        # Outside autocast a bf16 base gives bf16 h while the adapter stays fp32, hence the cast.
        return self.up(torch.relu(self.down(h.to(self.down.weight.dtype))))  # (..., H)


class AdapterLinear(nn.Module):
    """A frozen nn.Linear `base` followed by an adapter: `h + adapter(h)`, h = base(x)."""

    def __init__(self, base: nn.Linear, width: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.adapter = Bottleneck(base.out_features, width, device=base.weight.device)

    def forward(self, x: Tensor) -> Tensor:  # x: (..., d_in)
        h = self.base(x)  # (..., H)
        return h + self.adapter(h).to(h.dtype)  # (..., H)


def adapter_width(hidden: int, reduction: int) -> int:
    """m = H / reduction (at least 1): 384 / 16 = 24 for MiniLM, 768 / 16 = 48 for BERT-base."""
    return max(1, hidden // reduction)


def position_names(model: nn.Module, kind: str) -> list[str]:
    """The linears of `model` that `kind` puts an adapter after, in model order."""
    if kind not in KINDS:
        raise ValueError(f"adapter_kind must be one of {KINDS}, got {kind!r}")
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
             and inject.layer_suffix(name) in POSITIONS[kind]]
    if not names:
        raise ValueError(f"the model has no linear at the {kind} positions "
                         f"{', '.join(POSITIONS[kind])} (BERT's module names)")
    return names


def inject_adapters(model: nn.Module, kind: str = "pfeiffer", reduction: int = 16) -> list[str]:
    """Put an adapter after each projection of `kind`'s placement, then freeze all but the
    adapters. Returns the wrapped module names in model order."""
    if any(isinstance(m, AdapterLinear) for m in model.modules()):
        raise ValueError("model already holds adapters; inject into a fresh model")
    if not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"reduction must be a positive int, got {reduction!r}")
    names = position_names(model, kind)
    width = adapter_width(model.get_submodule(names[0]).out_features, reduction)
    model.requires_grad_(False)
    inject.wrap_linears(model, names, lambda _, linear: AdapterLinear(linear, width))
    return names


def adapter_weights(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """The adapters in an encoder's trained state, by wrapped module name:

        {"encoder.layer.0.output.dense.adapter.down.weight": W, ...}
        -> {"encoder.layer.0.output.dense": {"down.weight": W, "down.bias": ..., ...}}

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


def apply(encoder: nn.Module, cfg, sources: Sequence[Path] = ()) -> dict:
    """`method: adapter`: bottleneck adapters at `cfg.adapter_kind`'s positions, width
    H / `cfg.reduction`; everything else frozen."""
    inject_adapters(encoder, cfg.adapter_kind, cfg.reduction)
    return {}
