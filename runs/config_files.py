"""Filling a Config from YAML files, grids and command lines, and checking it before anything
trains.

A config file's top-level keys are the defaults of every experiment; `experiments:` is a list of
blocks that override them. A block may hold `grid: {key: [v1, v2, ...], ...}`, which expands it
into one experiment per combination, named `<name>[key=v1,...]`. The keys themselves, their
defaults and why, are config.py's; which method owns which key, and each method's default
learning rate, are methods.py's.

Checking collects every problem of every experiment before anything trains: each is one line
naming `file:line` (or the command line), the experiment and the key, and what was expected.
A key of another method's in a block (`rank` in a `method: full` block) is one of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import itertools
import re
import textwrap
import types
import typing
from pathlib import Path

import yaml

import crf
import inject
from config import CHOICES, SWEEP_KEYS, AugConfig, Config, ConfigError, SweepSettings
from corpora.sources import KNOWN_CORPORA
from methods import KEY_OWNERS, METHOD_CHOICES, METHODS

# Every string key with closed choices: the run's own (config.py), the CRF's algorithms (crf.py)
# and the methods' (methods.py).
ALL_CHOICES = {"method": tuple(METHODS), **CHOICES, "crf_algorithm": ("auto", *crf.ALGORITHMS),
               **METHOD_CHOICES}

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
        if not isinstance(value, (list, dict)):  # `targets: all-linear`, `gpu: 0`: one item
            value = [value]
        if not isinstance(value, list):
            fail()
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        if args[1] is list:  # grid: key -> list of values, each checked when the grid expands
            if not all(isinstance(v, list) and v for v in value.values()):
                fail()
            return dict(value)
        return {coerce(k, args[0], key): coerce(v, args[1], f"{key}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            fail()
        fields = [f.name for f in dataclasses.fields(kind)]
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f"unknown key '{key}.{unknown[0]}'{suggestion(unknown[0], fields)}")
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

    for key, allowed in ALL_CHOICES.items():
        need(getattr(cfg, key) in allowed, key, f"one of {list(allowed)}")
    for key in ("epochs", "batch_size", "eval_batch_size", "repeats", "log_every", "rank",
                "reduction", "prefix_length", "train_layers"):
        need(getattr(cfg, key) >= 1, key, ">= 1")
    for key in ("train_limit", "eval_limit", "pad_multiple", "warmup_steps", "fusion_rank",
                "fusion_dim", "prefix_projection"):
        need(getattr(cfg, key) >= 0, key, ">= 0")
    for key in ("lr", "crf_lr", "weight_decay", "max_grad_norm", "alpha", "lora_plus_ratio",
                "adapter_scaling"):
        need(getattr(cfg, key) >= 0, key, ">= 0")
    for key in ("dropout", "lora_dropout", "warmup_ratio"):
        need(0 <= getattr(cfg, key) < 1, key, "in [0, 1)")
    need(cfg.max_length >= 8, "max_length", ">= 8")
    need(bool(cfg.targets), "targets", "a non-empty list of linear names")
    need(bool(cfg.gpu) and all(g >= -1 for g in cfg.gpu), "gpu", "-1, a device index or a list")
    if cfg.aug is not None and not (0.0 <= cfg.aug.p <= 1.0 and cfg.aug.copies >= 0):
        problems.append(("aug", f"aug needs 0 <= p <= 1 and copies >= 0, found {cfg.aug}"))
    if KEY_OWNERS["adapters"] == cfg.method:  # a fusion: its sources, and a weight for each
        need(bool(cfg.adapters), "adapters", "experiment names or run folders to fuse")
        need(not cfg.fusion_weights or len(cfg.fusion_weights) == len(cfg.adapters),
             "fusion_weights", f"one weight per adapter ({len(cfg.adapters)})")
    if cfg.fp16 and cfg.precision == "bf16":
        problems.append(("fp16", "fp16: true contradicts precision: bf16"))
    problems += corpus_key_problems(cfg)
    return problems


def corpus_key_problems(cfg: Config) -> list[tuple[str, str]]:
    """A corpus key that the run's corpora never read: set in vain, so likely a mistake."""
    hub, test_hub = cfg.dataset.startswith("hf:"), cfg.test_dataset.startswith("hf:")
    when = {  # key -> (whether the run reads it, when it would)
        "dataset_config": (hub, "a hub dataset (dataset: hf:...)"),
        "dataset_revision": (hub, "a hub dataset (dataset: hf:...)"),
        "test_dataset_config": (test_hub, "a hub test corpus (test_dataset: hf:...)"),
        "test_dataset_revision": (test_hub, "a hub test corpus (test_dataset: hf:...)"),
        "tokens_column": (hub or test_hub, "a hub dataset (dataset or test_dataset: hf:...)"),
        "tags_column": (hub or test_hub, "a hub dataset (dataset or test_dataset: hf:...)"),
        "entity_type": (hub or test_hub, "a hub dataset (dataset or test_dataset: hf:...)"),
        "type_map": (bool(cfg.test_dataset), "a test corpus (test_dataset)"),
    }
    defaults = Config()
    return [(key, f"key {key!r} is read only for {what}, found {getattr(cfg, key)!r}")
            for key, (read, what) in when.items()
            if not read and getattr(cfg, key) != getattr(defaults, key)]


