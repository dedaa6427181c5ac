"""The typed configuration of a run, and how YAML files and command lines fill it.

A config file's top-level keys are the defaults of every experiment; `experiments:` is a list
of blocks that override them. A block may hold `grid: {key: [v1, v2, ...], ...}`, which expands
it into one experiment per combination, named `<name>[key=v1,...]`.

Every key of `Config` has a default and a why-comment (the comment lines above it and the one
beside it); `config_help()` prints them, so `--help` and the code never disagree. Checking
collects every problem of every experiment before anything trains: each is one line naming
`file:line` (or the command line), the experiment and the key, and what was expected.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

import lora

METHODS = ("full", "lora", "fusion")
# The peak learning rate when a block gives none (`lr: 0`), per method: the devel choices of
# configs/study_cpu.yml (MiniLM, 1,000 BC5CDR sentences, 3 epochs; README, Results). LoRA
# trains new weights from zero and wants ten times full fine-tuning's rate: at 5e-4 it was 0.48
# test F1 below full fine-tuning, at 4e-3 0.15 below, and 8e-3 diverged. Fusion was not
# gridded: it runs at the rate its LoRA sources trained at. Other encoders and budgets want a
# grid of their own (configs/bc5cdr.yml has one).
DEFAULT_LR = {"full": 4e-4, "lora": 4e-3, "fusion": 2e-3}
# Keys that change where or how a run is watched, never what it computes: left out of a run's
# fingerprint, so changing them retrains nothing.
BOOKKEEPING_KEYS = ("repeats", "gpu", "log_every", "output_dir", "grid", "tracker",
                    "tracker_project")


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
    batch_size: int = 32  # training windows per step
    eval_batch_size: int = 128  # evaluation keeps no activations, so it affords larger batches
    epochs: int = 3  # passes over the training split; the best devel epoch is kept
    lr: float = 0.0  # peak learning rate of the encoder and head; 0: the method's default
    weight_decay: float = 0.01  # AdamW decay, never on biases and LayerNorm weights
    lr_scheduler_type: str = "linear"  # linear | cosine | constant, each after warmup
    warmup_steps: int = 0  # linear warm-up steps; overrides warmup_ratio when > 0
    warmup_ratio: float = 0.1  # warm-up as a share of all steps, when warmup_steps is 0
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    dropout: float = 0.1  # before the tagging head
    precision: str = "fp32"  # fp32 | fp16 (CUDA, with GradScaler) | bf16 (CUDA or CPU)
    fp16: bool = False  # shorthand for precision: fp16
    # CUDA device index, -1 for the CPU (used anyway when CUDA is absent), or a list of
    # indices that compare.py --parallel spreads runs over
    gpu: int | list[int] = 0
    seed: int = 42  # seeds python, numpy and torch; runs use seed, seed+1, ... (repeats)
    repeats: int = 3  # runs per experiment in compare.py, each with its own seed
    output_dir: str = "outputs"  # where runs and the sweep's table go; one per sweep
    log_every: int = 50  # steps between loss lines in the training log
    save_weights: bool = True  # write the trained weights (what the method trains) per run
    aug: AugConfig | None = None  # entity-swap augmentation of the training split, per epoch
    # expand this block into one experiment per combination of these values, e.g.
    # {lr: [5e-4, 1e-3]}; the table marks the combination with the best mean devel F1
    grid: dict[str, list] = dataclasses.field(default_factory=dict)
    tracker: str = "none"  # none | tensorboard | wandb: log loss, lr and devel F1 live
    tracker_project: str = "ner-peft"  # tracker project; runs are named <name>/seed<seed>
    # --- LoRA (method: lora)
    rank: int = 16  # r of every adapter
    alpha: float = 32.0  # scale = alpha / rank, alpha fixed across ranks as in Hu et al.
    lora_dropout: float = 0.0  # dropout on the adapter's input; 0 runs no mask kernel
    # names (or dotted suffixes) of the linears that get adapters; default: all of attention
    targets: list[str] = dataclasses.field(default_factory=lambda: list(lora.DEFAULT_TARGETS))
    rslora: bool = False  # scale = alpha / sqrt(rank), which keeps large ranks learning
    gradient_checkpointing: bool = False  # recompute encoder layers in backward: less memory
    # --- CRF head (any method)
    crf: bool = False  # a linear-chain CRF on the word emissions: NLL training, Viterbi decoding
    # learning rate of the CRF's transition, start and end scores: a CRF at an encoder's
    # learning rate barely moves its transitions (chosen on devel, README)
    crf_lr: float = 5e-2
    crf_constraints: bool = True  # forbid invalid BIO transitions in training and decoding
    # --- Fusion of LoRA adapters (method: fusion)
    # the adapters to fuse: experiments of the same sweep (same seed) or LoRA run folders
    adapters: list[str] = dataclasses.field(default_factory=list)
    # merge: weighted sum of ΔW (weight space); attention: per-token mix of outputs. Both start
    # from the same function, the average of the adapters (fusion.py)
    fusion_mode: str = "merge"
    # fixed fusion weights, one per adapter (then merged into the base); empty: learned
    fusion_weights: list[float] = dataclasses.field(default_factory=list)
    fusion_rank: int = 0  # merge, fixed weights: SVD-truncate each fused ΔW to this rank (0: no)
    fusion_dim: int = 16  # attention: width of the query and key projections


@dataclass
class SweepSettings:
    """Top-level keys of a sweep file that belong to the comparison, not to any one run."""
    # experiment every other is compared with (ΔF1, paired bootstrap); empty: the first one.
    # A gridded experiment's name means its combination with the best mean devel F1
    baseline: str = ""
    bootstrap_resamples: int = 1000  # paired bootstrap resamples of the test sentences
    bootstrap_seed: int = 0  # seed of the bootstrap's resampling: the same table every time


SWEEP_KEYS = tuple(f.name for f in dataclasses.fields(SweepSettings))


class ConfigError(ValueError):
    """One line per problem: where (file:line or the command line), which key, what was
    expected."""


# ---------------------------------------------------------------------------------------------
# Types


def coerce(value, kind, key: str):
    """`value` as type `kind`, or a ConfigError naming the key. YAML reads `5e-5` as a string,
    so numbers written that way are accepted for float keys."""
    def fail():
        name = getattr(kind, "__name__", None) or str(kind).replace("typing.", "")
        raise ConfigError(f"key {key!r} expects {name}, found {value!r} ({type(value).__name__})")

    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        if len(alternatives) == 1:  # Optional: the one type's own, more precise error
            return coerce(value, alternatives[0], key)
        for alternative in alternatives:
            try:
                return coerce(value, alternative, key)
            except ConfigError:
                continue
        fail()
    if origin is list:
        if not isinstance(value, list):
            fail()
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:  # grid: key -> list of values, each checked when the grid expands
        if not isinstance(value, dict) or not all(isinstance(v, list) and v
                                                  for v in value.values()):
            fail()
        return dict(value)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            fail()
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(kind)})
        if unknown:
            raise ConfigError(f"unknown key '{key}.{unknown[0]}'")
        hints = typing.get_type_hints(kind)
        return kind(**{k: coerce(v, hints[k], f"{key}.{k}") for k, v in value.items()})
    if kind is bool:
        return value if isinstance(value, bool) else fail()
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if kind is float:
        if isinstance(value, bool):
            fail()
        try:
            return float(value)
        except (TypeError, ValueError):
            fail()
    if kind is str:
        return value if isinstance(value, str) else fail()
    raise AssertionError(f"unsupported config type {kind}")


# ---------------------------------------------------------------------------------------------
# Checking one experiment


def value_problems(cfg: Config) -> list[tuple[str, str]]:
    """(key, what is wrong) for every out-of-range value of a typed config."""
    problems = []

    def need(ok: bool, key: str, expected: str):
        if not ok:
            problems.append((key, f"key {key!r} must be {expected}, found {getattr(cfg, key)!r}"))

    choices = {"method": METHODS, "precision": ("fp32", "fp16", "bf16"),
               "lr_scheduler_type": ("linear", "cosine", "constant"),
               "fusion_mode": ("merge", "attention"), "tracker": ("none", "tensorboard", "wandb")}
    for key, allowed in choices.items():
        need(getattr(cfg, key) in allowed, key, f"one of {list(allowed)}")
    for key in ("epochs", "batch_size", "eval_batch_size", "repeats", "log_every", "rank",
                "fusion_dim"):
        need(getattr(cfg, key) >= 1, key, ">= 1")
    for key in ("train_limit", "eval_limit", "pad_multiple", "warmup_steps", "fusion_rank"):
        need(getattr(cfg, key) >= 0, key, ">= 0")
    for key in ("lr", "crf_lr", "weight_decay", "max_grad_norm", "alpha"):
        need(getattr(cfg, key) >= 0, key, ">= 0")
    for key in ("dropout", "lora_dropout", "warmup_ratio"):
        need(0 <= getattr(cfg, key) < 1, key, "in [0, 1)")
    need(cfg.max_length >= 8, "max_length", ">= 8")
    need(bool(cfg.targets), "targets", "a non-empty list of linear names")
    gpus = cfg.gpu if isinstance(cfg.gpu, list) else [cfg.gpu]
    need(bool(gpus) and all(g >= -1 for g in gpus), "gpu", "-1, a device index or a list")
    if cfg.aug is not None and not (0.0 <= cfg.aug.p <= 1.0 and cfg.aug.copies >= 0):
        problems.append(("aug", f"aug needs 0 <= p <= 1 and copies >= 0, found {cfg.aug}"))
    if cfg.method == "fusion":
        need(bool(cfg.adapters), "adapters", "experiment names or LoRA run folders to fuse")
        need(not cfg.fusion_weights or len(cfg.fusion_weights) == len(cfg.adapters),
             "fusion_weights", f"one weight per adapter ({len(cfg.adapters)})")
    if cfg.fp16 and cfg.precision == "bf16":
        problems.append(("fp16", "fp16: true contradicts precision: bf16"))
    return problems


def make_config(values: dict, source: str = "config", where=None) -> Config:
    """A checked Config from plain values. `source` names the experiment in errors;
    `where(key)` says where a key's value was written (file:line), default `source`."""
    where = where or (lambda key: None)
    problems: list[tuple[str, str]] = []
    if "fusion" in values:  # the key's name before it stopped sharing one with fusion.py
        if "fusion_mode" in values:
            problems.append(("fusion", "key 'fusion' is the old name of 'fusion_mode': keep one"))
            values = {k: v for k, v in values.items() if k != "fusion"}
        else:
            print(f"{where('fusion') or source}: key 'fusion' is now 'fusion_mode'; read as such")
            values = {("fusion_mode" if k == "fusion" else k): v for k, v in values.items()}
    hints = typing.get_type_hints(Config)
    typed = {}
    for key, value in values.items():
        if key not in hints:
            problems.append((key, f"unknown key {key!r} (known: {', '.join(hints)})"))
            continue
        try:
            typed[key] = coerce(value, hints[key], key)
        except ConfigError as error:
            problems.append((key, str(error)))
    cfg = None
    if not problems:
        cfg = Config(**typed)
        problems = value_problems(cfg)
    if problems:
        raise ConfigError("\n".join(": ".join(filter(None, (where(key), source, message)))
                                    for key, message in problems))
    if cfg.fp16:
        cfg.precision = "fp16"
    if cfg.lr == 0:
        cfg.lr = DEFAULT_LR[cfg.method]
    return cfg


