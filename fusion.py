"""Fusing LoRA adapters trained on different domains (say chemicals and diseases) for a new task.

The source adapters stay frozen; a new task head (and CRF) is trained for the target labels,
together with the few fusion parameters below. Two methods, each stated with its space:

- **Weight space, exact** (`MergedFusionLinear`): ΔW = Σ_i w_i ΔW_i with ΔW_i = s_i B_i A_i.
  Concatenating the factors, A = [A_1; A_2] (r1 + r2, d_in) and B = [w_1 s_1 B_1, w_2 s_2 B_2]
  (d_out, r1 + r2), gives B A = Σ_i w_i s_i B_i A_i exactly, so the fused layer is one LoRA of
  rank r1 + r2. The weights w are fixed (from the config) or learned: one scalar per adapter per
  wrapped linear, 2 x 48 = 96 parameters for BERT-base's attention, starting at w_i = 1/N (the
  average of the ΔW). Once fixed, ΔW can be merged into the base weight: no cost at inference.
  An optional truncated SVD brings ΔW back to a chosen rank k (approximate; its relative
  Frobenius error is reported, 0 at full rank).
  Unlike PEFT's `add_weighted_adapter(combination_type="linear")`, which averages the A's and the
  B's separately (so that B A picks up cross terms B_1 A_2), this is the weighted sum of the ΔW.
- **Output space, learned** (`AttentionFusionLinear`): AdapterFusion (Pfeiffer et al. 2021)
  for LoRA. For each token, a query from the layer input x and keys from the adapters' outputs
  δ_i = s_i B_i A_i x give softmax weights over the adapters, and the layer outputs
  base(x) + Σ_i α_i δ_i. Not a fixed ΔW: the mix changes per token, so it cannot be merged.
  Query (d_in → d) and key (d_out → d) projections of width d = 16 add (d_in + d_out) d
  parameters per wrapped linear: 1.2M for BERT-base's 48 attention linears, against ~21M for
  AdapterHub's AdapterFusion, whose query, key and value are full H x H matrices per layer. The
  values are the adapter outputs themselves (no value matrix), and the query starts at zero, so
  every score is 0, α_i = 1/N, and the layer starts at base(x) + (1/N) Σ_i δ_i.

Both learned modes therefore start from the same function, base(x) + mean_i ΔW_i x (equal up to
float rounding), so a comparison of the two measures what training does, not where it began.

Left out: more than one adapter set per layer type, fusing adapters of different encoders, and
fusion of full fine-tuned models.

Dimensions: B batch, T subword tokens, N adapters, r rank, d_in / d_out a wrapped linear's widths,
d the attention fusion's query/key width.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

import lora

# Where a run's weights.safetensors keeps the encoder's parameters: model.Tagger holds the encoder
# as `self.encoder` (model.py imports this file, so the prefix is spelled here).
RUN_ENCODER_PREFIX = "encoder."


@dataclass
class SourceAdapter:
    """One trained LoRA adapter: per wrapped linear, its factors A (r, d_in), B (d_out, r) and
    scale s, so that ΔW = s B A."""
    name: str
    model: str
    factors: dict[str, tuple[Tensor, Tensor, float]]


def load_source_adapter(run: str | Path) -> SourceAdapter:
    """The adapter of a finished `method: lora` run folder (config.json + weights.safetensors),
    read with `lora.adapter_factors` and scaled as the run's config says."""
    run = Path(run)
    try:
        config = json.loads((run / "config.json").read_text())
        weights = load_file(str(run / "weights.safetensors"))
    except (OSError, ValueError) as error:
        raise ValueError(f"fusion source {run}: expected a finished LoRA run folder holding "
                         f"config.json and weights.safetensors ({error})") from error
    if config.get("method") != "lora":
        raise ValueError(f"fusion source {run}: method is {config.get('method')!r}, not 'lora'")
    scale = lora.lora_scale(config["alpha"], config["rank"], config["rslora"])
    try:
        pairs = lora.adapter_factors(weights, RUN_ENCODER_PREFIX)
    except ValueError as error:
        raise ValueError(f"fusion source {run}: weights.safetensors: {error}") from error
    if not pairs:
        raise ValueError(f"fusion source {run}: weights.safetensors holds no LoRA factors")
    factors = {module: (A, B, scale) for module, (A, B) in pairs.items()}
    return SourceAdapter(config["name"], config["model"], factors)