def suggestion(word: str, known) -> str:
    """`; did you mean 'epochs'?` for the closest of `known` to a misspelled `word`, or ''."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def renamed(values: dict, where: str) -> tuple[dict, list[tuple[str, str]]]:
    """`values` with keys under their present names, and (key, problem) for a key given under
    both names. `where` says, in the note printed for an old name, where it was written."""
    if "fusion" not in values:  # fusion_mode's name before it stopped sharing one with fusion.py
        return values, []
    if "fusion_mode" in values:
        return ({k: v for k, v in values.items() if k != "fusion"},
                [("fusion", "key 'fusion' is the old name of 'fusion_mode': keep one")])
    print(f"{where}: key 'fusion' is now 'fusion_mode'; read as such")
    return {("fusion_mode" if k == "fusion" else k): v for k, v in values.items()}, []


def typed_values(values: dict) -> tuple[dict, list[tuple[str, str]]]:
    """The keys of `values` that a Config has, each as its type, and (key, what is wrong) for
    each unknown key (with the nearest known one) and each value of the wrong type."""
    hints = typing.get_type_hints(Config)
    typed, problems = {}, []
    for key, value in values.items():
        if key not in hints:
            problems.append((key, f"unknown key {key!r}{suggestion(key, hints)}"))
            continue
        try:
            typed[key] = coerce(value, hints[key], key)
        except ConfigError as error:
            problems.append((key, str(error)))
    return typed, problems


def resolved(cfg: Config) -> tuple[Config, list[tuple[str, str]]]:
    """`cfg` with what its keys mean written out: `fp16` as the precision, target presets as the
    linears they name, `lr: 0` as the method's default, and the keys its method resolves (a
    bottleneck adapter's kind defaults); and (key, what is wrong) where the method rules a
    value out. Call it on a config whose values pass `value_problems`."""
    if cfg.fp16:
        cfg.precision = "fp16"
    cfg.targets = inject.expand_targets(cfg.targets)  # the linears themselves, from here on
    method = METHODS[cfg.method]
    if cfg.lr == 0:
        cfg.lr = method.default_lr
    if method.resolve is not None:  # keys whose default depends on others, filled in
        try:
            values = method.resolve(cfg)
        except ValueError as error:  # (key, message)
            return cfg, [error.args]
        for key, value in values.items():
            setattr(cfg, key, value)
    return cfg, []


def make_config(values: dict, source: str = "config") -> Config:
    """A checked, resolved Config from plain values (a run's config.json, a test's dict): every
    problem in one ConfigError, a line each, prefixed by `source`."""
    values, problems = renamed(values, source)
    typed, more = typed_values(values)
    cfg = Config(**typed)  # what could be read; the rest keeps its (valid) defaults
    problems += more + value_problems(cfg)
    if not problems:
        cfg, problems = resolved(cfg)
    if problems:
        raise ConfigError("\n".join(f"{source}: {message}" for _, message in problems))
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


def grid_groups(configs: list[Config]) -> dict[str, list[str]]:
    """Experiments expanded from one gridded block, by the block's name (as `grid_name` gave
    them theirs)."""
    groups: dict[str, list[str]] = {}
    for cfg in configs:
        if cfg.grid:
            groups.setdefault(cfg.name.split("[", 1)[0], []).append(cfg.name)
    return groups


def expand_grid(block: dict) -> list[dict]:
    """One block per combination of the block's `grid:` values (itself if it has none).
    Values are typed first, so a grid over `lr: [5e-4, 1e-3]` names `lr=0.0005`."""
    grid = block.get("grid") or {}
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(grid) - set(hints))
    if unknown:
        raise ConfigError(f"grid: unknown key {unknown[0]!r}{suggestion(unknown[0], hints)}")
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
    single experiment.

    Every problem of the file is reported together, once, where it was made: a top-level key's
    at its line, a command line's as `command line --key`, a block's at its line with the
    experiment's name. A misspelled key names the nearest known one."""
    values, lines = read_yaml(path)
    for key in SWEEP_KEYS:
        values.pop(key, None)
    blocks = values.pop("experiments", None) or [{}]
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(f"{path}:{lines.get('experiments', 1)}: 'experiments' must be a list "
                          f"of mappings")
    overrides = {k: v for k, v in (overrides or {}).items() if k not in SWEEP_KEYS}
    if "output_dir" not in values and "output_dir" not in overrides:
        values["output_dir"] = str(Path("outputs") / Path(path).stem)  # each config its own

    def at(line_key) -> str:
        return f"{path}:{lines[line_key]}" if line_key in lines else str(path)

    # The top level and the command line, once each
    values, problems = renamed(values, at("fusion"))
    top, more = typed_values(values)
    problems = [f"{at(key)}: {message}" for key, message in problems + more]
    command_line, more = typed_values(overrides)
    problems += [f"command line --{key}: {message}" for key, message in more]
    # Each block, and each experiment it expands into
    configs = []
    for i, block in enumerate(blocks):
        label = f"experiments[{i}]" + (f" ({block['name']})" if "name" in block else "")

        def where(key, i=i, block=block) -> tuple[str, bool]:
            """Where `key`'s value was written, and whether in this block."""
            if key in overrides:
                return f"command line --{key}", False
            if key in block or key not in values:  # a grid's key: the grid's line
                return at(("experiments", i, key if key in block else "grid")), True
            return at(key), False

        block, renaming = renamed(block, at(("experiments", i, "fusion")))
        own, more = typed_values(block)
        problems += [f"{at(('experiments', i, key))}: {label}: {message}"
                     for key, message in renaming + more]
        try:
            expanded = expand_grid({**top, **own, **command_line})
        except ConfigError as error:
            problems.append(f"{where('grid')[0]}: {label}: {error}")
            continue
        for one in expanded:
            source = f"{label} {one['name']}" if one.get("grid") else label
            cfg = Config(**one)
            written = [*block, *(block.get("grid") or [])]  # this block's own keys
            found = value_problems(cfg)
            if not found:
                cfg, found = resolved(cfg)
            for key, message in found:
                place, in_block = where(key)
                if not in_block:  # the top level's or the command line's, said once
                    problems.append(f"{place}: {message}")
                elif KEY_OWNERS.get(key, cfg.method) == cfg.method:  # else: foreign, below
                    problems.append(f"{place}: {source}: {message}")
            problems += [f"{where(key)[0]}: {source}: {message}"
                         for key, message in foreign_keys(cfg, written)]
            configs.append(cfg)
    names = [c.name for c in configs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        problems.append(f"{path}: experiment names must be unique, repeated: {duplicated}")
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))  # a shared key's problem once
    return configs


