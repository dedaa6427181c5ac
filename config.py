"""The typed configuration of a run, and how YAML files and command lines fill it.

A config file's top-level keys are the defaults of every experiment; `experiments:` is a list
of blocks that override them. Every key of `Config` has a default and a one-line why; an unknown
key, a wrong type or a value out of range is a `ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

import lora

METHODS = ("full", "lora", "fusion")



@dataclass
class AugConfig:
    p: float = 0.3  # chance that each mention is swapped for another of its type
    copies: int = 1  # swapped variants added per training sentence; 0: swap in place


@dataclass
class Config:
    name: str = "run"  # experiment name: outputs go to <output_dir>/<name>/seed<seed>/
    # full: every encoder weight trains; lora: adapters only, encoder frozen; fusion: frozen
    # source adapters combined (fusion.py), with the fusion's own few parameters trained
    method: str = "full"
    model: str = "dmis-lab/biobert-base-cased-v1.2"  # hub id, local folder, or package:<module>
    dataset: str = "bc5cdr"  # corpus name under data_dir, or a folder with {train,devel,test}.tsv
    data_dir: str = ""  # folder of corpora; empty: $NER_DATA_DIR, else download known corpora
    allow_unseen_tags: bool = False  # devel/test tags absent from train: error unless true
    train_limit: int = 0  # use only the first N training sentences (0 = all): demos, smoke runs
    eval_limit: int = 0  # use only the first N devel and test sentences (0 = all)
    max_length: int = 128  # subwords per window; longer sentences are split, never truncated
    pad_multiple: int = 0  # pad batches to a multiple of this; 0: 16 on CUDA, 1 (none) on CPU
    batch_size: int = 32
    eval_batch_size: int = 128  # evaluation keeps no activations, so it affords larger batches
    epochs: int = 3
    lr: float = 5e-5  # peak learning rate of the encoder and head
    weight_decay: float = 0.01  # AdamW decay, never on biases and LayerNorm weights
    lr_scheduler_type: str = "linear"  # linear | cosine | constant, each after warmup
    warmup_steps: int = 0  # linear warm-up steps; overrides warmup_ratio when > 0
    warmup_ratio: float = 0.1  # warm-up as a share of all steps, when warmup_steps is 0
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    dropout: float = 0.1  # before the tagging head
    precision: str = "fp32"  # fp32 | fp16 (CUDA, with GradScaler) | bf16 (CUDA or CPU)
    fp16: bool = False  # shorthand for precision: fp16
    gpu: int = 0  # CUDA device index; -1 forces the CPU (used anyway when CUDA is absent)
    seed: int = 42  # seeds python, numpy and torch; runs use seed, seed+1, ... (repeats)
    repeats: int = 3  # runs per experiment in compare.py, each with its own seed
    output_dir: str = "outputs"
    log_every: int = 50  # steps between loss lines in the training log
    save_weights: bool = True  # write the trained weights (what the method trains) per run
    aug: AugConfig | None = None  # entity-swap augmentation of the training split, per epoch
    # LoRA (method: lora)
    rank: int = 16  # r of every adapter
    alpha: float = 32.0  # scale = alpha / rank, alpha fixed across ranks as in Hu et al.
    lora_dropout: float = 0.0  # dropout on the adapter's input; 0 runs no mask kernel
    # names (or dotted suffixes) of the linears that get adapters; default: all of attention
    targets: list[str] = dataclasses.field(default_factory=lambda: list(lora.DEFAULT_TARGETS))
    rslora: bool = False  # scale = alpha / sqrt(rank), which keeps large ranks learning
    gradient_checkpointing: bool = False  # recompute encoder layers in backward: less memory
    # CRF head (any method)
    crf: bool = False  # a linear-chain CRF on the word emissions: NLL training, Viterbi decoding
    crf_lr: float = 5e-2  # measured best of 1e-3, 1e-2, 5e-2 (bench/README.md); a CRF at an
    # encoder's learning rate barely moves its transitions
    crf_constraints: bool = True  # forbid invalid BIO transitions in training and decoding
    # Fusion of LoRA adapters (method: fusion)
    adapters: list[str] = dataclasses.field(default_factory=list)  # sweep experiments or folders
    fusion: str = "merge"  # merge: weighted sum of ΔW (weight space); attention: output space
    fusion_weights: list[float] = dataclasses.field(default_factory=list)  # empty: learned
    fusion_rank: int = 0  # merge, fixed weights: SVD-truncate each fused ΔW to this rank (0: no)
    fusion_dim: int = 16  # attention: width of the query and key projections


class ConfigError(ValueError):
    pass


def coerce(value, kind, key: str, source: str):
    """`value` as type `kind`, or a ConfigError naming the key. YAML reads `5e-5` as a string,
    so numbers written that way are accepted for float keys."""
    def fail():
        raise ConfigError(f"{source}: key {key!r} expects {getattr(kind, '__name__', kind)}, "
                          f"found {value!r} ({type(value).__name__})")

    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        return coerce(value, next(a for a in args if a is not type(None)), key, source)
    if origin is list:
        if not isinstance(value, list):
            fail()
        return [coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            fail()
        return build_dataclass(kind, value, source, prefix=f"{key}.")
    if kind is bool:
        return value if isinstance(value, bool) else fail()
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if kind is float:
        if isinstance(value, bool):
            fail()
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            fail()
    if kind is str:
        return value if isinstance(value, str) else fail()
    raise AssertionError(f"unsupported config type {kind}")


def build_dataclass(cls, values: dict, source: str, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {prefix}{key!r} "
                              f"(known: {', '.join(sorted(known))})")
    return cls(**{k: coerce(v, hints[k], prefix + k, source) for k, v in values.items()})


def make_config(values: dict, source: str = "config") -> Config:
    """A checked Config from plain values; `source` names where they came from, for errors."""
    cfg = build_dataclass(Config, values, source)
    if cfg.fp16:
        if cfg.precision not in ("fp32", "fp16"):
            raise ConfigError(f"{source}: fp16: true contradicts precision: {cfg.precision}")
        cfg.precision = "fp16"
    choices = {"method": METHODS, "precision": ("fp32", "fp16", "bf16"),
               "lr_scheduler_type": ("linear", "cosine", "constant")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{source}: key {key!r} must be one of {list(allowed)}, "
                              f"found {getattr(cfg, key)!r}")
    for key in ("epochs", "batch_size", "eval_batch_size", "repeats", "log_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{source}: key {key!r} must be >= 1, found {getattr(cfg, key)}")
    if cfg.aug is not None and not (0.0 <= cfg.aug.p <= 1.0 and cfg.aug.copies >= 0):
        raise ConfigError(f"{source}: aug needs 0 <= p <= 1 and copies >= 0, found {cfg.aug}")
    if cfg.method == "fusion" and not cfg.adapters:
        raise ConfigError(f"{source}: method fusion needs 'adapters' (experiment names or "
                          f"run folders of LoRA adapters)")
    if cfg.fusion not in ("merge", "attention"):
        raise ConfigError(f"{source}: key 'fusion' must be 'merge' or 'attention', found "
                          f"{cfg.fusion!r}")
    if cfg.max_length < 8:
        raise ConfigError(f"{source}: key 'max_length' must be >= 8, found {cfg.max_length}")
    return cfg


def read_yaml(path: str | Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return values


def experiment_configs(path: str | Path, overrides: dict | None = None) -> list[Config]:
    """One Config per block of `experiments:`; the file's top-level keys are their defaults.
    A file without `experiments:` is a single experiment."""
    values = read_yaml(path)
    blocks = values.pop("experiments", None) or [{}]
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(f"{path}: 'experiments' must be a list of mappings")
    configs = []
    for i, block in enumerate(blocks):
        where = f"{path}: experiments[{i}]" + (f" ({block['name']})" if "name" in block else "")
        configs.append(make_config({**values, **block, **(overrides or {})}, where))
    names = [c.name for c in configs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"{path}: experiment names must be unique, repeated: {duplicated}")
    return configs


def parse_overrides(args: list[str]) -> dict:
    """`--key=value` pairs, values read as YAML (so --lr=1e-4, --targets=[query,value] work)."""
    overrides = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"command line: expected --key=value, found {arg!r}")
        key, value = arg[2:].split("=", 1)
        overrides[key.replace("-", "_")] = yaml.safe_load(value)
    return overrides
