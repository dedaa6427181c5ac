"""Where a corpus named in a config comes from: a folder, a data directory, or a download.

`find_corpus(dataset, data_dir)` gives the paths of `{train,devel,test}.tsv` (a hub dataset,
`hf:...`, is hub.py's; `Origin` names what any split was read from). `dataset` is a
folder holding the three files, or a name looked up in the data directory (the config key
`data_dir`, else $NER_DATA_DIR). Without a data directory, a corpus known by name is downloaded
once from the public MTL-Bioinformatics-2016 repository (Crichton et al. 2017), with Python's
own urllib, and cached under $XDG_CACHE_HOME (or ~/.cache)/ner-peft/corpora/<name>/.

Left out: checksums of the downloaded files (the repository is not versioned by release).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "devel", "test")
# Public corpora known by name: every `-IOB` folder of cambridgeltl/MTL-Bioinformatics-2016's
# data/ on GitHub (Crichton et al. 2017), under the folder's name in lower case with `_` for
# `-`. A `_<kind>` name is the corpus beside it with one kind of entity kept, as the repository
# ships it: cc cellular components, cell cells, chem chemicals, ggp genes and gene products,
# species. BC4CHEMD is left out: its folder is not an `-IOB` one, and the repository calls its
# redistribution status unclear.
KNOWN_CORPORA = {
    "anatem": "AnatEM-IOB",
    "bc2gm": "BC2GM-IOB",
    "bc5cdr": "BC5CDR-IOB",
    "bc5cdr_chem": "BC5CDR-chem-IOB",
    "bc5cdr_disease": "BC5CDR-disease-IOB",
    "bionlp09": "BioNLP09-IOB",
    "bionlp11epi": "BioNLP11EPI-IOB",
    "bionlp11id": "BioNLP11ID-IOB",
    "bionlp11id_chem": "BioNLP11ID-chem-IOB",
    "bionlp11id_ggp": "BioNLP11ID-ggp-IOB",
    "bionlp11id_species": "BioNLP11ID-species-IOB",
    "bionlp13cg": "BioNLP13CG-IOB",
    "bionlp13cg_cc": "BioNLP13CG-cc-IOB",
    "bionlp13cg_cell": "BioNLP13CG-cell-IOB",
    "bionlp13cg_chem": "BioNLP13CG-chem-IOB",
    "bionlp13cg_ggp": "BioNLP13CG-ggp-IOB",
    "bionlp13cg_species": "BioNLP13CG-species-IOB",
    "bionlp13ge": "BioNLP13GE-IOB",
    "bionlp13pc": "BioNLP13PC-IOB",
    "bionlp13pc_cc": "BioNLP13PC-cc-IOB",
    "bionlp13pc_chem": "BioNLP13PC-chem-IOB",
    "bionlp13pc_ggp": "BioNLP13PC-ggp-IOB",
    "craft": "CRAFT-IOB",
    "craft_cc": "CRAFT-cc-IOB",
    "craft_cell": "CRAFT-cell-IOB",
    "craft_chem": "CRAFT-chem-IOB",
    "craft_ggp": "CRAFT-ggp-IOB",
    "craft_species": "CRAFT-species-IOB",
    "ex_ptm": "Ex-PTM-IOB",
    "linnaeus": "linnaeus-IOB",
    "ncbi_disease": "NCBI-disease-IOB",
}
SOURCE_URL = ("https://github.com/cambridgeltl/MTL-Bioinformatics-2016/raw/master/data/"
              "{folder}/{split}.tsv")
DATA_DIR_ENV = "NER_DATA_DIR"
# Where downloaded corpora are kept: <cache>/ner-peft/corpora/<name>/<split>.tsv
CACHE_ENV = "XDG_CACHE_HOME"



@dataclass(frozen=True)
class Origin:
    """What one split of a run's corpus was read from, by name: the run's fingerprint digests it
    (comparison/fingerprint.py), and messages name it."""
    kind: str  # file (two-column IOB), hub (a hub dataset), folder (a local hub-layout folder)
    path: str  # the file, the hub id, or the folder
    config: str = ""  # hub and folder: the dataset config
    split: str = ""  # hub and folder: the split's own name there (validation, devel, dev, ...)
    revision: str = ""  # hub: the commit the cache holds

    def __str__(self) -> str:
        if self.kind == "file":
            return self.path
        config = f", config {self.config}" if self.config else ""
        return f"hf:{self.path} ({self.split} split{config})"


def corpus_folders(data_dir: Path) -> list[str]:
    """The corpora in a data directory: its folders that hold the three splits."""
    if not data_dir.is_dir():
        return []
    return sorted(p.name for p in data_dir.iterdir()
                  if all((p / f"{split}.tsv").is_file() for split in SPLITS))


def find_corpus(dataset: str, data_dir: str | None) -> dict[str, Path]:
    """Paths of the three splits of `dataset`.

    `dataset` is a folder holding `{train,devel,test}.tsv`, or a corpus name looked up as
    `<data_dir>/<dataset>/` (data_dir from the config, else $NER_DATA_DIR). Without a data
    directory, a known corpus is downloaded from its public source and cached.
    """
    folder = Path(dataset).expanduser()
    if not folder.is_dir():
        named = "the config key 'data_dir'" if data_dir else f"${DATA_DIR_ENV}"
        data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
        if data_dir and not Path(data_dir).expanduser().is_dir():
            raise FileNotFoundError(
                f"data directory {data_dir!r} (from {named}) does not exist: point it at a "
                f"folder of corpora, or unset it to download the known corpora")
        if data_dir:
            folder = Path(data_dir).expanduser() / dataset
            if not folder.is_dir():
                there = corpus_folders(Path(data_dir).expanduser())
                raise FileNotFoundError(
                    f"dataset {dataset!r}: no folder {folder} (data directory {data_dir!r} "
                    f"from the config key 'data_dir' or ${DATA_DIR_ENV}; the corpora there: "
                    f"{', '.join(there) or 'none'}); without a data directory these names are "
                    f"downloaded: {', '.join(KNOWN_CORPORA)}"
                )
        elif dataset in KNOWN_CORPORA:
            return download_corpus(dataset)
        else:
            raise FileNotFoundError(
                f"dataset {dataset!r} is neither a folder nor a known corpus "
                f"({', '.join(KNOWN_CORPORA)}), and no data directory is set; a hub dataset is "
                f"hf:<id or folder>"
            )
    paths = {split: folder / f"{split}.tsv" for split in SPLITS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dataset {dataset!r}: missing {', '.join(missing)}")
    return paths


def corpus_cache() -> Path:
    """The folder downloaded corpora are kept in: $XDG_CACHE_HOME (or ~/.cache)/ner-peft."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache"
    return Path(base) / "ner-peft" / "corpora"


def download_corpus(dataset: str, timeout: float = 30.0) -> dict[str, Path]:
    """A known corpus's three splits, downloaded once from its public source into
    `corpus_cache()` (each file written whole, then renamed) and read from there after."""
    folder = corpus_cache() / dataset
    paths = {split: folder / f"{split}.tsv" for split in SPLITS}
    for split, path in paths.items():
        if path.is_file():
            continue
        url = SOURCE_URL.format(folder=KNOWN_CORPORA[dataset], split=split)
        offline = (f"provide a folder <dir>/{dataset}/ holding train.tsv, devel.tsv and test.tsv "
                   f"(two columns: token<TAB>tag) and set ${DATA_DIR_ENV}=<dir> or the config "
                   f"key 'data_dir'")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:  # the server answered: not the network
            raise FileNotFoundError(f"dataset {dataset!r}: {url} answered HTTP {error.code} "
                                    f"({error.reason}); or {offline}") from error
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise FileNotFoundError(f"dataset {dataset!r}: could not reach {url} ({reason}); "
                                    f"without network, {offline}") from error
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        partial.write_bytes(payload)
        os.replace(partial, path)
    return paths