def check_compatible(sources: Sequence[SourceAdapter], model: str) -> None:
    """Sources must adapt the same encoder at the same linears, each with consistent shapes."""
    for source in sources:
        if source.model != model:
            raise ValueError(f"fusion source {source.name!r} adapts {source.model!r}, but this "
                             f"run's model is {model!r}")
    first = sources[0]
    for source in sources[1:]:
        if set(source.factors) != set(first.factors):
            raise ValueError(f"fusion sources {first.name!r} and {source.name!r} adapt different "
                             f"linears: {sorted(set(source.factors) ^ set(first.factors))[:4]}")


class MergedFusionLinear(lora.MergeableLinear):
    """base(x) + x A.T (B diag(w ⊗ 1_r)).T: the weighted sum of the adapters' ΔW as one LoRA of
    rank Σ r_i (weight space, exact). `weights` fixed (a buffer, as given) or learned (a
    parameter starting at 1/N each: the average of the ΔW, where attention fusion starts too).
    `merge()` / `unmerge()` (fixed weights only) are lora.MergeableLinear's, as for LoRALinear."""

    def __init__(self, base: nn.Linear, factors: Sequence[tuple[Tensor, Tensor, float]],
                 weights: Sequence[float] | None):
        super().__init__(base)
        A = torch.cat([a for a, _, _ in factors])  # (R, d_in), R = Σ r_i
        B = torch.cat([s * b for _, b, s in factors], dim=1)  # (d_out, R), scales folded in
        self.register_buffer("A", A.float())
        self.register_buffer("B", B.float())
        # adapter of each of the R concatenated rank components
        self.register_buffer("owner", torch.cat([torch.full((a.shape[0],), i)
                                                 for i, (a, _, _) in enumerate(factors)]))
        self.learned = weights is None
        if self.learned:
            n = len(factors)
            self.weights = nn.Parameter(torch.full((n,), 1.0 / n))  # (N,): the average of the ΔW
        else:
            self.register_buffer("weights", torch.tensor([float(w) for w in weights]))

    def delta_weight(self) -> Tensor:
        """Σ_i w_i s_i B_i A_i (d_out, d_in)."""
        return (self.B * self.weights[self.owner]) @ self.A

    def forward(self, x: Tensor) -> Tensor:  # x: (..., d_in)
        y = self.base(x)  # (..., d_out)
        if self.merged:
            return y
        h = x @ self.A.T.to(x.dtype)  # (..., R)
        B = (self.B * self.weights[self.owner]).to(x.dtype)  # (d_out, R)
        return y + (h @ B.T).to(y.dtype)  # (..., d_out)

    @torch.no_grad()
    def truncate(self, rank: int) -> float:
        """Replace ΔW by its best rank-`rank` approximation (truncated SVD), weights fixed first;
        returns the relative Frobenius error ‖ΔW - ΔW_k‖ / ‖ΔW‖."""
        if self.learned:
            raise ValueError("SVD truncation needs fixed weights; learned ones still change")
        delta = self.delta_weight()  # (d_out, d_in)
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)  # (d_out, m) (m,) (m, d_in)
        k = min(rank, S.numel())
        self.B = U[:, :k] * S[:k]  # (d_out, k)
        self.A = Vh[:k]  # (k, d_in)
        self.owner = torch.zeros(k, dtype=torch.long, device=delta.device)
        self.weights = torch.ones(1, device=delta.device)
        kept = self.delta_weight()
        return float(torch.linalg.norm(delta - kept) / torch.linalg.norm(delta).clamp_min(1e-12))

    def merge(self) -> None:
        """Fold the fused ΔW into the base weight (fixed weights only); idempotent."""
        if self.learned:
            raise ValueError("merging needs fixed weights; learned ones still change")
        super().merge()


