"""What a run's result depends on, and the digest of it: the one answer the sweep asks.

A sweep counts a run as finished only when the record it left carries the fingerprint of the
run it would train now. `run_inputs` names everything the result depends on:

- the config keys that can change it (`run_keys`): the keys every method shares, less the
  bookkeeping ones (`BOOKKEEPING_KEYS`: where and how a run is watched), its own method's keys
  only (`rank` enters LoRA runs, so `--rank=8` leaves `full` finished), an option's keys only
  when the option is on (`crf_lr` only with `crf: true`), and a key added later only once it
  leaves the value that computes what runs did before it existed (`NEUTRAL_VALUES`);
- the code it executes (`code_files`), found from the modules it runs: the loop (train.py) and
  every project module it imports, its method's functions (`apply`, `optimizer_groups`, a
  `regularizer`) and the modules they import, crf.py with a CRF head and augment.py with
  augmentation. The method table
  is entered by the run's own entry only (`method_entry`), and the modules that only decide
  where a run's files go and how it is watched (`BOOKKEEPING_MODULES`) not at all. So editing
  crf.py's code retrains the CRF runs and nothing else, editing train.py's retrains everything;
- each corpus split by what it was read from (`origin_digest`: a file or a local hub-layout
  folder by content, a hub dataset by id, config, split and the commit the cache holds), the
  encoder (a local folder by content, a hub id by name and cached revision) and, for a fusion,
  its sources' fingerprints.

Change any of them and the run trains again (`stale_reasons` says why); change nothing and it
does not. `token_cache_key` keys the sweep's cache of tokenised corpora from the same inputs,
and the caller hands the cache to the loop, which never digests anything itself.

Code is digested as code, not text: `code_digest` parses a file and digests its syntax tree
without docstrings, so comments, docstrings and formatting change nothing, while any change to
what the code does (a name, a constant, an operator) changes the digest.

Files are hashed by content, so a copied or re-cloned corpus keeps its fingerprint. A file over
`WHOLE_FILE_LIMIT` (model weights) is digested by its size and its first and last 4 MiB: any
retraining changes those bytes, and hashing 440 MB of BioBERT for every sweep would not pay.
Left out: a hub model's weights, which are named by the hub id and the cached revision, and the
installed packages' versions.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import augment
import config
import crf
import data
import methods
import train
from corpora.sources import Origin
from model import resolve_model
from runs import config_files, folders, tracking

# The project's root, from which its modules are imported.
ROOT = Path(__file__).resolve().parent.parent
# Keys that change where or how a run is watched, never what it computes.
BOOKKEEPING_KEYS = ("repeats", "gpu", "log_every", "output_dir", "grid", "tracker",
                    "tracker_project")
# Modules that decide where a run's files go and how it is watched, never what it computes.
BOOKKEEPING_MODULES = (config_files.__name__, folders.__name__, tracking.__name__)
# The options any method can take: the key that turns each on, the module it runs and the keys
# that count only while it is on.
OPTIONS = {"crf": (crf.__name__, ("crf_lr", "crf_constraints", "crf_algorithm")),
           "aug": (augment.__name__, ())}
# Keys added after records began to name their inputs, with the value that computes what runs
# did before the key existed: at that value a key is left out of the fingerprint, so adding an
# option retrains nothing. (A key's default may change later; this value may not.)
NEUTRAL_VALUES: dict[str, object] = {
    "dora": False, "lora_plus_ratio": 0.0, "tag_scheme": "auto", "crf_algorithm": "auto",
    "original_ln_before": False, "non_linearity": "relu", "adapter_scaling": 1.0,
    "fusion_value": False, "dataset_config": "", "dataset_revision": "",
    "tokens_column": "tokens", "tags_column": "ner_tags", "entity_type": "", "entity_types": [],
    "test_dataset": "", "test_dataset_config": "", "test_dataset_revision": "", "type_map": {}}

WHOLE_FILE_LIMIT = 16 * 2**20
EDGE = 4 * 2**20


def digest(value) -> str:
    """A 16-hex-digit digest of any JSON-able value (keys sorted, so order never matters)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime key the cache only: a sweep hashes each file once, a touched file again
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_LIMIT:
            sha.update(f.read())
        else:
            sha.update(f.read(EDGE))
            f.seek(size - EDGE)
            sha.update(f.read(EDGE))
            sha.update(str(size).encode())
    return sha.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    stat = os.stat(path)
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def folder_digest(folder: str | Path) -> str:
    """Every file under `folder`, by relative path and content (hidden files skipped)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return digest({str(p.relative_to(folder)): file_digest(p) for p in files})


def encoder_digest(model: str, folder: str | Path | None) -> str:
    """A local encoder folder by content; a hub id by its name and cached revision, if any."""
    if folder is not None and Path(folder).is_dir():
        return folder_digest(folder)
    cache = Path(os.environ.get("HF_HUB_CACHE") or
                 Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    ref = cache / f"models--{model.replace('/', '--')}" / "refs" / "main"
    return digest({"hub": model, "revision": ref.read_text().strip() if ref.is_file() else None})


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """`tree` with the docstring of every module, class and function removed (in place)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.cache
def _tree_digest(source: str) -> str:
    # keyed by the text itself: a sweep parses each file once, an edited file again
    tree = _without_docstrings(ast.parse(source))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def code_digest(path: str | Path) -> str:
    """A Python file's code: its syntax tree without docstrings (comments never reach it)."""
    return _tree_digest(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# The code a run executes


def module_path(name: str) -> Path | None:
    """The project file of module `name` (`lora` -> lora.py, `runs.scoring` -> runs/scoring.py,
    a package -> its __init__.py), or None for a module from elsewhere (torch, the standard
    library)."""
    parts = ROOT.joinpath(*name.split("."))
    for candidate in (parts.with_suffix(".py"), parts / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _imports(source: str) -> tuple[str, ...]:
    # keyed by the text itself: a sweep parses each file once, an edited file again
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return tuple(dict.fromkeys(found))


def imported_modules(name: str) -> list[str]:
    """The project modules that module `name`'s code imports, at any depth of the file
    (`from corpora import schemes` imports corpora and corpora.schemes)."""
    source = module_path(name).read_text(encoding="utf-8")
    return [n for n in _imports(source) if module_path(n) is not None]


def module_closure(starts: list[str], stops: set[str]) -> list[str]:
    """`starts` and every project module they import, transitively, entering no module of
    `stops`; in the order found."""
    seen, queue = [], list(starts)
    while queue:
        name = queue.pop(0)
        if name in seen or name in stops:
            continue
        seen.append(name)
        queue += imported_modules(name)
    return seen


def method_functions(method: methods.Method) -> dict:
    """The functions of a method's entry that run while it trains: `apply`, `optimizer_groups`
    and, where it has one, `regularizer` (named only then, so that adding the field changed no
    other method's entry)."""
    functions = {"apply": method.apply, "optimizer_groups": method.optimizer_groups}
    if method.regularizer is not None:
        functions["regularizer"] = method.regularizer
    return functions


def method_entry(name: str) -> dict:
    """What in a method's entry decides what its runs compute: the functions it runs, by
    qualified name. Its default lr and `resolve` reach a run's fingerprint as the resolved
    config values; its words, formula, exports and variants never change a result."""
    return {field: f"{f.__module__}.{f.__qualname__}" if f else None
            for field, f in method_functions(methods.METHODS[name]).items()}


def code_files(cfg: config.Config) -> list[Path]:
    """The project files whose code a run executes (module docstring): the loop and what it
    imports, its method's functions and what they import, the modules of the options it takes."""
    method = methods.METHODS[cfg.method]
    switched = {methods.__name__, *BOOKKEEPING_MODULES, *(m for m, _ in OPTIONS.values())}
    starts = [train.__name__] + [f.__module__ for f in method_functions(method).values()
                                 if f is not None]
    starts += [module for option, (module, _) in OPTIONS.items() if getattr(cfg, option)]
    stops = switched - set(starts)
    return [module_path(name) for name in module_closure(starts, stops)]


# ---------------------------------------------------------------------------------------------
# A run's inputs


def run_keys(cfg: config.Config) -> list[str]:
    """The config keys that can change this run's result (module docstring)."""
    values = dataclasses.asdict(cfg)
    off = {key for option, (_, keys) in OPTIONS.items() if not getattr(cfg, option)
           for key in keys}
    return [key for key in values if methods.KEY_OWNERS.get(key, cfg.method) == cfg.method
            and key not in off and key not in BOOKKEEPING_KEYS
            and not (key in NEUTRAL_VALUES and values[key] == NEUTRAL_VALUES[key])]


def origin_digest(origin: Origin) -> str:
    """One split by what it was read from: a file by content; a hub dataset by id, config,
    split and the commit the cache holds; a local hub-layout folder by content (and config and
    split)."""
    if origin.kind == "file":
        return file_digest(origin.path)
    if origin.kind == "hub":
        return digest({"hub": origin.path, "config": origin.config, "split": origin.split,
                       "revision": origin.revision})
    return digest({"folder": folder_digest(origin.path), "config": origin.config,
                   "split": origin.split})


def run_inputs(cfg: config.Config, origins: dict[str, Origin], sources: list[str]) -> dict:
    """What a run's result depends on, by name: config values, code digests by file, what each
    corpus split was read from (`origins`, as data.load_corpus gives them), the encoder, and the
    fingerprints of the runs it is built from."""
    values = dataclasses.asdict(cfg)
    code = {str(path.relative_to(ROOT)): code_digest(path) for path in code_files(cfg)}
    code[f"methods.py ({cfg.method})"] = digest(method_entry(cfg.method))
    return {"config": {k: values[k] for k in run_keys(cfg)}, "code": code,
            "corpus": {split: origin_digest(origin) for split, origin in sorted(origins.items())},
            "encoder": encoder_digest(cfg.model, resolve_model(cfg.model)),
            "sources": sources}


def stale_reasons(old: dict | None, new: dict) -> list[str]:
    """What differs between a record's inputs and a run's inputs now, one phrase each:
    `lr 0.001 -> 0.02`, `code of crf.py`, `corpus train`, `encoder`, `a source`."""
    if not old:
        return ["its record predates named inputs"]
    reasons = []
    before, after = old.get("config", {}), new["config"]
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            reasons.append(f"{key} {before.get(key, '(absent)')!r} -> "
                           f"{after.get(key, '(absent)')!r}")
    for group, what in (("code", "code of "), ("corpus", "corpus ")):
        changed = {k for k in set(old.get(group, {})) | set(new[group])
                   if old.get(group, {}).get(k) != new[group].get(k)}
        reasons += [f"{what}{k}" for k in sorted(changed)]
    if old.get("encoder") != new["encoder"]:
        reasons.append("encoder")
    if old.get("sources") != new["sources"]:
        reasons.append("a source run")
    return reasons


def token_cache_key(cfg: config.Config, inputs: dict) -> str:
    """The key of a run's tokenised corpus in the sweep's cache: its corpus splits and encoder
    (from `inputs`, as `run_inputs` gives them), the code that reads, converts and tokenises them
    (data.py and what it imports: corpora/, the hub and BigBio readers among them), and the keys
    that choose sentences and tags (data.CORPUS_KEYS)."""
    code = {str(path.relative_to(ROOT)): code_digest(path)
            for path in map(module_path, module_closure([data.__name__], set()))}
    return digest({"code": code, "corpus": inputs["corpus"], "encoder": inputs["encoder"],
                   **{key: getattr(cfg, key) for key in data.CORPUS_KEYS}})
