"""LoRA and DoRA on the nn.Linear layers of a frozen encoder: inject, merge, read back.

Implements low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models"): a frozen linear layer gains a trainable update `scale * B @ A` of rank r, with B = 0 at
init so the model is unchanged at step 0 and `scale = alpha / r`. With `rslora=True` the scale is
`alpha / sqrt(r)` (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with
LoRA"), which keeps the update from shrinking as r grows.

Two variants of the family live here too:
- **DoRA** (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"), `DoRALinear`: the
  adapted weight W0 + s B A is split into a direction, normalised per output row, and a
  trainable magnitude m per row: W' = m * (W0 + s B A) / ||W0 + s B A||. m starts at ||W0||, so
  the layer is the identity at step 0. As in the paper (Sec. 4.3) and PEFT, the norm is treated
  as a constant in the backward pass. Its cost over LoRA: forming B A (d_out, d_in) and its row
  norms at every forward.
- **LoRA+** (Hayou et al. 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models"),
  `lora_plus_groups`: B learns at λ times A's learning rate, in an optimizer group of its own.

Left out: LoRA on embeddings or convolutions, trainable biases, several adapters per layer
(fusion.py combines adapters), per-layer rank or alpha, tied weights (casting the frozen base
re-creates parameters). Which linears get adapters is inject.py's rule (names, suffixes, the
presets `attention` and `all-linear`).

A run's `weights.safetensors` holds what the run trained by parameter name (`...query.lora_A`,
`...query.lora_B`, with DoRA `...query.lora_magnitude`, the head); `adapter_factors` reads the
factors back out of it, and `load_factors` puts them into injected layers. PEFT's folder format,
both ways, is formats/peft.py's; like loralib, this file needs nothing of the project but the
choice of linears (inject.py).

Dimensions: B batch, T subword tokens, H hidden, r rank, d_in / d_out the input / output width of
a wrapped nn.Linear (H and H for BERT's attention projections).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import inject


def lora_scale(alpha: float, rank: int, rslora: bool) -> float:
    """The factor s of the update s B A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


class MergeableLinear(nn.Module):
    """A frozen nn.Linear `base` plus an update ΔW = `delta_weight()` (d_out, d_in).

    `merge()` adds ΔW to base.weight, so the forward is one matmul; `unmerge()` subtracts it
    again. `merged` is a plain bool that only these two set; both are idempotent and ignore
    train()/eval(). It is not saved: a state dict taken while merged holds the merged base weight
    and does not say so. Runs save only what trains, never the base, so they never meet this.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.merged = False

    def delta_weight(self) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW to base.weight; a no-op when already merged.

        Exact up to rounding in base.weight's dtype: in fp32 unmerge(merge(W)) == W to ~1e-7,
        with a bf16 base the round trip loses bf16 precision.
        """
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)  # (d_out, d_in)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔW from base.weight; a no-op when not merged."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)  # (d_out, d_in)
            self.merged = False


class LoRALinear(MergeableLinear):
    """`base(x) + dropout(x) @ A.T @ B.T * scale` around a frozen nn.Linear kept as `base`.

    Merged, ΔW = `scale * B @ A` sits in base.weight (see MergeableLinear). Training while merged
    is an error: a merged forward skips A and B, so their gradients would silently stay empty;
    unmerge first (evaluating under no_grad is fine).
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        rslora: bool = False,
    ) -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{type(self).__name__} wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        super().__init__(base)
        self.rank, self.alpha, self.dropout_p, self.rslora = rank, float(alpha), dropout, rslora
        self.scale = lora_scale(alpha, rank, rslora)
        # Identity at p = 0 (the default), so no mask kernel runs.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # The factors are fp32 whatever the base dtype: they are what the optimizer updates.
        kwargs = {"device": base.weight.device, "dtype": torch.float32}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **kwargs))  # (r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **kwargs))  # (d_out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's init, as loralib/peft

    def check_not_merged_for_training(self) -> None:
        if torch.is_grad_enabled() and self.lora_A.requires_grad:
            raise RuntimeError(
                f"{type(self).__name__} is merged, so its adapter would get no gradient; call "
                "unmerge_lora(model) before training, or run inference under torch.no_grad()"
            )

    def adapter_output(self, h: Tensor) -> Tensor:
        """`h @ A.T @ B.T * scale` (..., d_out) in the factors' dtype, for h (..., d_in)."""
        # Outside autocast a bf16 base gives bf16 activations while A and B stay fp32, hence the
        # cast; under autocast the matmuls run in the autocast dtype either way.
        return h.to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T * self.scale

    def forward(self, x: Tensor) -> Tensor:  # x: (..., d_in), e.g. (B, T, H)
        if self.merged:
            self.check_not_merged_for_training()
            return self.base(x)  # (..., d_out)
        y = self.base(x)  # (..., d_out)
        delta = self.adapter_output(self.dropout(x))  # (..., r) then (..., d_out)
        return y + delta.to(y.dtype)  # (..., d_out)

    def delta_weight(self) -> Tensor:
        """`scale * B @ A` in fp32, also when called under autocast."""
        with torch.autocast(self.lora_A.device.type, enabled=False):
            return self.lora_B @ self.lora_A * self.scale  # (d_out, d_in)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:.4g}"


