"""corpora/bigbio.py: BigBio `bigbio_kb` documents to BIO sentences, cut as predict.py cuts raw
text; discontinuous, overlapping and mid-token entities, and the counts said for each split."""

from __future__ import annotations

import json

import pytest
from conftest import write_parquet
from test_sweep import table, write_sweep

import compare
import data
from config import Config
from corpora import bigbio, text
from corpora.iob import Sentence

TITLE = "Aspirin-induced asthma."  # [0, 23)
ABSTRACT = "Cocaine and lithium salts caused fever. Nausea followed."  # [24, 80)
SECOND = "Acute renal and hepatic failure developed."  # [0, 42)


def passage(text_: str, start: int, kind: str = "abstract") -> dict:
    return {"id": kind, "type": kind, "text": [text_], "offsets": [[start, start + len(text_)]]}


def entity(kind: str, *offsets: tuple[int, int]) -> dict:
    return {"id": f"{kind}{offsets}", "type": kind, "text": [],
            "offsets": [list(o) for o in offsets],
            "normalized": []}


# Two documents: a title and an abstract, then one passage.
DOCUMENTS = [
    {"id": "1", "document_id": "1",
     "passages": [passage(TITLE, 0, "title"), passage(ABSTRACT, 24)],
     "entities": [entity("Chemical", (0, 7)),  # Aspirin
                  entity("Disease", (16, 22)),  # asthma
                  entity("Chemical", (36, 43)),  # lithium, inside the next: dropped
                  entity("Chemical", (36, 49)),  # lithium salts
                  entity("Chemical", (24, 30)),  # Cocain: a boundary inside the token Cocaine
                  entity("Disease", (57, 70)),  # fever. Nausea: across a sentence end
                  entity("Disease", (100, 105))]},  # in no passage: dropped
    {"id": "2", "document_id": "2",
     "passages": [passage(SECOND, 0)],
     "entities": [entity("Disease", (6, 11), (24, 31)),  # renal ... failure: discontinuous
                  entity("Disease", (16, 31)),  # hepatic failure, inside it: dropped
                  entity("Gene", (0, 5))]},  # Acute, a Gene for the type filter
]
EXPECTED = [
    Sentence(["Aspirin", "-", "induced", "asthma", "."],
             ["B-Chemical", "O", "O", "B-Disease", "O"]),
    Sentence(["Cocaine", "and", "lithium", "salts", "caused", "fever", ".", "Nausea", "followed",
              "."], ["B-Chemical", "O", "B-Chemical", "I-Chemical", "O", "B-Disease", "I-Disease",
                     "I-Disease", "O", "O"]),
    Sentence(["Acute", "renal", "and", "hepatic", "failure", "developed", "."],
             ["B-Gene", "B-Disease", "I-Disease", "I-Disease", "I-Disease", "O", "O"]),
]


def features():
    from datasets import Features, List, Value

    strings = List(Value("string"))
    offsets = List(List(Value("int32")))
    return Features({
        "id": Value("string"), "document_id": Value("string"),
        "passages": List({"id": Value("string"), "type": Value("string"), "text": strings,
                          "offsets": offsets}),
        "entities": List({"id": Value("string"), "type": Value("string"), "text": strings,
                          "offsets": offsets,
                          "normalized": List({"db_name": Value("string"),
                                              "db_id": Value("string")})})})


def columns(documents: list[dict]) -> dict:
    return {key: [d[key] for d in documents] for key in documents[0]}


def test_docstring_example():
    document = "Ca2+ and X-linked ALD."
    sentences, counts = bigbio.document_sentences(
        [passage(document, 0)],
        [entity("Chemical", (0, 2)), entity("Disease", (9, 21)), entity("Gene", (9, 17))])
    assert sentences == [Sentence(["Ca2", "+", "and", "X", "-", "linked", "ALD", "."],
                                  ["B-Chemical", "O", "O", "B-Disease", "I-Disease", "I-Disease",
                                   "I-Disease", "O"])]
    assert (counts.placed, counts.inside_token, counts.overlapping) == (2, 1, 1)


def test_two_documents_give_the_exact_bio_and_counts():
    from datasets import Dataset

    sentences, counts = bigbio.to_sentences(Dataset.from_dict(columns(DOCUMENTS), features()))
    assert sentences == EXPECTED
    assert counts == bigbio.Counts(documents=2, sentences=3, placed=7, overlapping=2, outside=1,
                                   discontinuous=1, inside_token=1, joined=1, other_types=0)


def test_entity_types_leave_the_others_out_before_overlaps():
    sentences, counts = bigbio.document_sentences(DOCUMENTS[1]["passages"],
                                                  DOCUMENTS[1]["entities"], ["Disease"])
    assert sentences == [Sentence(EXPECTED[2].tokens, ["O"] + EXPECTED[2].tags[1:])]
    assert (counts.placed, counts.other_types, counts.overlapping) == (1, 1, 1)


def test_the_tokens_are_predict_pys():
    """Each passage is cut as predict.py cuts a document of raw text (corpora/text.py)."""
    sentences, _ = bigbio.document_sentences([passage(TITLE, 0, "title"), passage(ABSTRACT, 24)],
                                             [])
    raw = text.sentences(TITLE) + text.sentences(ABSTRACT)
    assert [s.tokens for s in sentences] == [[t.text for t in tokens] for tokens in raw]


def test_a_list_of_structs_as_a_dict_of_lists_reads_alike():
    as_columns = {key: [p[key] for p in DOCUMENTS[1]["passages"]]
                  for key in DOCUMENTS[1]["passages"][0]}
    assert bigbio.records(as_columns) == DOCUMENTS[1]["passages"]


@pytest.fixture
def bigbio_folder(tmp_path, hf_cache):
    """A hub-layout folder in the bigbio_kb schema: both documents in every split."""
    folder = tmp_path / "bigbio"
    for split in ("train", "validation", "test"):
        write_parquet(folder / f"{split}.parquet", columns(DOCUMENTS), features())
    return folder


def test_a_bigbio_kb_dataset_loads_as_sentences_and_says_its_counts(bigbio_folder, capsys):
    corpus = data.load_corpus(Config(dataset=f"hf:{bigbio_folder}",
                                     entity_types=["Chemical", "Disease"]))
    gene_free = EXPECTED[:2] + [Sentence(EXPECTED[2].tokens, ["O"] + EXPECTED[2].tags[1:])]
    assert corpus.train == corpus.devel == corpus.test == gene_free
    assert corpus.labels == ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3  # one per split
    assert lines[0] == (f"dataset hf:{bigbio_folder} train: 2 documents, 3 sentences, 6 entities "
                        f"placed; dropped 2 overlapping one placed before, 1 on no token; 1 "
                        f"discontinuous made contiguous, 1 with a boundary inside a token, 1 "
                        f"sentence ends removed inside an entity; 1 of other types left out")


def test_compare_trains_and_reports_on_a_bigbio_kb_dataset(tmp_path, tiny_encoder,
                                                           bigbio_folder):
    path = write_sweep(tmp_path, tiny_encoder, f"'hf:{bigbio_folder}'", "  - {name: kb}\n")
    assert compare.main([str(path)]) == 0
    [row] = table(tmp_path)
    assert row["test_corpus"] == f"hf:{bigbio_folder}" and row["runs"] == "1"
    metrics = json.loads((tmp_path / "out" / "kb" / "seed3" / "metrics.json").read_text())
    assert metrics["test"]["per_type"].keys() <= {"Chemical", "Disease", "Gene"}
