"""Everything a sweep reads, checked before its first run: corpora, encoders, fusion sources,
tracker packages.

An encoder is resolved once per distinct `model:`, before anything is spawned: a package must be
installed; a folder must hold a config, weights and a tokenizer; a hub id must be in the
Hugging Face cache or fetchable now (one request for its config.json, at most 5 s). A hub
dataset (`dataset: hf:...`) likewise, once per dataset: a local folder must exist, a hub id
must be in the 🤗 Datasets cache or fetchable now (one request, at most 5 s). Offline or
unreachable, the one line says where the cache is and how to give a local folder. Every
distinct corpus is then read once, as its runs will read it, so a missing config, split or
column, or an empty split, is a line here too.

Each problem is one line naming the experiment and what was wrong (a corpus line as
`file:line`); compare.py and slurm.py print them together and stop with status 2 before
anything trains or is written. The experiments' configs themselves are checked as they are read
(runs/config_files.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from config import Config, ConfigError
from methods import METHODS, sources_of
from runs import tracking
from runs.folders import read_saved_run


def check_inputs(configs: list[Config]) -> tuple[list[str], Callable[[Config], dict]]:
    """Problems (one line each) with the corpora, encoders and fusion sources the sweep
    needs, and a function that gives a run's corpus origins (what each split was read from,
    data.Corpus.origins) for sweep.plan. Each distinct corpus is read once; a hub dataset that
    cannot be had is said once, however many experiments use it, and its corpora are not
    read."""
    import data

    problems = fusion_problems(configs)
    hub_users: dict[str, list[str]] = {}  # hub dataset -> the experiments that read it
    encoders: dict[str, list[str]] = {}  # model -> the experiments that use it
    for cfg in configs:
        for name in (cfg.dataset, cfg.test_dataset):
            if name.startswith("hf:"):
                hub_users.setdefault(name, []).append(cfg.name)
        package = tracking.PACKAGES.get(cfg.tracker)
        if package and importlib.util.find_spec(package) is None:
            problems.append(f"experiment {cfg.name!r}: tracker: {cfg.tracker} needs the "
                            f"{package!r} package (pip install {package})")
        encoders.setdefault(cfg.model, []).append(cfg.name)
    unavailable = set()
    for name, users in hub_users.items():  # one line per hub dataset, however many read it
        problem = dataset_problem(name.removeprefix("hf:"))
        if problem:
            unavailable.add(name)
            problems.append(f"{problem} ({used_by(users)})")
    origins = {}
    for cfg in configs:
        key = data.corpus_key(cfg)
        if key in origins or {cfg.dataset, cfg.test_dataset} & unavailable:
            continue
        try:
            origins[key] = data.load_corpus(cfg).origins
        except (OSError, ValueError) as error:
            origins[key] = None
            problems.append(f"experiment {cfg.name!r}: {error}")
    for model, names in encoders.items():  # one line per encoder, however many use it
        problem = encoder_problem(model)
        if problem:
            problems.append(f"{problem} ({used_by(names)})")
    return list(dict.fromkeys(problems)), lambda cfg: origins[data.corpus_key(cfg)]


def fetch_problem(what: str, cache: str, url: str, remedy: str, timeout: float) -> str | None:
    """Why `what`, which is not in `cache`, cannot be fetched from the hub now, or None: one
    request for `url` (HEAD, no retries: huggingface_hub's own back off for ~20 s)."""
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError as error:  # the hub answered: no such (public) repository
        return f"{what}: {url} answered HTTP {error.code} ({error.reason}); {remedy}"
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        return (f"{what} is not in {cache} and the hub ({constants.ENDPOINT}) cannot be reached "
                f"({reason}); {remedy}")
    return None


def dataset_problem(name: str, timeout: float = 5.0) -> str | None:
    """Why hub dataset `name` (`hf:` stripped) cannot be read here, or None: a local folder
    must exist; a hub id must be in the 🤗 Datasets cache or fetchable now (one request, at most
    5 s). What is wrong inside a dataset that can be read (a config, a split, a column) is said
    by reading it (corpora/hub.py)."""
    from corpora import hub

    folder = hub.local_folder(name)
    if folder is not None:
        return None if folder.is_dir() else f"dataset 'hf:{name}': no such folder"
    if hub.is_cached(name):
        return None
    cache = f"the 🤗 Datasets cache ({hub.cache_folder()})"
    if hub.offline():
        return (f"dataset 'hf:{name}' is not in {cache} and the hub is offline (HF_HUB_OFFLINE "
                f"or HF_DATASETS_OFFLINE); {hub.REMEDY}")
    from huggingface_hub import constants

    return fetch_problem(f"dataset 'hf:{name}'", cache, f"{constants.ENDPOINT}/api/datasets/{name}",
                         hub.REMEDY, timeout)


def used_by(names: list[str], shown: int = 3) -> str:
    """`used by experiment 'a'`, or by count and the first few: `used by 49 experiments: 'full',
    'lora-r16', 'lora-r16-crf', …`."""
    names = list(dict.fromkeys(names))  # an experiment may read a dataset twice (its test)
    if len(names) == 1:
        return f"used by experiment {names[0]!r}"
    more = ", …" if len(names) > shown else ""
    return f"used by {len(names)} experiments: {', '.join(map(repr, names[:shown]))}{more}"


def encoder_problem(name: str, timeout: float = 5.0) -> str | None:
    """Why the encoder `name` cannot be loaded (module docstring), or None."""
    from model import resolve_model

    try:
        folder = resolve_model(name)  # package:<module> must be installed
    except ConfigError as error:
        return str(error)
    path = Path(folder).expanduser()
    if path.is_dir() or folder.startswith((".", "/", "~")):
        if not path.is_dir():
            return f"model {name!r}: no such folder"
        missing = [what for what, found in (
            ("config.json", (path / "config.json").is_file()),
            ("weights (*.safetensors or *.bin)",
             any(path.glob("*.safetensors")) or any(path.glob("*.bin"))),
            ("a tokenizer (tokenizer.json or vocab.txt)",
             (path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()))
            if not found]
        return f"model {name!r}: folder {path} lacks {', '.join(missing)}" if missing else None
    from huggingface_hub import constants, try_to_load_from_cache

    cache = constants.HF_HUB_CACHE
    if isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache), str):
        return None
    local = (f"download it once where there is network (hf download {name}), or give a local "
             f"folder holding config.json, weights and a tokenizer as model: /path/to/folder")
    if constants.HF_HUB_OFFLINE:
        return (f"model {name!r} is not in the Hugging Face cache ({cache}) and the hub is "
                f"offline (HF_HUB_OFFLINE); {local}")
    return fetch_problem(f"model {name!r}", f"the Hugging Face cache ({cache})",
                         f"{constants.ENDPOINT}/{name}/resolve/main/config.json", local, timeout)


