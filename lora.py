"""LoRA on the nn.Linear layers of a frozen encoder: inject, merge, read back, PEFT interchange.

Implements low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models"): a frozen linear layer gains a trainable update `scale * B @ A` of rank r, with B = 0 at
init so the model is unchanged at step 0 and `scale = alpha / r`. With `rslora=True` the scale is
`alpha / sqrt(r)` (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with
LoRA"), which keeps the update from shrinking as r grows.

Left out: LoRA on embeddings or convolutions, DoRA and other variants, trainable biases, several
adapters per layer (fusion.py combines adapters), per-layer rank or alpha, tied weights (casting
the frozen base re-creates parameters).

Two formats hold an adapter. A run's `weights.safetensors` holds what the run trained by parameter
name (`...query.lora_A`, `...query.lora_B`, the head), written by train.py; `adapter_factors`
reads the adapter back out of it. `export_peft` / `import_peft` write and read PEFT's LoRA folder
format, without importing peft.

Dimensions: B batch, T subword tokens, H hidden, r rank, d_in / d_out the input / output width of
a wrapped nn.Linear (H and H for BERT's attention projections).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

# All four linears of BERT's self-attention: W_q, W_k, W_v and the output projection W_o. Hu et al.
# default to W_q and W_v; their fixed-budget ablation (Sec. 7.1) did as well or better with all four.
DEFAULT_TARGETS = ("query", "key", "value", "attention.output.dense")

# Names of the PEFT folder files and the prefix PeftModel puts before a bare model's module names.
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

# adapter_config.json fields whose other values change the forward or the base weights, with the
# values reproduced here (PEFT's defaults). This covers peft 0.21's LoRA options as far as we know.
_PEFT_SUPPORTED = {
    "fan_in_fan_out": (False,),
    "bias": ("none",),
    "use_dora": (False,),
    "lora_bias": (False,),
    "use_qalora": (False,),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None, []),
    "layers_pattern": (None, []),
    "exclude_modules": (None, []),
    "modules_to_save": (None, []),
    "target_parameters": (None, []),
    "trainable_token_indices": (None,),
    "layer_replication": (None,),
    "alora_invocation_tokens": (None,),
    # PiSSA, OLoRA, LoftQ, CorDA, ... rewrite the base weights at init: the adapter needs that base.
    "init_lora_weights": (True, False, "gaussian"),
}


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
        rank: int = 16,
        alpha: float = 32.0,
        dropout: float = 0.0,
        rslora: bool = False,
    ) -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
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

    def forward(self, x: Tensor) -> Tensor:  # x: (..., d_in), e.g. (B, T, H)
        if self.merged:
            if torch.is_grad_enabled() and self.lora_A.requires_grad:
                raise RuntimeError(
                    "LoRALinear is merged, so lora_A/lora_B would get no gradient; call "
                    "unmerge_lora(model) before training, or run inference under torch.no_grad()"
                )
            return self.base(x)  # (..., d_out)
        y = self.base(x)  # (..., d_out)
        # Outside autocast a bf16 base gives bf16 activations while A and B stay fp32, hence the
        # cast; under autocast the matmuls run in the autocast dtype either way.
        h = self.dropout(x).to(self.lora_A.dtype)  # (..., d_in)
        delta = h @ self.lora_A.T @ self.lora_B.T * self.scale  # (..., r) then (..., d_out)
        return y + delta.to(y.dtype)  # (..., d_out)

    def delta_weight(self) -> Tensor:
        """`scale * B @ A` in fp32, also when called under autocast."""
        with torch.autocast(self.lora_A.device.type, enabled=False):
            return self.lora_B @ self.lora_A * self.scale  # (d_out, d_in)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:.4g}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear of `model` by qualified module name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _matches(name: str, target: str) -> bool:
    """PEFT's `target_modules` rule: the dotted name equals the target or ends with '.' + it."""
    return name == target or name.endswith("." + target)