class DoRALinear(LoRALinear):
    """DoRA: `m * (W0 + s B A) / ||W0 + s B A||` per output row, plus the base's bias.

    The forward never forms W': with n the row norms (held constant in the backward pass, as
    the paper and PEFT do) and f = m / n,

        y = base(x) + (f - 1) * (h W0^T) + f * s (h A^T B^T),    h = dropout(x)

    which is f * (x W0^T + s x A^T B^T) + bias when dropout is off. That is PEFT's arrangement,
    so the two agree on copied weights. m (`lora_magnitude`, d_out) is fp32 and starts at the
    norms of W0: f = 1 and the layer is the identity at step 0 (with a bf16-cast base, within
    bf16 rounding of it, since m was measured on the fp32 weight).

    Merged, base.weight holds f * (W0 + ΔW); unmerge divides f back out, so the round trip is
    exact up to rounding.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False) -> None:
        super().__init__(base, rank, alpha, dropout, rslora)
        with torch.no_grad():
            norms = torch.linalg.vector_norm(base.weight.float(), dim=1)  # (d_out,)
        self.lora_magnitude = nn.Parameter(norms)  # (d_out,)
        self.merge_factor: Tensor | None = None  # f at merge time, to divide back out

    def weight_norms(self) -> Tensor:
        """||W0 + s B A|| per output row (d_out,), fp32, detached: a constant in backward."""
        with torch.no_grad(), torch.autocast(self.lora_A.device.type, enabled=False):
            return torch.linalg.vector_norm(self.base.weight.float() + self.delta_weight(), dim=1)

    def forward(self, x: Tensor) -> Tensor:  # x: (..., d_in)
        if self.merged:
            self.check_not_merged_for_training()
            return self.base(x)  # (..., d_out)
        y = self.base(x)  # (..., d_out)
        h = self.dropout(x)  # (..., d_in)
        if h is x:  # no dropout: x W0^T is the base output less its bias, no second matmul
            base_h = y if self.base.bias is None else y - self.base.bias
        else:
            base_h = F.linear(h, self.base.weight)  # (..., d_out)
        factor = self.lora_magnitude / self.weight_norms()  # (d_out,)
        dora = (factor - 1) * base_h + factor * self.adapter_output(h)  # (..., d_out)
        return y + dora.to(y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """base.weight <- f * (W0 + ΔW), f from the unmerged weight; a no-op when merged."""
        if not self.merged:
            factor = self.lora_magnitude / self.weight_norms()  # (d_out,)
            weight = factor[:, None] * (self.base.weight.float() + self.delta_weight())
            self.base.weight.copy_(weight.to(self.base.weight.dtype))
            self.merge_factor, self.merged = factor, True

    @torch.no_grad()
    def unmerge(self) -> None:
        """base.weight <- W' / f - ΔW, with the f of the merge; a no-op when not merged."""
        if self.merged:
            weight = self.base.weight.float() / self.merge_factor[:, None] - self.delta_weight()
            self.base.weight.copy_(weight.to(self.base.weight.dtype))
            self.merge_factor, self.merged = None, False

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear (DoRA included) of `model` by qualified module name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(
    model: nn.Module,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    rslora: bool = False,
    dora: bool = False,
) -> list[str]:
    """Wrap each nn.Linear matched by `targets` in a LoRALinear (a DoRALinear with `dora`), then
    freeze all but the adapters.

    Targets are names, dotted suffixes (PEFT's rule: `output.dense` matches both the attention's
    and the feed-forward output) or the presets `attention` and `all-linear` (inject.py). The
    rank and alpha a run uses are its config's (config.py). Returns the wrapped module names in
    model order.
    """
    wrapped = list(lora_layers(model))
    if wrapped:
        raise ValueError(
            f"model already holds {len(wrapped)} LoRA layers (first: {wrapped[0]}); "
            "inject_lora wraps a fresh model once, never a wrapped one again"
        )
    names = inject.linear_names(model, targets)
    layer = DoRALinear if dora else LoRALinear
    inject.wrap_linears(model, names, lambda _, linear: layer(linear, rank, alpha, dropout, rslora))
    freeze_all_but_lora(model)
    return names


def freeze_all_but_lora(model: nn.Module) -> None:
    """requires_grad only on lora_A / lora_B (and DoRA's lora_magnitude)."""
    for module in model.modules():
        for param in module.parameters(recurse=False):
            # A LoRALinear's own parameters are exactly its factors (and magnitude).
            param.requires_grad_(isinstance(module, LoRALinear))


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRALinear (idempotent)."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Unmerge every LoRALinear (idempotent)."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def lora_plus_groups(model: nn.Module, lr: float, ratio: float, weight_decay: float
                     ) -> list[dict]:
    """LoRA+: every B factor in an optimizer group of its own at `ratio` x `lr` (A, the
    magnitudes and the head stay at `lr`). Ratio 0 or 1 is plain LoRA: no group.

    Hayou et al. show that with equal rates B learns too slowly when the width is large, and
    suggest ratios around 16 for encoder models.
    """
    if ratio in (0, 1):
        return []
    factors = [layer.lora_B for layer in lora_layers(model).values() if layer.lora_B.requires_grad]
    return [{"name": f"LoRA+ B factors (lr x {ratio:g})", "params": factors,
             "weight_decay": weight_decay, "lr": lr * ratio}]


