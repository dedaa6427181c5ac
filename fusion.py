"""Fusing adapters trained on different domains (say chemicals and diseases) for a new task.

The sources are LoRA adapters (lora.py) or bottleneck adapters (adapters.py), all of one kind.
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
  base(x) + V Σ_i α_i δ_i. Not a fixed ΔW: the mix changes per token, so it cannot be merged.
- **Bottleneck adapters, output space, learned** (`BottleneckFusionBlock`): AdapterFusion's own
  setting, AdapterHub's `Fuse` with its `dynamic` config. In each output block the sources'
  adapters read what they read alone (adapters.py: LN(h + r), h or r), the query reads it too,
  and the block outputs LN(h + r + V Σ_i α_i δ_i). A bottleneck adapter is not a ΔW, so
  `fusion_mode: merge` over them is an error, as is a fusion of LoRA and bottleneck sources
  together.

Both attention fusions share one attention over sources (`SourceAttention`), in two layouts:
`fusion_dim: 0` is AdapterHub's (query, key and value H x H per position, with a value matrix V
starting at the identity, unscaled scores dropped out in training, and the regulariser
0.01 ‖I - V‖² per position added to the loss: `value_regularizer`), about 21M parameters for
BERT-base's 12 positions; `fusion_dim: d, fusion_value: false` is the narrow variant this project
ran first (query and key H -> d without biases, scores / sqrt(d), V = I), 2 H d per position.
For LoRA, H is the fused linear's output width and the query reads its input. The query starts
at zero, so every α_i = 1/N and each attention fusion starts at its sources' average. A learned
merge starts there too, so both learned modes over LoRA start from the same function, base(x) +
mean_i ΔW_i x (equal up to float rounding), and a comparison of the two measures what training
does, not where it began.

AdapterHub's `Fuse` over parallel adapters adds the block's input r twice (its fusion adds r as
the residual and its parallel adapter's post-step adds it again: LN(h + 2 r + ...)); here it is
added once, as for a single parallel adapter.

Left out: more than one adapter set per layer type, fusing adapters of different encoders, DoRA
sources (a DoRA adapter rescales its base weight, so it is not an update to add), and fusion of
full fine-tuned models.

Dimensions: B batch, T subword tokens, N adapters, r rank, d_in / d_out a wrapped linear's widths,
d the attention fusion's query/key width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import adapters
import lora

MODES = ("merge", "attention")  # the choices of `fusion_mode`


@dataclass
class SourceAdapter:
    """One trained LoRA adapter: per wrapped linear, its factors A (r, d_in), B (d_out, r) and
    scale s, so that ΔW = s B A."""
    name: str
    factors: dict[str, tuple[Tensor, Tensor, float]]


@dataclass
class SourceBottlenecks:
    """One run's trained bottleneck adapters: per output block, the tensors of its adapter
    (`down.weight` (m, H), `down.bias`, `up.weight` (H, m), `up.bias`), and the options the run
    resolved (`BOTTLENECK_OPTIONS`)."""
    name: str
    adapters: dict[str, dict[str, Tensor]]
    options: dict


# What a bottleneck source's config must say for its adapters to be rebuilt as they ran.
BOTTLENECK_OPTIONS = ("adapter_kind", "original_ln_before", "non_linearity", "adapter_scaling")


def source_kind(source) -> str | None:
    """What a finished run (`source.weights`: its trained encoder weights) gives a fusion:
    "lora" (LoRA factors), "adapter" (bottleneck adapters) or None (nothing to fuse)."""
    try:
        if lora.adapter_factors(source.weights):
            return "lora"
        return "adapter" if adapters.adapter_weights(source.weights) else None
    except ValueError as error:  # a factor without its partner, an adapter without a tensor
        raise ValueError(f"fusion source {source.folder}: weights.safetensors: {error}") from error


def load_source(source) -> SourceAdapter | SourceBottlenecks:
    """The adapter a finished run trained, from `source.config` (its resolved config) and
    `source.weights` (the encoder's part of its trained weights, as model.source_runs reads
    them): LoRA factors, scaled as the run's config says, or bottleneck adapters."""
    config = source.config
    if source_kind(source) == "lora":
        scale = lora.lora_scale(config["alpha"], config["rank"], config["rslora"])
        factors = {module: (A, B, scale)
                   for module, (A, B) in lora.adapter_factors(source.weights).items()}
        return SourceAdapter(config["name"], factors)
    return SourceBottlenecks(config["name"], adapters.adapter_weights(source.weights),
                             {key: config[key] for key in BOTTLENECK_OPTIONS})