def _linear_suffixes(names: list[str]) -> list[str]:
    """The shortest target for each linear of a layer, to list in an error message.

    Linears are grouped by their layer suffix, the name after the last layer index; a group's
    target is the shortest dotted suffix that matches exactly its members, else the whole layer
    suffix. With BERT's layers 0 and 1:

        ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.output.dense",
         "encoder.layer.0.output.dense", "encoder.layer.1.attention.self.query",
         "encoder.layer.1.attention.output.dense", "encoder.layer.1.output.dense"]
        -> ["query", "attention.output.dense", "output.dense"]

    (`dense` would match all four denses and `output.dense` also the attention's.)
    """

    def layer_suffix(name: str) -> str:
        """`encoder.layer.1.attention.self.query` -> `attention.self.query`."""
        parts = name.split(".")
        last_index = max((i for i, p in enumerate(parts[:-1]) if p.isdigit()), default=-1)
        return ".".join(parts[last_index + 1 :])

    targets = []
    for suffix in dict.fromkeys(layer_suffix(n) for n in names):
        members = {n for n in names if layer_suffix(n) == suffix}
        parts = suffix.split(".")
        shorter = (".".join(parts[-i:]) for i in range(1, len(parts)))
        exact = (t for t in shorter if {n for n in names if _matches(n, t)} == members)
        targets.append(next(exact, suffix))
    return targets


def inject_lora(
    model: nn.Module,
    targets: Sequence[str] = DEFAULT_TARGETS,
    rank: int = 16,
    alpha: float = 32.0,
    dropout: float = 0.0,
    rslora: bool = False,
) -> list[str]:
    """Wrap each nn.Linear matched by `targets` in a LoRALinear, then freeze all but LoRA.

    A target matches a module whose dotted name equals it or ends with '.' + target (PEFT's rule),
    so `output.dense` matches both `attention.output.dense` and the feed-forward `output.dense`.
    alpha = 32 is twice the default rank (the common alpha = 2r); like Hu et al. we keep alpha
    fixed rather than re-tune it when r changes. Returns the wrapped module names in model order.
    """
    if isinstance(targets, str) or not targets:
        raise ValueError(f"targets must be a non-empty sequence of module names, got {targets!r}")
    wrapped = list(lora_layers(model))
    if wrapped:
        raise ValueError(
            f"model already holds {len(wrapped)} LoRA layers (first: {wrapped[0]}); "
            "inject_lora wraps a fresh model once, never a wrapped one again"
        )
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    unmatched = [t for t in targets if not any(_matches(n, t) for n in linears)]
    if unmatched:
        raise ValueError(
            f"target(s) {', '.join(unmatched)} match no nn.Linear; the model's linears are: "
            f"{', '.join(_linear_suffixes(linears))}"
        )
    names = [n for n in linears if any(_matches(n, t) for t in targets)]
    for name in names:
        layer = LoRALinear(model.get_submodule(name), rank, alpha, dropout, rslora)
        model.set_submodule(name, layer, strict=True)
    freeze_all_but_lora(model)
    return names


def freeze_all_but_lora(model: nn.Module) -> None:
    """requires_grad only on lora_A / lora_B."""
    for module in model.modules():
        for param in module.parameters(recurse=False):
            # A LoRALinear's own parameters are exactly lora_A and lora_B.
            param.requires_grad_(isinstance(module, LoRALinear))


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> None:
    """Store every frozen floating parameter in `dtype`; trainable ones stay as they are.

    A frozen weight needs no fp32 master copy, so `dtype=torch.bfloat16` halves the encoder's
    memory while A and B stay fp32. Run the model under `torch.autocast(device, dtype)` of that
    same dtype: linears then compute in it and LayerNorm in fp32 (CUDA), and the LoRA factors
    are cast for their matmuls only. Without autocast the encoder computes in `dtype` throughout.
    Buffers are left alone, and tied parameters come untied. Cast before building the optimizer.
    """
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad and param.is_floating_point():
                module.register_parameter(name, nn.Parameter(param.detach().to(dtype), False))


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRALinear (idempotent)."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Unmerge every LoRALinear (idempotent)."""
    for layer in lora_layers(model).values():
        layer.unmerge()


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


