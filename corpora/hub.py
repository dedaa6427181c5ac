"""Hub datasets as sentences: `dataset: hf:<hub id or local folder>`, read with 🤗 Datasets.

A hub id (`hf:bigbio/blurb`, config `bc2gm`) is downloaded once and cached the way 🤗 Datasets
caches (`~/.cache/huggingface/datasets`, or $HF_DATASETS_CACHE), and read from that cache
offline (HF_HUB_OFFLINE=1) after. A local folder (`hf:/data/my_corpus`) laid out as a hub
dataset repository (parquet or JSON files per split, with or without a README `configs:` header)
is read the same way; that is how tests and machines without network give one.

Two kinds of rows become sentences:

- **Token rows** (`tokens`, `ner_tags`; other names in `tokens_column`, `tags_column`): one
  sentence a row. ClassLabel integers are read through the feature's names, strings as they
  are, in any scheme schemes.py reads (converted to BIO). Tags without a type (`O`, `B`, `I`,
  as in bigbio/blurb) take it from `entity_type`, else from the row's `type` column.
- **BigBio `bigbio_kb` documents** (columns `passages` and `entities`): bigbio.py.

Splits: `train`, `test`, and one devel split under any of the names `validation`, `devel`,
`dev`. Every problem (no such config, with the ones that exist; a missing split or column; an
empty split; a tag that is no tag) is one line naming the dataset.

`load` is `datasets.load_dataset` in its two steps (`load_dataset_builder`, then
`download_and_prepare` and `as_dataset`), so that the commit it resolved is known: the builder's
hash, which for a hub id is the commit the cache holds. A run's fingerprint names a hub
dataset by id, config, split and that commit (sources.Origin).

`datasets` is imported inside the functions that need it: a run on TSV files never pays for it.

Worked example, untyped ClassLabel tags with a `type` column:

    {"tokens": ["BRCA1", "mutations"], "ner_tags": [1, 0], "type": "Gene"},
    names ["O", "B", "I"]                    -> Sentence(["BRCA1", "mutations"], ["B-Gene", "O"])

Left out: streaming (a corpus is read whole), repositories that hold only a loading script
(🤗 Datasets 4 and later no longer runs them, as many BigBio repositories still are: the error
says to pin a parquet revision or convert one into a local folder, docs/corpora.md), and
BigBio's other schemas (`bigbio_text`, `bigbio_pairs`, ...).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from corpora import bigbio, iob, schemes
from corpora.iob import Sentence
from corpora.sources import Origin

PREFIX = "hf:"
# Our split names, each with the names a dataset may give it.
SPLIT_NAMES = {"train": ("train",), "devel": ("validation", "devel", "dev"), "test": ("test",)}
DATA_EXTENSIONS = (".parquet", ".jsonl", ".json")
UNTYPED = set(schemes.PREFIXES["iobes"])  # a tag that is a bare prefix: B, I, E, S, U, L
TYPE_COLUMN = "type"  # the column that types untyped tags, as bigbio/blurb has it


def is_hub(dataset: str) -> bool:
    return dataset.startswith(PREFIX)


def local_folder(name: str) -> Path | None:
    """The folder `name` names (an existing folder, or anything written as a path), else None:
    a hub id."""
    path = Path(name).expanduser()
    return path if path.is_dir() or name.startswith((".", "/", "~")) else None


def cache_folder() -> Path:
    """Where 🤗 Datasets keeps prepared datasets: $HF_DATASETS_CACHE or
    ~/.cache/huggingface/datasets."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE).expanduser()


def is_cached(name: str) -> bool:
    """Whether hub dataset `name` has been prepared in the cache (any config), which is what
    🤗 Datasets reads offline: <cache>/<owner>___<name>/<config>/<version>/<commit>/."""
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = cache_folder() / "___".join(parts)
    return any(p.is_dir() for p in root.glob("*/*/*"))


def offline() -> bool:
    """HF_HUB_OFFLINE or HF_DATASETS_OFFLINE: 🤗 Datasets reads its cache only."""
    import datasets
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


# What to do about a hub dataset kept as a loading script (many BigBio ones): docs/corpora.md.
SCRIPT_REMEDY = ("pin a revision that holds data files (dataset_revision: refs/convert/parquet, "
                 "where the hub made one), or convert it once into a local folder "
                 "(docs/corpora.md) and give that as dataset: hf:/path/to/folder")
# What to do about a hub dataset that cannot be had here.
REMEDY = ("run once where there is network to cache it, or give a local folder laid out as a hub "
          "dataset (parquet or JSON files per split) as dataset: hf:/path/to/folder")