class SourceAttention(nn.Module):
    """Per token, Σ_i α_i V δ_i (..., d_v) over the sources' outputs δ (..., N, d_v), with α =
    softmax over i of the scores <query(q), key(δ_i)>, q (..., d_q) what the fusion reads. The
    attention over sources that both attention fusions share.

    `dim` 0 is AdapterHub's `BertFusion` with its `dynamic` config: query (d_q -> d_v) and key
    (d_v -> d_v) with biases, scores unscaled (temperature 1) and, in training, dropped out at
    rate `score_dropout` before the softmax (AdapterHub takes the encoder's attention dropout).
    `dim` > 0 is this project's narrow variant: d-wide query and key without biases, scores /
    sqrt(d), no dropout. `value`: a (d_v, d_v) value matrix V, no bias, starting at the identity
    (AdapterHub puts 1e-6 off its diagonal), else V = I. AdapterHub applies V to each δ_i before
    mixing; V Σ α_i δ_i is the same sum, at one matmul instead of N.

    The query starts at zero (AdapterHub draws it from N(0, 0.02)), so every score is 0 and α =
    1/N: the fusion starts as the plain average of its sources. The key keeps nn.Linear's init.
    """

    def __init__(self, query_width: int, value_width: int, dim: int, value: bool,
                 score_dropout: float = 0.0, device=None):
        super().__init__()
        adapterhub = dim == 0
        width = dim or value_width  # d
        self.query = nn.Linear(query_width, width, bias=adapterhub, device=device)  # (d, d_q)
        self.key = nn.Linear(value_width, width, bias=adapterhub, device=device)  # (d, d_v)
        nn.init.zeros_(self.query.weight)
        if adapterhub:
            nn.init.zeros_(self.query.bias)
        self.value = None
        if value:
            self.value = nn.Linear(value_width, value_width, bias=False, device=device)
            nn.init.eye_(self.value.weight)  # (d_v, d_v)
        self.scale = 1.0 if adapterhub else 1.0 / math.sqrt(width)
        self.score_dropout = nn.Dropout(score_dropout if adapterhub else 0.0)

    def weights(self, q: Tensor, deltas: Tensor) -> Tensor:
        """α (..., N) for the query input q (..., d_q) and the sources' outputs (..., N, d_v)."""
        dtype = self.query.weight.dtype  # a bf16 base outside autocast: fp32 here
        query = self.query(q.to(dtype))  # (..., d)
        keys = self.key(deltas.to(dtype))  # (..., N, d)
        scores = (keys @ query.unsqueeze(-1)).squeeze(-1) * self.scale  # (..., N)
        # at least fp32 (bf16 scores round the mix), float64 kept (bench/adapterhub_check.py)
        return F.softmax(self.score_dropout(scores), dim=-1,
                         dtype=torch.promote_types(scores.dtype, torch.float32))

    def forward(self, q: Tensor, deltas: Tensor) -> Tensor:
        alpha = self.weights(q, deltas).to(deltas.dtype)  # (..., N)
        mixed = (alpha.unsqueeze(-1) * deltas).sum(-2)  # (..., d_v)
        if self.value is None:
            return mixed
        return self.value(mixed.to(self.value.weight.dtype))  # (..., d_v)


def value_regularizer(encoder: nn.Module) -> Tensor:
    """0.01 Σ ‖I - V‖² over the value matrices of an encoder's attention fusions (0 where there
    are none): AdapterHub's `get_fusion_regularization_loss`, which keeps V near the identity.
    The loss adds it (model.Tagger.loss); AdapterHub's trainer backpropagates it apart, after
    each step, which sends its gradient into the next step's update instead."""
    penalty = torch.zeros((), device=next(encoder.parameters()).device)
    for module in encoder.modules():
        if isinstance(module, SourceAttention) and module.value is not None:
            V = module.value.weight  # (d_v, d_v)
            identity = torch.eye(V.shape[0], device=V.device, dtype=V.dtype)
            penalty = penalty + 0.01 * (identity - V).pow(2).sum()
    return penalty


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
    """base(x) + Σ_i α_i(x) V δ_i(x), δ_i = s_i B_i A_i x, α the attention over sources
    (`SourceAttention`) with its query read from x (output space, learned, not mergeable). It
    starts at base(x) + mean_i δ_i, a learned merge's starting point."""

    def __init__(self, base: nn.Linear, factors: Sequence[tuple[Tensor, Tensor, float]],
                 dim: int = 0, value: bool = True, score_dropout: float = 0.0):
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
        self.fusion = SourceAttention(base.in_features, base.out_features, dim, value,
                                      score_dropout)

    def adapter_outputs(self, x: Tensor) -> Tensor:
        """δ_i for every adapter: (..., N, d_out)."""
        h = x @ self.A.T.to(x.dtype)  # (..., R)
        return torch.einsum("...r,nor->...no", h, self.B.to(x.dtype))  # (..., N, d_out)

    def forward(self, x: Tensor) -> Tensor:  # x: (..., d_in)
        y = self.base(x)  # (..., d_out)
        deltas = self.adapter_outputs(x)  # (..., N, d_out)
        return y + self.fusion(x, deltas).to(y.dtype)  # (..., d_out)