def load_factors(model: nn.Module, factors: dict[str, tuple[Tensor, Tensor]]) -> None:
    """Copy each (A, B) of `factors` (as `adapter_factors` returns them) into its LoRALinear.

    Every layer needs its pair, in its shapes. A merged layer is an error: its base weight holds
    the old update, which unmerging would then fail to take out.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model holds no LoRA layers; call inject_lora first")
    problems = [f"missing {name}" for name in layers if name not in factors]
    problems += [f"unexpected {name}" for name in factors if name not in layers]
    problems += [f"{name} is merged (unmerge it first)" for name in layers if layers[name].merged]
    for name, (A, B) in factors.items():
        layer = layers.get(name)
        if layer is not None and (A.shape, B.shape) != (layer.lora_A.shape, layer.lora_B.shape):
            problems.append(
                f"{name} has A {tuple(A.shape)} and B {tuple(B.shape)}, expected "
                f"{tuple(layer.lora_A.shape)} and {tuple(layer.lora_B.shape)}"
            )
    if problems:
        raise ValueError("cannot load LoRA factors: " + "; ".join(problems))
    with torch.no_grad():
        for name, (A, B) in factors.items():
            layers[name].lora_A.copy_(A)
            layers[name].lora_B.copy_(B)


def _lora_config(model: nn.Module) -> dict:
    """The rank, alpha, dropout and rslora shared by all LoRA layers (inject_lora makes it so)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model holds no LoRA layers; call inject_lora first")
    configs = {(m.rank, m.alpha, m.dropout_p, m.rslora) for m in layers.values()}
    if len(configs) > 1:
        raise ValueError(f"LoRA layers differ in (rank, alpha, dropout, rslora): {configs}")
    rank, alpha, dropout, rslora = configs.pop()
    return {"rank": rank, "alpha": alpha, "dropout": dropout, "rslora": rslora}


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()
            return {name: f.get_tensor(name) for name in names}, f.metadata() or {}
    except SafetensorError as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


def export_peft(model: nn.Module, folder: str | Path, base_model_name_or_path: str) -> None:
    """Write `adapter_config.json` and `adapter_model.safetensors` as PEFT's save_pretrained does.

    `PeftModel.from_pretrained(base, folder)` then reproduces this model's outputs. The targets
    are the full module names, which PEFT's suffix rule matches exactly once each.
    """
    config, layers = _lora_config(model), lora_layers(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    adapter_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": config["rank"],
        "lora_alpha": config["alpha"],
        "lora_dropout": config["dropout"],
        "use_rslora": config["rslora"],
        "target_modules": list(layers),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (folder / PEFT_CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n")
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
    save_file(tensors, str(folder / PEFT_WEIGHTS), metadata={"format": "pt"})


def import_peft(model: nn.Module, folder: str | Path) -> list[str]:
    """Inject and load a PEFT LoRA adapter folder saved from a model like `model`.

    Reads adapter_model.safetensors (not the older adapter_model.bin). Options this module cannot
    reproduce are a ValueError naming the field. The keys must be PEFT's for the same bare model
    (`base_model.model.<module>.lora_A.weight`). If the weights fail to load after injection, the
    model is left injected: build a fresh one. Returns the wrapped module names.
    """
    config_path, weights_path = Path(folder) / PEFT_CONFIG, Path(folder) / PEFT_WEIGHTS
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{config_path}: peft_type is {config.get('peft_type')!r}, not 'LORA'")
    for field, accepted in _PEFT_SUPPORTED.items():
        if config.get(field, accepted[0]) not in accepted:
            raise ValueError(
                f"{config_path}: {field}={config[field]!r} is not supported (only {accepted})"
            )
    missing = [field for field in ("r", "lora_alpha", "target_modules") if field not in config]
    if missing:
        raise ValueError(f"{config_path}: missing field(s) {', '.join(missing)}")
    if isinstance(config["target_modules"], str) or not config["target_modules"]:
        raise ValueError(
            f"{config_path}: target_modules={config['target_modules']!r}; only a non-empty list "
            "of module names is supported (not a regex or 'all-linear')"
        )
    if not weights_path.is_file():
        raise ValueError(f"{weights_path}: not found (adapter_model.bin is not read)")
    tensors, _ = _read_safetensors(weights_path)
    state = {}  # our key layout: <module>.lora_A, <module>.lora_B
    for key, value in tensors.items():
        match = re.fullmatch(re.escape(PEFT_PREFIX) + r"(.+\.lora_[AB])\.weight", key)
        if match is None:
            raise ValueError(
                f"{weights_path}: unexpected key {key}, expected {PEFT_PREFIX}"
                "<module>.lora_A.weight or .lora_B.weight"
            )
        state[match[1]] = value
    names = inject_lora(
        model,
        config["target_modules"],
        rank=config["r"],
        alpha=config["lora_alpha"],
        dropout=config.get("lora_dropout", 0.0),
        rslora=config.get("use_rslora", False),
    )
    try:
        load_factors(model, adapter_factors(state))
    except ValueError as err:
        raise ValueError(f"{weights_path}: {err}") from None
    return names