# ---------------------------------------------------------------------------------------------
# Files, grids and command lines


def read_yaml(path: str | Path) -> tuple[dict, dict]:
    """The file's values, and the line of every key: {key: line} at the top level and
    {("experiments", i, key): line} inside the blocks."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        values = yaml.safe_load(text)
        root = yaml.compose(text)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config ({error.strerror})") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{at}: not valid YAML: {getattr(error, 'problem', error)}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    lines = {}
    for key_node, value_node in root.value:
        lines[key_node.value] = key_node.start_mark.line + 1
        if key_node.value == "experiments" and isinstance(value_node, yaml.SequenceNode):
            for i, block in enumerate(value_node.value):
                if isinstance(block, yaml.MappingNode):
                    for k, _ in block.value:
                        lines[("experiments", i, k.value)] = k.start_mark.line + 1
    return values, lines


def grid_name(name: str, point: dict) -> str:
    """`lora[lr=0.001,rank=8]`: the experiment name of one grid combination."""
    return f"{name}[{','.join(f'{k}={v}' for k, v in point.items())}]"


def expand_grid(block: dict) -> list[dict]:
    """One block per combination of the block's `grid:` values (itself if it has none).
    Values are typed first, so a grid over `lr: [5e-4, 1e-3]` names `lr=0.0005`."""
    grid = block.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError("key 'grid' expects a mapping of key: [values, ...]")
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(grid) - set(hints))
    if unknown:
        raise ConfigError(f"grid: unknown key {unknown[0]!r}")
    if {"grid", "name"} & set(grid):
        raise ConfigError("grid: cannot vary 'name' or 'grid'")
    typed = {k: [coerce(v, hints[k], f"grid.{k}") for v in values] for k, values in grid.items()}
    base = block.get("name", Config.name)
    return [{**block, **dict(zip(typed, combo)), "grid": typed,
             "name": grid_name(base, dict(zip(typed, combo)))}
            for combo in itertools.product(*typed.values())] if grid else [block]


def experiment_configs(path: str | Path, overrides: dict | None = None) -> list[Config]:
    """One Config per experiment of the file (grids expanded); its top-level keys are their
    defaults, and command-line overrides win over both. A file without `experiments:` is a
    single experiment. Every problem of every experiment is reported together."""
    values, lines = read_yaml(path)
    for key in SWEEP_KEYS:
        values.pop(key, None)
    blocks = values.pop("experiments", None) or [{}]
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(f"{path}:{lines.get('experiments', 1)}: 'experiments' must be a list "
                          f"of mappings")
    overrides = {k: v for k, v in (overrides or {}).items() if k not in SWEEP_KEYS}
    configs, problems = [], []
    for i, block in enumerate(blocks):
        label = f"experiments[{i}]" + (f" ({block['name']})" if "name" in block else "")

        def where(key, i=i, block=block):
            if key in overrides:
                return f"command line --{key}"
            if key not in block and key not in values:  # a grid's key: the grid's line
                key = "grid"
            line = lines.get(("experiments", i, key)) if key in block else lines.get(key)
            return f"{path}:{line}" if line else str(path)

        try:
            expanded = expand_grid({**values, **block, **overrides})
        except ConfigError as error:
            problems.append(f"{where('grid')}: {label}: {error}")
            continue
        for one in expanded:
            try:
                configs.append(make_config(one, f"{label} {one['name']}" if one.get("grid")
                                           else label, where))
            except ConfigError as error:
                problems += str(error).splitlines()
    names = [c.name for c in configs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        problems.append(f"{path}: experiment names must be unique, repeated: {duplicated}")
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))  # a shared key's problem once
    return configs


def sweep_settings(path: str | Path, overrides: dict | None = None) -> SweepSettings:
    """The comparison's own keys from the file's top level (and the command line)."""
    values, lines = read_yaml(path)
    chosen = {k: v for k, v in {**values, **(overrides or {})}.items() if k in SWEEP_KEYS}
    hints = typing.get_type_hints(SweepSettings)
    typed = {}
    for key, value in chosen.items():
        try:
            typed[key] = coerce(value, hints[key], key)
        except ConfigError as error:
            raise ConfigError(f"{path}:{lines.get(key, 1)}: {error}") from error
    settings = SweepSettings(**typed)
    if settings.bootstrap_resamples < 1:
        raise ConfigError(f"{path}:{lines.get('bootstrap_resamples', 1)}: key "
                          f"'bootstrap_resamples' must be >= 1")
    return settings


def parse_overrides(args: list[str]) -> dict:
    """`--key=value` pairs, values read as YAML (so --lr=1e-4, --targets=[query,value] work)."""
    overrides = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"command line: expected --key=value, found {arg!r}")
        key, value = arg[2:].split("=", 1)
        overrides[key.replace("-", "_")] = yaml.safe_load(value)
    return overrides


# ---------------------------------------------------------------------------------------------
# --help


def config_help() -> str:
    """Every key, its default and its why-comment, read from this file's `Config` source: the
    comment lines just above a field and the comment beside it. `# ---` lines head a group."""
    return "config keys (top level: defaults of every experiment; experiments: [blocks]):\n" + \
        _keys_help(Config) + "\n\naug keys (aug: {p: 0.3, copies: 1}):\n" + \
        _keys_help(AugConfig) + "\n\nsweep keys (top level only):\n" + _keys_help(SweepSettings)


def _keys_help(cls) -> str:
    lines = inspect.getsource(cls).split(f"class {cls.__name__}:\n", 1)[1].splitlines()
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING
                         else f.default_factory()) for f in dataclasses.fields(cls)}
    text, above = [], []
    for line in lines:
        stripped = line.strip()
        field = re.match(r"(\w+): [^=]+=", stripped)  # `key: type = default  # why`
        if stripped.startswith("# ---"):
            text.append(f"\n  {stripped[5:].strip()}")
            above = []
        elif stripped.startswith("#"):
            above.append(stripped[1:].strip())
        elif not field:  # a docstring or a blank line: the comments above were not a field's
            above = []
        else:
            key = field.group(1)
            beside = stripped.split("  # ", 1)[1] if "  # " in stripped else ""
            why = " ".join(above + ([beside] if beside else []))
            text.append(textwrap.fill(f"{key} (default {defaults[key]!r}): {why}", width=100,
                                      initial_indent="  ", subsequent_indent="      "))
            above = []
    return "\n".join(text)