class BottleneckFusionBlock(nn.Module):
    """A sub-layer's output block fusing frozen bottleneck adapters: LN(h + r + Σ_i α_i V δ_i),
    h = dropout(dense(x)), r the block's input, δ_i = f_i(a) the i-th source adapter's update of
    what the sources read (a = LN(h + r), h or r: adapters.adapter_input), α the attention over
    sources (`SourceAttention`) with its query read from a too, where AdapterHub's `Fuse` reads
    it (output space, learned, not mergeable). It starts at LN(h + r + mean_i δ_i)."""

    def __init__(self, block: nn.Module, sources: Sequence[tuple[dict[str, Tensor], dict]],
                 read: str, dim: int = 0, value: bool = True, score_dropout: float = 0.0):
        super().__init__()
        self.dense, self.dropout, self.LayerNorm = block.dense, block.dropout, block.LayerNorm
        self.read = read
        hidden, device = self.dense.out_features, self.dense.weight.device
        self.sources = nn.ModuleList()
        for tensors, options in sources:
            bottleneck = adapters.Bottleneck(hidden, tensors["down.weight"].shape[0],
                                             options["non_linearity"],
                                             options["adapter_scaling"])
            bottleneck.load_state_dict(tensors)
            self.sources.append(bottleneck.requires_grad_(False).to(device))
        self.fusion = SourceAttention(hidden, hidden, dim, value, score_dropout, device)

    def adapter_outputs(self, a: Tensor) -> Tensor:
        """δ_i(a) for every source adapter: (..., N, H)."""
        return torch.stack([adapter(a) for adapter in self.sources], dim=-2)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        h = self.dropout(self.dense(hidden_states))  # (B, T, H)
        a = adapters.adapter_input(self.read, h, input_tensor, self.LayerNorm)  # (B, T, H)
        deltas = self.adapter_outputs(a).to(h.dtype)  # (B, T, N, H)
        return self.LayerNorm(h + input_tensor + self.fusion(a, deltas).to(h.dtype))

    def extra_repr(self) -> str:
        return f"read={self.read}"


def fuse_bottlenecks(encoder: nn.Module, sources: Sequence[SourceBottlenecks], dim: int = 0,
                     value: bool = True, score_dropout: float = 0.0) -> dict:
    """Swap every output block the sources put an adapter in for their attention fusion, and
    freeze the rest. The sources read what the first one's options say (sources_problems makes
    them agree). Returns a report: the fused positions."""
    options = sources[0].options
    read = adapters.reads(options["adapter_kind"], options["original_ln_before"])
    encoder.requires_grad_(False)
    modules = list(sources[0].adapters)
    for name in modules:
        block = encoder.get_submodule(name)
        if not adapters.is_output_block(block):
            raise ValueError(f"fusion: {name} is a {type(block).__name__}, not an output block "
                             f"(dense, dropout, LayerNorm); was it fused already?")
        fused = BottleneckFusionBlock(block, [(s.adapters[name], s.options) for s in sources],
                                      read, dim, value, score_dropout)
        encoder.set_submodule(name, fused, strict=True)
    return {"fused_linears": len(modules)}


