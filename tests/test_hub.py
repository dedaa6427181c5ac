"""corpora/hub.py: hub-layout datasets read with 🤗 Datasets as the same sentences as TSV files;
columns, ClassLabel and string tags, untyped tags, split names; errors before anything trains;
a cached hub id read offline, and fingerprints by commit or by content.

Every dataset here is a tiny folder the test writes (no network): a hub id is a 🤗 Datasets cache
the test lays out as a download would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import hub_folder_of, tag_features, write_corpus, write_parquet
from test_sweep import planned, table, write_sweep

import compare
import data
from comparison import fingerprint, preflight
from config import Config
from corpora import hub
from corpora.iob import Sentence, read_iob
from corpora.sources import Origin


def sentences_of(folder: Path) -> dict[str, list[Sentence]]:
    return {split: read_iob(folder / f"{split}.tsv") for split in ("train", "devel", "test")}


# ------------------------------------------------------------------ the same corpus, two forms


@pytest.mark.parametrize("names, readme", [
    ({"train": "train", "devel": "devel", "test": "test"}, False),  # 🤗 Datasets alone: no devel
    ({"train": "train", "devel": "validation", "test": "test"}, False),
    ({"train": "train", "devel": "dev", "test": "test"}, True),  # a README configs: header
])
def test_a_parquet_folder_with_classlabel_tags_reads_as_its_tsv_corpus(tmp_path, hf_cache, names,
                                                                      readme):
    corpus = write_corpus(tmp_path / "tsv")
    folder = hub_folder_of(corpus, tmp_path / "hub", names, readme)
    from_tsv = data.load_corpus(Config(dataset=str(corpus)))
    from_hub = data.load_corpus(Config(dataset=f"hf:{folder}"))
    assert (from_hub.train, from_hub.devel, from_hub.test, from_hub.labels) == \
        (from_tsv.train, from_tsv.devel, from_tsv.test, from_tsv.labels)
    assert from_hub.origins["devel"].kind == "folder"
    assert from_hub.origins["devel"].split == ("validation" if readme else names["devel"])
    assert any(hf_cache.iterdir())  # prepared the way 🤗 Datasets caches


def test_a_run_on_each_form_gives_identical_metrics(tmp_path, tiny_encoder, hf_cache):
    corpus = write_corpus(tmp_path / "tsv")
    folder = hub_folder_of(corpus, tmp_path / "hub")
    path = write_sweep(tmp_path, tiny_encoder, corpus,
                       f"  - {{name: tsv}}\n  - {{name: hub, dataset: 'hf:{folder}'}}\n")
    assert compare.main([str(path)]) == 0
    metrics = {name: json.loads((tmp_path / "out" / name / "seed3" / "metrics.json").read_text())
               for name in ("tsv", "hub")}
    for key in ("test", "devel", "devel_f1_per_epoch", "mean_loss_per_epoch", "steps",
                "train_windows", "test_set"):
        if key in ("test", "devel"):
            for m in metrics.values():
                m[key].pop("seconds")
        assert metrics["tsv"][key] == metrics["hub"][key], key
    rows = {r["experiment"]: r for r in table(tmp_path)}
    assert rows["hub"]["test_corpus"] == f"hf:{folder}"
    assert float(rows["hub"]["delta_f1"]) == 0.0  # the same test sentences: paired


# ------------------------------------------------------------------ tags


def write_rows(folder: Path, rows: dict, features=None, splits=("train", "validation", "test")
               ) -> Path:
    for split in splits:
        write_parquet(folder / f"{split}.parquet", rows, features)
    return folder


def test_string_tags_are_taken_as_they_are_in_any_scheme(tmp_path, hf_cache, capsys):
    folder = write_rows(tmp_path / "hub", {
        "tokens": [["acute", "renal", "failure", "and", "fever"]],
        "ner_tags": [["B-Disease", "I-Disease", "E-Disease", "O", "S-Disease"]]})
    corpus = data.load_corpus(Config(dataset=f"hf:{folder}"))
    assert corpus.test == [Sentence(["acute", "renal", "failure", "and", "fever"],
                                    ["B-Disease", "I-Disease", "I-Disease", "O", "B-Disease"])]
    assert "tags read as IOBES, converted to BIO" in capsys.readouterr().err


def test_untyped_tags_take_entity_type_or_the_type_column(tmp_path, hf_cache):
    from datasets import ClassLabel

    rows = {"tokens": [["BRCA1", "mutations"], ["p53", "binds", "MDM2"]],
            "ner_tags": [[1, 0], [1, 0, 1]], "type": [1, 1]}
    features = tag_features(["O", "B", "I"], type=ClassLabel(names=["Chemical", "Gene"]))
    folder = write_rows(tmp_path / "typed", rows, features)  # bigbio/blurb's layout
    corpus = data.load_corpus(Config(dataset=f"hf:{folder}"))
    assert corpus.train[0] == Sentence(["BRCA1", "mutations"], ["B-Gene", "O"])
    assert corpus.labels == ["O", "B-Gene", "I-Gene"]
    corpus = data.load_corpus(Config(dataset=f"hf:{folder}", entity_type="Protein"))
    assert corpus.test[1].tags == ["B-Protein", "O", "B-Protein"]  # the key wins
    bare = {"tokens": rows["tokens"], "ner_tags": [["B", "O"], ["B", "I", "O"]],
            "type": ["Gene", "Gene"]}
    folder = write_rows(tmp_path / "strings", bare)  # strings: tags and types as they are
    assert data.load_corpus(Config(dataset=f"hf:{folder}")).devel[1].tags == \
        ["B-Gene", "I-Gene", "O"]
    untyped = write_rows(tmp_path / "untyped", {"tokens": rows["tokens"],
                                                "ner_tags": bare["ner_tags"]})
    with pytest.raises(ValueError, match=r"row 0: tags without a type \(B, O\): set "
                                         r"entity_type, or give a 'type' column"):
        data.load_corpus(Config(dataset=f"hf:{untyped}"))


def test_other_column_names_are_read_through_the_keys(tmp_path, hf_cache):
    folder = write_rows(tmp_path / "hub", {"words": [["aspirin", "helps"]],
                                           "labels": [["B-Chemical", "O"]]})
    corpus = data.load_corpus(Config(dataset=f"hf:{folder}", tokens_column="words",
                                     tags_column="labels"))
    assert corpus.train == [Sentence(["aspirin", "helps"], ["B-Chemical", "O"])]


def test_json_files_and_the_dev_name_read_alike(tmp_path, hf_cache):
    folder = tmp_path / "hub"
    (folder / "data").mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (folder / "data" / f"{split}.jsonl").write_text(json.dumps(
            {"tokens": ["lithium", "salts"], "ner_tags": ["B-Chemical", "I-Chemical"]}) + "\n")
    corpus = data.load_corpus(Config(dataset=f"hf:{folder}"))
    assert corpus.devel == [Sentence(["lithium", "salts"], ["B-Chemical", "I-Chemical"])]
    assert corpus.origins["devel"].split == "dev"


# ------------------------------------------------------------------ errors before anything trains


def configs_folder(folder: Path) -> Path:
    """Two configs, x (three splits) and y (no test split)."""
    rows = {"tokens": [["a", "b"]], "ner_tags": [["B-Gene", "O"]]}
    header = ["---", "configs:"]
    for config, splits in (("x", ("train", "validation", "test")), ("y", ("train", "validation"))):
        header += [f"- config_name: {config}", "  data_files:"]
        for split in splits:
            write_parquet(folder / config / f"{split}.parquet", rows)
            header += [f"  - split: {split}", f"    path: {config}/{split}.parquet"]
    (folder / "README.md").write_text("\n".join(header + ["---", ""]))
    return folder


BAD = {  # the keys of the experiment's block -> its one line, after "dataset hf:<folder>"
    "dataset_config: z": ": no config 'z' (dataset_config): its configs are x, y",
    "": ": a config is needed (dataset_config): its configs are x, y",
    "dataset_config: y": (" (config y): no test split (test); its splits are train, validation "
                          "(a test split from another corpus: test_dataset)"),
    "dataset_config: x\n    tokens_column: words": (
        " (config x) train: no column 'words' (columns: tokens, ner_tags); name it with "
        "tokens_column"),
    "dataset_config: x\n    tags_column: tokens": (
        " (config x) train row 0: tag 'a' is not O, B-<type> or I-<type> (BIO, IOB1), nor "
        "E-/S-/U-/L-<type> (IOBES, BILOU)"),
}


@pytest.mark.parametrize("keys", BAD)
def test_a_bad_hub_dataset_is_one_line_and_nothing_trains(tmp_path, tiny_encoder, hf_cache,
                                                          capsys, keys):
    folder = configs_folder(tmp_path / "hub")
    block = f"  - name: a\n    {keys}\n" if keys else "  - name: a\n"
    path = write_sweep(tmp_path, tiny_encoder, f"'hf:{folder}'", block)
    assert compare.main([str(path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"experiment 'a': dataset hf:{folder}{BAD[keys]}"
    assert not (tmp_path / "out").exists()


def test_an_empty_split_is_one_line(tmp_path, hf_cache):
    folder = write_rows(tmp_path / "hub", {"tokens": [["a"]], "ner_tags": [[0]]},
                        tag_features(["O"]), splits=("train", "validation"))
    write_parquet(folder / "test.parquet", {"tokens": [], "ner_tags": []}, tag_features(["O"]))
    with pytest.raises(ValueError, match=r"hf:.*hub test: no rows \(empty split\)$"):
        data.load_corpus(Config(dataset=f"hf:{folder}"))


def test_a_dataset_without_test_needs_test_dataset(tmp_path, hf_cache):
    """JNLPBA on the hub has no test split: an error unless test_dataset names one."""
    corpus = write_corpus(tmp_path / "tsv")
    folder = hub_folder_of(corpus, tmp_path / "hub", {"train": "train", "devel": "validation"})
    with pytest.raises(ValueError, match="no test split"):
        data.load_corpus(Config(dataset=f"hf:{folder}"))
    loaded = data.load_corpus(Config(dataset=f"hf:{folder}", test_dataset=str(corpus)))
    assert loaded.test == read_iob(corpus / "test.tsv")


@pytest.mark.parametrize("offline", [True, False])
def test_an_uncached_hub_id_without_network_is_one_line_within_30s(tmp_path, tiny_encoder,
                                                                   tiny_corpus, hf_cache, capsys,
                                                                   monkeypatch, offline):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    path = write_sweep(tmp_path, tiny_encoder, "hf:bigbio/blurb",
                       "  - {name: a, dataset_config: bc2gm}\n"
                       "  - {name: b, dataset: bc5cdr, test_dataset: 'hf:bigbio/blurb'}\n")
    started = time.perf_counter()
    assert compare.main([str(path)]) == 2
    assert time.perf_counter() - started < 30
    [line] = capsys.readouterr().err.strip().splitlines()  # once, though two experiments use it
    assert line.startswith("dataset 'hf:bigbio/blurb' is not in the 🤗 Datasets cache "
                           f"({hf_cache})")
    assert line.endswith("(used by 2 experiments: 'a', 'b')")
    assert "dataset: hf:/path/to/folder" in line
    assert ("offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)" in line) == offline
    assert ("(http://127.0.0.1:9) cannot be reached" in line) != offline
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ a hub id, cached


def cache_as_download(folder: Path, cache: Path, repo: str, commit: str) -> None:
    """Lay out in `cache` what downloading hub dataset `repo` at `commit` leaves: the local
    `folder` prepared, under the repository's name and commit."""
    rows, _ = hub.load(str(folder))
    [prepared] = {Path(f["filename"]).parent for split in rows.values() for f in split.cache_files}
    owner, name = repo.split("/")
    target = cache / f"{owner}___{name}" / "default" / "0.0.0" / commit
    target.mkdir(parents=True)
    for file in prepared.iterdir():  # arrow files are named <dataset>-<split>.arrow
        renamed = f"{name}-{file.name.split('-', 1)[1]}" if file.suffix == ".arrow" else file.name
        shutil.copy(file, target / renamed)