class AttentionFusionLinear(nn.Module):
    """base(x) + Σ_i α_i(x) δ_i(x), δ_i = s_i B_i A_i x, α = softmax over adapters of
    <query(x), key(δ_i)> / sqrt(d) per token (output space, learned, not mergeable). The query
    starts at zero, so α = 1/N: base(x) + mean_i δ_i, a learned merge's starting point."""

    def __init__(self, base: nn.Linear, factors: Sequence[tuple[Tensor, Tensor, float]],
                 dim: int = 16):
        super().__init__()
        self.base = base.requires_grad_(False)
        # Ranks may differ: concatenate the A's, and give each adapter a block of B's columns.
        self.register_buffer("A", torch.cat([a for a, _, _ in factors]).float())  # (R, d_in)
        B = torch.zeros(len(factors), base.out_features, self.A.shape[0])  # (N, d_out, R)
        begin = 0
        for i, (a, b, s) in enumerate(factors):
            B[i, :, begin:begin + a.shape[0]] = s * b
            begin += a.shape[0]
        self.register_buffer("B", B)
        self.query = nn.Linear(base.in_features, dim, bias=False)
        self.key = nn.Linear(base.out_features, dim, bias=False)
        nn.init.zeros_(self.query.weight)  # scores 0, α = 1/N at step 0: the plain average

    def adapter_outputs(self, x: Tensor) -> Tensor:
        """δ_i for every adapter: (..., N, d_out)."""
        h = x @ self.A.T.to(x.dtype)  # (..., R)
        return torch.einsum("...r,nor->...no", h, self.B.to(x.dtype))  # (..., N, d_out)

    def mixing(self, x: Tensor, deltas: Tensor) -> Tensor:
        """α (..., N): softmax over adapters of query·key / sqrt(d)."""
        q = self.query(x)  # (..., d)
        k = self.key(deltas)  # (..., N, d)
        scores = (k @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(q.shape[-1])  # (..., N)
        return F.softmax(scores.float(), dim=-1)

    def forward(self, x: Tensor) -> Tensor:  # x: (..., d_in)
        y = self.base(x)  # (..., d_out)
        deltas = self.adapter_outputs(x)  # (..., N, d_out)
        alpha = self.mixing(x, deltas).to(deltas.dtype)  # (..., N)
        return y + (alpha.unsqueeze(-1) * deltas).sum(-2).to(y.dtype)  # (..., d_out)


def fuse(encoder: nn.Module, sources: Sequence[SourceAdapter], mode: str,
         weights: Sequence[float] | None = None, rank: int = 0, dim: int = 16) -> dict:
    """Swap every linear the sources adapt for a fusion of their adapters, and freeze the rest.

    mode "merge": weight space, `weights` fixed (one per source) or None to learn them; `rank` >
    0 truncates each fused ΔW by SVD (fixed weights only). mode "attention": output space.
    Returns a report: the fused linears and, when truncated, the mean/max relative SVD error.
    """
    if mode not in ("merge", "attention"):
        raise ValueError(f"fusion must be 'merge' or 'attention', got {mode!r}")
    if weights is not None and len(weights) != len(sources):
        raise ValueError(f"fusion_weights has {len(weights)} values for {len(sources)} adapters")
    if rank and (mode != "merge" or weights is None):
        raise ValueError("fusion_rank (SVD truncation) needs fusion: merge with fixed weights")
    if lora.lora_layers(encoder):
        raise ValueError("the encoder already holds LoRA layers; fuse into a fresh encoder")
    encoder.requires_grad_(False)
    errors = []
    for module in sources[0].factors:
        base = encoder.get_submodule(module)
        factors = [s.factors[module] for s in sources]
        for a, b, _ in factors:
            if a.shape[1] != base.in_features or b.shape[0] != base.out_features:
                raise ValueError(f"fusion: adapter of {module} is ({b.shape[0]} x {a.shape[1]})"
                                 f", the encoder's linear is ({base.out_features} x "
                                 f"{base.in_features})")
        if mode == "merge":
            fused = MergedFusionLinear(base, factors, weights)
            if rank:
                errors.append(fused.truncate(rank))
        else:
            fused = AttentionFusionLinear(base, factors, dim)
        encoder.set_submodule(module, fused.to(base.weight.device), strict=True)
    report = {"fused_linears": len(sources[0].factors)}
    if errors:
        report["svd_relative_error_mean"] = sum(errors) / len(errors)
        report["svd_relative_error_max"] = max(errors)
    return report


def fusion_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (MergedFusionLinear,
                                                          AttentionFusionLinear))]
