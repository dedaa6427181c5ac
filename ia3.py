"""IA3 in a frozen encoder: learned vectors that rescale keys, values and feed-forward
activations.

Implements (IA)^3, "Infused Adapter by Inhibiting and Amplifying Inner Activations" (Liu et al.
2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning"). Three vectors per layer, each multiplied elementwise into an activation:

    keys      l_k * (W_k x + b_k)      l_k: (H,)
    values    l_v * (W_v x + b_v)      l_v: (H,)
    ffn       W_2 (l_ff * a) + b_2     l_ff: (I,), a the intermediate activations (after GELU)

All start at 1, so the encoder is unchanged at step 0; per layer 2H + I parameters (13,824 for
MiniLM's 6 layers, 55,296 for BERT-base). The vectors stay fp32 whatever the base dtype. This
is PEFT's IA3 (`IA3Config` with `feedforward_modules` for the third), which the tests hold ours
equal to; formats/peft.py writes PEFT's folder of it. Note that PEFT's default targets for
BERT (`key`, `value`, `output.dense`) also rescale the attention output's input, since
`output.dense` matches `attention.output.dense` too; here the three are the paper's.

Left out: IA3 on other linears, merging the vectors into the weights.

Dimensions: B batch, T subword tokens, H hidden, I feed-forward width.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

import inject

# Layer suffixes of the linears whose output (keys, values) or input (the feed-forward
# activations, entering the feed-forward output projection) IA3 rescales.
OUTPUT_SCALED = ("attention.self.key", "attention.self.value")
INPUT_SCALED = ("output.dense",)


class IA3Linear(nn.Module):
    """A frozen nn.Linear `base` whose output (`base(x) * l`) or input (`base(x * l)`) is
    rescaled by a learned vector l, `ia3_scale`, that starts at 1."""

    def __init__(self, base: nn.Linear, scale_input: bool):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale_input = scale_input
        width = base.in_features if scale_input else base.out_features
        self.ia3_scale = nn.Parameter(torch.ones(width, device=base.weight.device))  # (I,) or (H,)

    def forward(self, x: Tensor) -> Tensor:  # x: (..., d_in)
        if self.scale_input:
            return self.base(x * self.ia3_scale.to(x.dtype))  # (..., d_out)
        y = self.base(x)  # (..., d_out)
        return y * self.ia3_scale.to(y.dtype)

    def extra_repr(self) -> str:
        return "scales the input" if self.scale_input else "scales the output"


def inject_ia3(model: nn.Module) -> list[str]:
    """Wrap the key and value projections and the feed-forward output projection of every
    layer in an IA3Linear, then freeze all but the vectors. Returns the wrapped names."""
    if any(isinstance(m, IA3Linear) for m in model.modules()):
        raise ValueError("model already holds IA3 vectors; inject into a fresh model")
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
             and inject.layer_suffix(name) in OUTPUT_SCALED + INPUT_SCALED]
    if not names:
        raise ValueError(f"the model has no linear named {', '.join(OUTPUT_SCALED + INPUT_SCALED)}"
                         f" (BERT's module names)")
    model.requires_grad_(False)
    inject.wrap_linears(model, names, lambda name, linear: IA3Linear(
        linear, scale_input=inject.layer_suffix(name) in INPUT_SCALED))
    return names


def ia3_layers(model: nn.Module) -> dict[str, IA3Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, IA3Linear)}


# ---------------------------------------------------------------------------------------------
# The method as the table applies it (methods.py)


def apply(encoder: nn.Module, cfg, sources: Sequence[Path] = ()) -> dict:
    """`method: ia3`: the three vectors in every layer; everything else frozen."""
    inject_ia3(encoder)
    return {}