def foreign_keys(cfg: Config, written: list[str]) -> list[tuple[str, str]]:
    """(key, why) for each key `written` in an experiment's own block that belongs to another
    method than the experiment's: it would silently do nothing. Top-level keys and overrides
    are defaults for whichever methods use them, so they are never foreign."""
    problems = []
    for key in dict.fromkeys(written):
        owner = KEY_OWNERS.get(key)
        if owner is not None and owner != cfg.method:
            why = f"key {key!r} belongs to method {owner!r}, not {cfg.method!r} (this block's)"
            problems.append((key, why))
    return problems


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
    comment lines just above a field and the comment beside it. `# ---` lines head a group. Then
    the methods and the corpora known by name."""
    return "config keys (top level: defaults of every experiment; experiments: [blocks]):\n" + \
        _keys_help(Config) + "\n\naug keys (aug: {p: 0.3, copies: 1}):\n" + \
        _keys_help(AugConfig) + "\n\nsweep keys (top level only):\n" + \
        _keys_help(SweepSettings) + "\n\nmethods (method: NAME; methods.py):\n" + \
        _methods_help() + "\n\nknown corpora (dataset: NAME; downloaded once when no data " \
        "directory is set):\n" + textwrap.fill(", ".join(KNOWN_CORPORA), width=100,
                                                initial_indent="  ", subsequent_indent="  ")


def _methods_help() -> str:
    lines = []
    for method in METHODS.values():
        keys = f"; its keys: {', '.join(method.keys)}" if method.keys else ""
        lines.append(textwrap.fill(f"{method.name}: trains {method.trains}; default lr "
                                   f"{method.default_lr:g}{keys}", width=100,
                                   initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


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
            if key in ALL_CHOICES:
                why += f" (one of: {', '.join(ALL_CHOICES[key])})"
            text.append(textwrap.fill(f"{key} (default {defaults[key]!r}): {why}", width=100,
                                      initial_indent="  ", subsequent_indent="      "))
            above = []
    return "\n".join(text)