# ---------------------------------------------------------------------------------------------
# The method as the table applies it (methods.py)


def apply(encoder: nn.Module, cfg, sources: Sequence[Path] = ()) -> dict:
    """`method: lora`: adapters on `cfg.targets` (DoRA with `cfg.dora`); everything else frozen."""
    inject_lora(encoder, cfg.targets, cfg.rank, cfg.alpha, cfg.lora_dropout, cfg.rslora,
                cfg.dora)
    return {}


def optimizer_groups(model: nn.Module, cfg) -> list[dict]:
    """`lora_plus_ratio`: LoRA+'s group of B factors (none when off)."""
    return lora_plus_groups(model, cfg.lr, cfg.lora_plus_ratio, cfg.weight_decay)


# ---------------------------------------------------------------------------------------------
# Reading adapters back, and PEFT's folder format


def adapter_factors(state: dict[str, Tensor], prefix: str = "") -> dict[str, tuple[Tensor, Tensor]]:
    """(A, B) of each adapted linear in `state`, by module name without `prefix`.

    The keys are those LoRALinear gives its factors, `<prefix><module>.lora_A` (r, d_in) and
    `.lora_B` (d_out, r); other keys are passed over. A run's weights.safetensors (the tagger's
    trainable parameters, its encoder under the prefix `encoder.`) holds, with A and B tensors:

        {"encoder.encoder.layer.0.attention.self.query.lora_A": A,
         "encoder.encoder.layer.0.attention.self.query.lora_B": B, "head.weight": ..., ...}
        -> {"encoder.layer.0.attention.self.query": (A, B)}          # prefix "encoder."

    A factor without its partner, or an A and B of different rank, is a ValueError naming the key.
    """
    pairs: dict[str, dict[str, Tensor]] = {}  # module -> {"lora_A": A, "lora_B": B}
    for key, tensor in state.items():
        module, _, factor = key.rpartition(".")
        if key.startswith(prefix) and factor in ("lora_A", "lora_B"):
            pairs.setdefault(module[len(prefix) :], {})[factor] = tensor
    factors = {}
    for module, pair in pairs.items():
        missing = {"lora_A", "lora_B"} - set(pair)
        if missing:
            raise ValueError(f"{prefix}{module}.{missing.pop()} is missing")
        A, B = pair["lora_A"], pair["lora_B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise ValueError(
                f"{prefix}{module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} are not "
                "(r, d_in) and (d_out, r)"
            )
        factors[module] = (A, B)
    return factors


def load_factors(model: nn.Module, factors: dict[str, tuple[Tensor, Tensor]],
                 magnitudes: dict[str, Tensor] | None = None) -> None:
    """Copy each (A, B) of `factors` (as `adapter_factors` returns them), and with DoRA each
    layer's magnitude from `magnitudes` (module name -> (d_out,)), into its layer.

    Every layer needs its pair (and a DoRA layer its magnitude), in its shapes. A merged layer is
    an error: its base weight holds the old update, which unmerging would then fail to take out.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model holds no LoRA layers; call inject_lora first")
    magnitudes = magnitudes or {}
    dora = {name for name, layer in layers.items() if isinstance(layer, DoRALinear)}
    problems = [f"missing {name}" for name in layers if name not in factors]
    problems += [f"unexpected {name}" for name in factors if name not in layers]
    problems += [f"missing the DoRA magnitude of {name}" for name in dora if name not in magnitudes]
    problems += [f"unexpected magnitude {name}" for name in magnitudes if name not in dora]
    problems += [f"{name} is merged (unmerge it first)" for name in layers if layers[name].merged]
    for name, (A, B) in factors.items():
        layer = layers.get(name)
        if layer is not None and (A.shape, B.shape) != (layer.lora_A.shape, layer.lora_B.shape):
            problems.append(
                f"{name} has A {tuple(A.shape)} and B {tuple(B.shape)}, expected "
                f"{tuple(layer.lora_A.shape)} and {tuple(layer.lora_B.shape)}"
            )
    for name, m in magnitudes.items():
        if name in dora and m.shape != layers[name].lora_magnitude.shape:
            problems.append(f"{name}: magnitude {tuple(m.shape)}, expected "
                            f"{tuple(layers[name].lora_magnitude.shape)}")
    if problems:
        raise ValueError("cannot load LoRA factors: " + "; ".join(problems))
    with torch.no_grad():
        for name, (A, B) in factors.items():
            layers[name].lora_A.copy_(A)
            layers[name].lora_B.copy_(B)
        for name, m in magnitudes.items():
            layers[name].lora_magnitude.copy_(m)
