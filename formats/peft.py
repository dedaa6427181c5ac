"""PEFT's adapter folder, both ways: what `PeftModel.save_pretrained` writes and
`PeftModel.from_pretrained` reads.

A folder holds `adapter_config.json` and `adapter_model.safetensors`, whose tensors are named
`base_model.model.<module>.<part>` (PeftModel's wrapper around a bare model). A LoRA or DoRA run
(lora.py) and an IA3 run (ia3.py) export their encoder's adapter this way, so that

    PeftModel.from_pretrained(AutoModel.from_pretrained(model), "<run>/peft")

reproduces the run's encoder, and `import_lora` reads a LoRA or DoRA folder back into a model
like the one saved. Nothing here imports peft: the format is the contract, and the tests hold it
to peft 0.21.

`lora_files` and `ia3_files` return the folder's files as bytes, {file name: content}; the caller
writes them (a run writes the folder whole or not at all: runs/folders.py).

Left out: reading IA3 back, the older adapter_model.bin, and the folders of PEFT's other methods.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ia3 import ia3_layers
from lora import DoRALinear, adapter_factors, inject_lora, load_factors, lora_layers

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # of every tensor name: PeftModel's wrapper around the bare model

# adapter_config.json fields whose other values change the forward or the base weights, with the
# values reproduced here (PEFT's defaults). This covers peft 0.21's LoRA options as far as we know.
LORA_SUPPORTED = {
    "fan_in_fan_out": (False,),
    "bias": ("none",),
    "use_dora": (False, True),
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


def folder_files(config: dict, tensors: dict[str, Tensor]) -> dict[str, bytes]:
    """The two files of a folder: `config`, and `tensors` named without the PREFIX."""
    weights = {PREFIX + name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    return {CONFIG: (json.dumps(config, indent=2) + "\n").encode(),
            WEIGHTS: save(weights, metadata={"format": "pt"})}


# ---------------------------------------------------------------------------------------------
# LoRA and DoRA


def shared_lora_settings(model: nn.Module) -> dict:
    """The rank, alpha, dropout, rslora and dora shared by all LoRA layers (inject_lora makes it
    so; one adapter_config.json can say nothing else)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model holds no LoRA layers; call inject_lora first")
    settings = {(m.rank, m.alpha, m.dropout_p, m.rslora, isinstance(m, DoRALinear))
                for m in layers.values()}
    if len(settings) > 1:
        raise ValueError(f"LoRA layers differ in (rank, alpha, dropout, rslora, dora): {settings}")
    rank, alpha, dropout, rslora, dora = settings.pop()
    return {"rank": rank, "alpha": alpha, "dropout": dropout, "rslora": rslora, "dora": dora}


def lora_files(model: nn.Module, base_model_name_or_path: str) -> dict[str, bytes]:
    """The folder PEFT's save_pretrained writes for `model`'s LoRA (or DoRA) layers.

    The targets are the full module names, which PEFT's suffix rule matches exactly once each.
    DoRA layers write `use_dora: true` and their magnitudes as `<module>.lora_magnitude_vector`.
    """
    settings, layers = shared_lora_settings(model), lora_layers(model)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": settings["rank"],
        "lora_alpha": settings["alpha"],
        "lora_dropout": settings["dropout"],
        "use_rslora": settings["rslora"],
        "target_modules": list(layers),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": settings["dora"],
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.lora_A.weight"] = layer.lora_A
        tensors[f"{name}.lora_B.weight"] = layer.lora_B
        if isinstance(layer, DoRALinear):
            tensors[f"{name}.lora_magnitude_vector"] = layer.lora_magnitude
    return folder_files(config, tensors)


def import_lora(model: nn.Module, folder: str | Path) -> list[str]:
    """Inject and load a PEFT LoRA (or DoRA) adapter folder saved from a model like `model`.

    Options lora.py cannot reproduce are a ValueError naming the field. The keys must be PEFT's
    for the same bare model (`base_model.model.<module>.lora_A.weight`). If the weights fail to
    load after injection, the model is left injected: build a fresh one. Returns the wrapped
    module names.
    """
    config_path, weights_path = Path(folder) / CONFIG, Path(folder) / WEIGHTS
    try:
        config = json.loads(config_path.read_text())
    except OSError as err:
        raise ValueError(f"{config_path}: cannot read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{config_path}: peft_type is {config.get('peft_type')!r}, not 'LORA'")
    for field, accepted in LORA_SUPPORTED.items():
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
    try:
        tensors = load_file(str(weights_path))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({err})") from None
    state, magnitudes = {}, {}  # our key layout: <module>.lora_A, <module>.lora_B; module -> m
    for key, value in tensors.items():
        factor = re.fullmatch(re.escape(PREFIX) + r"(.+\.lora_[AB])\.weight", key)
        magnitude = re.fullmatch(re.escape(PREFIX) + r"(.+)\.lora_magnitude_vector", key)
        if factor is None and magnitude is None:
            raise ValueError(
                f"{weights_path}: unexpected key {key}, expected {PREFIX}"
                "<module>.lora_A.weight, .lora_B.weight or .lora_magnitude_vector"
            )
        if factor is not None:
            state[factor[1]] = value
        else:
            magnitudes[magnitude[1]] = value
    names = inject_lora(
        model,
        config["target_modules"],
        rank=config["r"],
        alpha=config["lora_alpha"],
        dropout=config.get("lora_dropout", 0.0),
        rslora=config.get("use_rslora", False),
        dora=config.get("use_dora", False),
    )
    try:
        load_factors(model, adapter_factors(state), magnitudes)
    except ValueError as err:
        raise ValueError(f"{weights_path}: {err}") from None
    return names


# ---------------------------------------------------------------------------------------------
# IA3


def ia3_files(model: nn.Module, base_model_name_or_path: str) -> dict[str, bytes]:
    """The folder PEFT's save_pretrained writes for `model`'s IA3 vectors."""
    layers = ia3_layers(model)
    if not layers:
        raise ValueError("model holds no IA3 layers; call inject_ia3 first")
    config = {"peft_type": "IA3", "task_type": None,
              "base_model_name_or_path": base_model_name_or_path,
              "target_modules": list(layers),
              "feedforward_modules": [n for n, m in layers.items() if m.scale_input],
              "fan_in_fan_out": False, "init_ia3_weights": True, "inference_mode": True,
              "modules_to_save": None}
    # PEFT keeps a feed-forward vector as (1, d_in) and the others as (d_out, 1)
    tensors = {f"{name}.ia3_l": m.ia3_scale[None, :] if m.scale_input else m.ia3_scale[:, None]
               for name, m in layers.items()}
    return folder_files(config, tensors)