def seeds_problem(source: Config, cfg: Config) -> str | None:
    """Why the sweep experiment `source` has too few seeds for the experiment `cfg` built from
    it (one source run per seed of the fusion), or None. Whether its adapters can be fused at
    all is the method's own check (`check_sources`)."""
    needed = set(range(cfg.seed, cfg.seed + cfg.repeats))
    have = set(range(source.seed, source.seed + source.repeats))
    if not needed <= have:
        return f"it runs seeds {sorted(have)}, the fusion needs {sorted(needed)}"
    return None


def fusion_problems(configs: list[Config]) -> list[str]:
    """Every fusion experiment's sources checked before anything trains, one line each: that
    each exists (an experiment of the sweep with the seeds needed, or a run folder) and, by the
    method's own checker, that the fusion can take them."""
    by_name = {c.name: c for c in configs}
    problems = []
    for cfg in configs:
        method = METHODS[cfg.method]
        if method.sources_key is None:
            continue
        sources = []  # (kind, config values) of each source that could be read
        for name in sources_of(cfg):
            if name in by_name:
                problem = seeds_problem(by_name[name], cfg)
                if problem:
                    problems.append(f"experiment {cfg.name!r}: source {name!r}: {problem}")
                else:
                    source = by_name[name]
                    sources.append((METHODS[source.method].source_kind,
                                    dataclasses.asdict(source)))
            elif Path(name).is_dir():
                try:
                    values = read_saved_run(Path(name)).config
                    kind = METHODS[values.get("method", "")].source_kind
                except (ValueError, KeyError) as error:
                    problems.append(f"experiment {cfg.name!r}: source {name}: {error}")
                    continue
                sources.append((kind, values))
            else:
                problems.append(f"experiment {cfg.name!r}: adapter {name!r} is neither an "
                                f"experiment of this sweep ({', '.join(by_name)}) nor a run "
                                f"folder")
        if sources and method.check_sources is not None:
            problems += [f"experiment {cfg.name!r}: {problem}"
                         for problem in method.check_sources(cfg, sources)]
    return problems