# ---------------------------------------------------------------------------------------------
# Loading


def has_configs_header(folder: Path) -> bool:
    """Whether the folder's README.md starts with a YAML header that declares `configs:`."""
    readme = folder / "README.md"
    if not readme.is_file():
        return False
    header = re.match(r"---\n(.*?)\n---", readme.read_text(encoding="utf-8"), flags=re.DOTALL)
    return bool(header and re.search(r"^configs:", header.group(1), flags=re.MULTILINE))


def split_files(folder: Path) -> dict[str, list[str]] | None:
    """The data files of a local folder without a `configs:` header, by split, from their
    names: `<split>.parquet`, `<split>-00000-of-00001.parquet`, `data/<split>.jsonl`, ...
    🤗 Datasets' own guess knows `validation`, `dev` and `val` but not `devel` (it would leave
    such a file out), so the split names are this module's. None when no file is named for a
    split: 🤗 Datasets then guesses alone."""
    found: dict[str, list[str]] = {}
    names = {n for ns in SPLIT_NAMES.values() for n in ns}
    for path in sorted([*folder.glob("*"), *folder.glob("data/*")]):
        stem = re.split(r"[-._]", path.name, maxsplit=1)[0]
        if path.is_file() and path.suffix in DATA_EXTENSIONS and stem in names:
            found.setdefault(stem, []).append(str(path))
    return found or None


def load(name: str, config: str = "", revision: str = ""):
    """(DatasetDict, the commit resolved: "" for a local folder) of hub id or local folder
    `name`; ValueError or FileNotFoundError in one line for what 🤗 Datasets could not do."""
    import datasets

    where = f"dataset {PREFIX}{name}"
    folder = local_folder(name)
    files = None
    if folder is not None:
        if not folder.is_dir():
            raise FileNotFoundError(f"{where}: no such folder")
        if not has_configs_header(folder) and not config:
            files = split_files(folder)
    try:
        builder = datasets.load_dataset_builder(
            str(folder) if folder else name, config or None, data_files=files,
            revision=None if folder else (revision or None))
        builder.download_and_prepare()
        rows = builder.as_dataset()
    except ConnectionError as error:
        raise FileNotFoundError(f"{where} is not in the 🤗 Datasets cache ({cache_folder()}) and "
                                f"the hub cannot be reached ({error}); {REMEDY}") from error
    except FileNotFoundError as error:  # DatasetNotFoundError among them
        raise FileNotFoundError(f"{where}: {one_line(error)}") from error
    except ValueError as error:  # a config missing or unknown, an empty split, ...
        empty = re.search(r'Instruction "(.+?)" corresponds to no data', str(error))
        if empty:  # 🤗 Datasets cannot even build a split of no rows
            raise ValueError(f"{where} {empty.group(1)}: no rows (empty split)") from error
        configs = config_names(name if folder is None else str(folder), revision)
        if configs and (config not in configs if config else len(configs) > 1):
            asked = f"no config {config!r}" if config else "a config is needed"
            raise ValueError(f"{where}: {asked} (dataset_config): its configs are "
                             f"{', '.join(configs)}") from error
        raise ValueError(f"{where}: {one_line(error)}") from error
    except RuntimeError as error:  # a repository that holds a loading script
        script = re.search(r"found (\S+\.py)", str(error))
        if not script:
            raise
        raise ValueError(f"{where}: the repository holds a loading script ({script.group(1)}), "
                         f"which 🤗 Datasets no longer runs: {SCRIPT_REMEDY}") from error
    except datasets.exceptions.DatasetsError as error:  # files it could not build splits of
        raise ValueError(f"{where}: {one_line(error)}") from error
    commit = "" if folder else builder.hash
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision) and commit != revision:
        raise ValueError(f"{where}: dataset_revision {revision} is pinned, but the cache holds "
                         f"commit {commit} (offline, 🤗 Datasets reads the latest cached one)")
    return rows, commit


def config_names(path: str, revision: str = "") -> list[str]:
    """The dataset's configs, or [] when they cannot be had."""
    import datasets

    try:
        return list(datasets.get_dataset_config_names(path, revision=revision or None))
    except Exception:  # noqa: BLE001 - only said in an error message; any failure means none
        return []


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def choose_splits(available: Sequence[str], needed: Sequence[str], where: str) -> dict[str, str]:
    """Our split name -> the dataset's, for each of `needed` (train, devel, test)."""
    chosen = {}
    for split in needed:
        names = [n for n in SPLIT_NAMES[split] if n in available]
        if not names:
            also = " (a test split from another corpus: test_dataset)" if split == "test" else ""
            raise ValueError(f"{where}: no {split} split ({' or '.join(SPLIT_NAMES[split])}); "
                             f"its splits are {', '.join(available)}{also}")
        if len(names) > 1:
            raise ValueError(f"{where}: splits {' and '.join(names)} are both a {split} split; "
                             f"keep one")
        chosen[split] = names[0]
    return chosen