def test_a_cached_hub_id_reads_offline_and_its_commit_enters_the_fingerprint(
        tmp_path, tiny_encoder, hf_cache, monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    corpus = write_corpus(tmp_path / "tsv")
    commits = ["1" * 40, "2" * 40]
    cache_as_download(hub_folder_of(corpus, tmp_path / "hub"), hf_cache, "someone/tiny_ner",
                      commits[0])
    loaded = data.load_corpus(Config(dataset="hf:someone/tiny_ner"))
    assert loaded.train == read_iob(corpus / "train.tsv")
    assert loaded.origins["test"] == Origin("hub", "someone/tiny_ner", "", "test", commits[0])
    assert preflight.dataset_problem("someone/tiny_ner") is None
    path = write_sweep(tmp_path, tiny_encoder, "hf:someone/tiny_ner", "  - {name: a}\n")
    [before] = planned(path)
    with pytest.raises(ValueError, match=f"dataset_revision {commits[1]} is pinned, but the "
                                         f"cache holds commit {commits[0]}"):
        data.load_corpus(Config(dataset="hf:someone/tiny_ner", dataset_revision=commits[1]))
    shutil.rmtree(hf_cache / "someone___tiny_ner")
    cache_as_download(tmp_path / "hub", hf_cache, "someone/tiny_ner", commits[1])  # an update
    [after] = planned(path)
    assert before.inputs["config"] == after.inputs["config"]
    assert fingerprint.stale_reasons(before.inputs, after.inputs) == [
        "corpus devel", "corpus test", "corpus train"]


def test_a_local_folder_enters_the_fingerprint_by_content(tmp_path, tiny_encoder, hf_cache):
    corpus = write_corpus(tmp_path / "tsv")
    folder = hub_folder_of(corpus, tmp_path / "hub")
    path = write_sweep(tmp_path, tiny_encoder, f"'hf:{folder}'", "  - {name: a}\n")
    [before] = planned(path)
    shutil.copytree(folder, tmp_path / "copy")  # the same content elsewhere: the same corpus
    path.write_text(path.read_text().replace(str(folder), str(tmp_path / "copy")))
    [moved] = planned(path)
    assert moved.inputs["corpus"] == before.inputs["corpus"]
    write_corpus(corpus, seed=1)
    hub_folder_of(corpus, tmp_path / "copy")
    [changed] = planned(path)
    assert fingerprint.stale_reasons(moved.inputs, changed.inputs) == [
        "corpus devel", "corpus test", "corpus train"]


def test_a_repository_with_a_loading_script_says_what_to_do(tmp_path, hf_cache):
    """🤗 Datasets 4 and later run no loading script, as many BigBio repositories still hold."""
    folder = tmp_path / "ncbi_disease"
    folder.mkdir()
    (folder / "ncbi_disease.py").write_text("import datasets\n")
    with pytest.raises(ValueError, match=r"holds a loading script \(ncbi_disease.py\), which 🤗 "
                                         r"Datasets no longer runs: pin a revision .*refs/convert/"
                                         r"parquet.*or convert it once into a local folder"):
        data.load_corpus(Config(dataset=f"hf:{folder}"))


def test_a_run_on_tsv_files_never_imports_datasets(tmp_path):
    corpus = write_corpus(tmp_path / "tsv")
    code = ("import sys, data, train; from config import Config; "
            f"data.load_corpus(Config(dataset={str(corpus)!r})); "
            "print('datasets' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(data.__file__).parent, check=True)
    assert done.stdout.strip() == "False"