def fuse(encoder: nn.Module, sources: Sequence[SourceAdapter], mode: str,
         weights: Sequence[float] | None = None, rank: int = 0, dim: int = 0,
         value: bool = True, score_dropout: float = 0.0) -> dict:
    """Swap every linear the sources adapt for a fusion of their adapters, and freeze the rest.

    mode "merge": weight space, `weights` fixed (one per source) or None to learn them; `rank` >
    0 truncates each fused ΔW by SVD (fixed weights only). mode "attention": output space, its
    attention as `dim`, `value` and `score_dropout` say (SourceAttention). Returns a report: the
    fused linears and, when truncated, the mean/max relative SVD error.
    """
    if mode not in MODES:
        raise ValueError(f"fusion mode must be one of {MODES}, got {mode!r}")
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
            fused = AttentionFusionLinear(base, factors, dim, value, score_dropout)
        encoder.set_submodule(module, fused.to(base.weight.device), strict=True)
    report = {"fused_linears": len(sources[0].factors)}
    if errors:
        report["svd_relative_error_mean"] = sum(errors) / len(errors)
        report["svd_relative_error_max"] = max(errors)
    return report


def fusion_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (MergedFusionLinear,
                                                          AttentionFusionLinear,
                                                          BottleneckFusionBlock))]


def sources_problems(cfg, sources: Sequence[tuple[str | None, dict]]) -> list[str]:
    """Why the sources cannot be fused by `cfg`, one line each, or []: the only check of a
    fusion's sources, made before anything trains (on their configs) and again by `apply` (on
    the runs it reads). `sources`: the kind of adapter each gives ("lora", "adapter", or None for
    none) and its resolved config values.

    Refused: a source that makes no adapter, another encoder, a DoRA adapter (it rescales its
    base weight, so it has no ΔW to add), kinds mixed, `merge` over bottleneck adapters (they
    change no weight), and sources that adapt different linears."""
    problems = []
    for kind, values in sources:
        name = values.get("name")
        if kind is None:
            problems.append(f"source {name!r}: method {values.get('method')!r} makes no "
                            f"adapter to fuse")
        if values.get("model") != cfg.model:
            problems.append(f"source {name!r}: model {values.get('model')!r} differs from "
                            f"{cfg.model!r}")
        if kind == "adapter" and any(values.get(key) is None for key in BOTTLENECK_OPTIONS):
            problems.append(f"source {name!r}: its config names no "
                            f"{', '.join(k for k in BOTTLENECK_OPTIONS if values.get(k) is None)}"
                            f" (a run from before adapters took AdapterHub's options); train it "
                            f"again")
        if values.get("dora"):
            problems.append(f"source {name!r} is a DoRA adapter, which rescales its base weight "
                            f"and has no ΔW to fuse; fuse plain LoRA adapters")
    kinds = sorted({kind for kind, _ in sources if kind is not None})
    if len(kinds) > 1:
        problems.append(f"its sources mix kinds of adapters ({' and '.join(kinds)}): fuse "
                        f"LoRA adapters or bottleneck adapters, not both")
    elif kinds == ["adapter"] and cfg.fusion_mode == "merge":
        problems.append("fusion_mode: merge adds the sources' ΔW, and a bottleneck adapter has "
                        "none (it is not a change of weights): use fusion_mode: attention")
    placements = {(tuple(values.get("targets", ())) if kind == "lora" else
                   (values.get("adapter_kind"), values.get("original_ln_before")))
                  for kind, values in sources if kind is not None}
    if len(kinds) == 1 and len(placements) > 1:
        problems.append(f"its sources adapt different linears: {sorted(placements, key=str)}")
    return problems


def apply(encoder: nn.Module, cfg, sources: Sequence) -> dict:
    """`method: fusion`: the source runs' adapters fused as `cfg.fusion_mode` says, the encoder
    frozen; fixed merge weights are folded into the base weights (no cost at inference).
    `sources`: finished runs, each with `.folder`, `.config` and `.weights` (model.source_runs)."""
    problems = sources_problems(cfg, [(source_kind(s), s.config) for s in sources])
    if problems:
        raise ValueError(f"fusion of {', '.join(str(s.folder) for s in sources)}: "
                         f"{'; '.join(problems)}")
    loaded = [load_source(source) for source in sources]
    # AdapterHub's BertFusion drops scores out at the encoder's attention dropout rate
    score_dropout = getattr(encoder.config, "attention_probs_dropout_prob", 0.0)
    if isinstance(loaded[0], SourceBottlenecks):
        return fuse_bottlenecks(encoder, loaded, cfg.fusion_dim, cfg.fusion_value, score_dropout)
    report = fuse(encoder, loaded, cfg.fusion_mode, cfg.fusion_weights or None,
                  cfg.fusion_rank, cfg.fusion_dim, cfg.fusion_value, score_dropout)
    if cfg.fusion_mode == "merge" and cfg.fusion_weights:
        for layer in fusion_layers(encoder):
            layer.merge()
    return report