# ---------------------------------------------------------------------------------------------
# Token rows


def tag_names(rows, column: str, where: str):
    """The names of a column's ClassLabel (of its items, for a list column), or None for a
    string column; ValueError for anything else."""
    from datasets import ClassLabel, Value

    feature = rows.features[column]
    inner = getattr(feature, "feature", feature)  # a List's items, or the column itself
    if isinstance(inner, ClassLabel):
        return inner.names
    if isinstance(inner, Value) and inner.dtype in ("string", "large_string"):
        return None
    raise ValueError(f"{where}: column {column!r} holds {feature}, expected strings or "
                     f"ClassLabel integers")


def token_sentences(rows, tokens_column: str, tags_column: str, entity_type: str,
                    tag_scheme: str, where: str) -> list[Sentence]:
    """One sentence per row, tags in BIO (module docstring)."""
    for column in (tokens_column, tags_column):
        if column not in rows.column_names:
            key = "tokens_column" if column == tokens_column else "tags_column"
            raise ValueError(f"{where}: no column {column!r} (columns: "
                             f"{', '.join(rows.column_names)}); name it with {key}")
    names = tag_names(rows, tags_column, where)
    types = None
    if not entity_type and TYPE_COLUMN in rows.column_names:
        type_names = tag_names(rows, TYPE_COLUMN, where)
        types = [type_names[t] if type_names else t for t in rows[TYPE_COLUMN]]
    sentences = []
    for row, (tokens, tags) in enumerate(zip(rows[tokens_column], rows[tags_column])):
        at = f"{where} row {row}"
        if names is not None:
            tags = [names[t] for t in tags]
        if len(tokens) != len(tags):
            raise ValueError(f"{at}: {len(tokens)} tokens but {len(tags)} tags")
        if any(not isinstance(t, str) or not t.strip() for t in tokens):
            raise ValueError(f"{at}: an empty token in {tokens!r}")
        kind = entity_type or (types[row] if types else "")
        if any(tag in UNTYPED for tag in tags):
            if not kind:
                raise ValueError(f"{at}: tags without a type ({', '.join(sorted(set(tags)))}): "
                                 f"set entity_type, or give a {TYPE_COLUMN!r} column")
            tags = [f"{tag}-{kind}" if tag in UNTYPED else tag for tag in tags]
        for tag in tags:
            problem = iob.tag_problem(tag, tag_scheme)
            if problem:
                raise ValueError(f"{at}: {problem}")
        sentences.append(Sentence(list(tokens), tags))
    return iob.in_bio(sentences, tag_scheme, where)


# ---------------------------------------------------------------------------------------------
# A corpus's splits


def read_splits(dataset: str, needed: Sequence[str], config: str = "", revision: str = "",
                tokens_column: str = "tokens", tags_column: str = "ner_tags",
                entity_type: str = "", entity_types: Sequence[str] = (),
                tag_scheme: str = "auto") -> tuple[dict[str, list[Sentence]], dict[str, Origin]]:
    """The `needed` splits of hub dataset `dataset` (`hf:...`) as BIO sentences, and what each
    was read from. `entity_types` keeps only those types of a `bigbio_kb` dataset's entities
    (before overlaps are resolved); sentence rows keep every type (data.py filters)."""
    name = dataset.removeprefix(PREFIX)
    where = f"dataset {dataset}" + (f" (config {config})" if config else "")
    rows, commit = load(name, config, revision)
    chosen = choose_splits(list(rows), needed, where)
    folder = local_folder(name)
    kind, path = ("folder", str(folder.resolve())) if folder else ("hub", name)
    sentences, origins = {}, {}
    for split, theirs in chosen.items():
        at = f"{where} {theirs}"
        if rows[theirs].num_rows == 0:
            raise ValueError(f"{at}: no rows (empty split)")
        if bigbio.is_bigbio_kb(rows[theirs].column_names):
            sentences[split], counts = bigbio.to_sentences(rows[theirs], entity_types)
            print(f"{at}: {counts}", file=sys.stderr)
        else:
            sentences[split] = token_sentences(rows[theirs], tokens_column, tags_column,
                                               entity_type, tag_scheme, at)
        if not sentences[split]:
            raise ValueError(f"{at}: no sentences (empty split)")
        origins[split] = Origin(kind, path, config, theirs, commit)
    return sentences, origins
