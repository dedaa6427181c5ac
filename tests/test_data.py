"""data.py: the IOB reader's errors, corpus lookup, labels, windows and batches."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import assert_error_names_line, make_sentences, write_corpus, write_iob
from transformers import AutoTokenizer

import data
from config import Config
from corpora import iob, schemes, sources

# ------------------------------------------------------------------ reading


def test_reader_accepts_tabs_spaces_and_middle_columns(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("Aspirin\tB-Chemical\ncauses NN O\n\n\nfever x y B-Disease\n")
    sentences = iob.read_iob(path)
    assert [s.tokens for s in sentences] == [["Aspirin", "causes"], ["fever"]]
    assert [s.tags for s in sentences] == [["B-Chemical", "O"], ["B-Disease"]]


@pytest.mark.parametrize("text, line, words", [
    ("a\tO\nb\n", 2, "found 1 column"),
    ("a\tO\n\tO\n", 2, "empty token"),
    ("a\tO\nb\tX-Chem\n", 2, "is not O, B-<type> or I-<type> (BIO, IOB1), nor E-/S-"),
    ("a\tO\n\nb\tB-\n", 3, "is not O, B-<type> or I-<type>"),
])
def test_reader_errors_name_file_and_line(tmp_path, text, line, words):
    assert_error_names_line(iob.read_iob, tmp_path / "bad.tsv", text, line, words)


def test_reader_rejects_empty_token_and_empty_split(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("a\tO\n \tO\n")  # a blank token before the tab
    with pytest.raises(ValueError, match=rf"{path}:2: empty token"):
        iob.read_iob(path)
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="no sentences"):
        iob.read_iob(path)


def test_labels_are_o_first_then_sorted_types():
    train = [iob.Sentence(["a", "b"], ["B-Zeta", "O"]), iob.Sentence(["c"], ["I-Alpha"])]
    assert data.build_labels(train) == ["O", "B-Alpha", "I-Alpha", "B-Zeta", "I-Zeta"]


def test_unseen_tag_in_test_is_an_error_unless_allowed(tmp_path):
    folder = write_corpus(tmp_path / "c", sizes=(10, 4, 4))
    write_iob(folder / "test.tsv", [(["x", "y"], ["B-Gene", "O"])])
    with pytest.raises(ValueError, match="test.tsv.*B-Gene.*allow_unseen_tags"):
        data.load_corpus(Config(dataset=str(folder)))
    corpus = data.load_corpus(Config(dataset=str(folder), allow_unseen_tags=True))
    assert corpus.test[0].tags == ["B-Gene", "O"]


def test_limits_keep_first_sentences(tmp_path):
    folder = write_corpus(tmp_path / "c", sizes=(30, 10, 10))
    corpus = data.load_corpus(Config(dataset=str(folder), train_limit=7, eval_limit=3))
    assert (len(corpus.train), len(corpus.devel), len(corpus.test)) == (7, 3, 3)
    assert corpus.train == iob.read_iob(folder / "train.tsv")[:7]


def test_labels_come_from_the_whole_training_file(tmp_path):
    """A type that only appears after the first N training sentences still gets its tags, so a
    train_limit that misses it neither stops the run nor changes the label set."""
    chemical = (["aspirin", "helps"], ["B-Chemical", "O"])
    disease = (["severe", "fever"], ["B-Disease", "I-Disease"])
    folder = tmp_path / "c"
    write_iob(folder / "train.tsv", [chemical] * 5 + [disease])
    write_iob(folder / "devel.tsv", [chemical, disease])
    write_iob(folder / "test.tsv", [disease])
    whole = data.load_corpus(Config(dataset=str(folder)))
    limited = data.load_corpus(Config(dataset=str(folder), train_limit=5))
    assert limited.labels == whole.labels == ["O", "B-Chemical", "I-Chemical", "B-Disease",
                                              "I-Disease"]
    assert limited.train == [iob.Sentence(*chemical)] * 5  # the limit slices sentences only
    assert data.build_labels(limited.train) != limited.labels  # what the old rule would give


# ------------------------------------------------------------------ finding corpora


def test_corpus_found_by_name_in_config_dir_or_env(tmp_path, monkeypatch):
    write_corpus(tmp_path / "mine")
    assert sources.find_corpus("mine", str(tmp_path))["train"] == tmp_path / "mine" / "train.tsv"
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path))
    assert sources.find_corpus("mine", None)["devel"] == tmp_path / "mine" / "devel.tsv"
    assert sources.find_corpus(str(tmp_path / "mine"), None)["test"].name == "test.tsv"


def test_missing_split_and_missing_folder_are_named(tmp_path):
    folder = write_corpus(tmp_path / "c")
    (folder / "devel.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="devel.tsv"):
        sources.find_corpus(str(folder), None)
    with pytest.raises(FileNotFoundError, match="no folder .*nope"):
        sources.find_corpus("nope", str(tmp_path))


@pytest.fixture
def corpus_server(tmp_path, monkeypatch):
    """A local HTTP server on 127.0.0.1 serving <root>/<folder>/<split>.tsv, the known corpora's
    URLs pointed at it, and an empty download cache."""
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(sources, "SOURCE_URL",
                        f"http://127.0.0.1:{server.server_port}/{{folder}}/{{split}}.tsv")
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    yield root
    server.shutdown()


def test_a_known_corpus_downloads_once_into_the_cache(corpus_server, tmp_path):
    write_corpus(corpus_server / sources.KNOWN_CORPORA["ncbi_disease"])
    paths = sources.find_corpus("ncbi_disease", None)
    assert paths["devel"] == tmp_path / "cache/ner-peft/corpora/ncbi_disease/devel.tsv"
    assert paths["test"].read_text() == (corpus_server / "NCBI-disease-IOB/test.tsv").read_text()
    (corpus_server / "NCBI-disease-IOB" / "train.tsv").unlink()
    assert sources.find_corpus("ncbi_disease", None) == paths  # from the cache: no request
    assert not list(paths["train"].parent.glob(".*"))  # no partial file left


def test_a_failed_download_names_the_url_and_the_reason(corpus_server):
    with pytest.raises(FileNotFoundError) as error:  # the server has no such file: HTTP 404
        sources.find_corpus("bc5cdr", None)
    message = str(error.value)
    assert "BC5CDR-IOB/train.tsv answered HTTP 404" in message and "NER_DATA_DIR" in message
    assert "network" not in message  # the server answered: the network is not to blame
    with pytest.raises(FileNotFoundError, match="neither a folder nor a known corpus"):
        sources.find_corpus("my_corpus", None)


def test_an_unreachable_host_is_blamed_on_the_network(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "SOURCE_URL", "http://127.0.0.1:9/{folder}/{split}.tsv")
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="could not reach .*Connection refused.*without "
                                                "network, provide a folder"):
        sources.find_corpus("bc5cdr", None)


def test_a_missing_corpus_lists_the_corpora_of_the_data_directory(tmp_path):
    write_corpus(tmp_path / "bc5cdr")
    write_corpus(tmp_path / "ncbi_disease")
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileNotFoundError, match="the corpora there: bc5cdr, ncbi_disease\\)"):
        sources.find_corpus("bc5dcr", str(tmp_path))


# Every -IOB folder of the MTL-Bioinformatics-2016 repository's data/ (BC4CHEMD's is not one).
MTL_FOLDERS = [
    "AnatEM", "BC2GM", "BC5CDR", "BC5CDR-chem", "BC5CDR-disease", "BioNLP09", "BioNLP11EPI",
    "BioNLP11ID", "BioNLP11ID-chem", "BioNLP11ID-ggp", "BioNLP11ID-species", "BioNLP13CG",
    "BioNLP13CG-cc", "BioNLP13CG-cell", "BioNLP13CG-chem", "BioNLP13CG-ggp", "BioNLP13CG-species",
    "BioNLP13GE", "BioNLP13PC", "BioNLP13PC-cc", "BioNLP13PC-chem", "BioNLP13PC-ggp", "CRAFT",
    "CRAFT-cc", "CRAFT-cell", "CRAFT-chem", "CRAFT-ggp", "CRAFT-species", "Ex-PTM", "linnaeus",
    "NCBI-disease"]


def test_every_mtl_corpus_is_known_by_its_folder_name_in_lower_case():
    assert sources.KNOWN_CORPORA == {folder.lower().replace("-", "_"): f"{folder}-IOB"
                                     for folder in sorted(MTL_FOLDERS, key=str.lower)}
    from runs import config_files

    help_text = " ".join(config_files.config_help().split())
    assert ", ".join(sources.KNOWN_CORPORA) in help_text  # compare.py --help lists them


def test_an_unknown_name_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="neither a folder nor a known corpus .*bc2gm, "
                                                "bc5cdr, .*, linnaeus, ncbi_disease"):
        sources.find_corpus("bc2gn", None)
    with pytest.raises(FileNotFoundError, match="without a data directory these names are "
                                                "downloaded: anatem, bc2gm, "):
        sources.find_corpus("bc2gn", str(tmp_path))


# ------------------------------------------------------------------ tagging schemes


BIO = [(["Aspirin", "and", "lithium", "salts", "cause", "acute", "renal", "failure", "."],
        ["B-Chemical", "O", "B-Chemical", "I-Chemical", "O", "B-Disease", "I-Disease",
         "I-Disease", "O"]),
       (["heparin", "heparin", "fever"], ["B-Chemical", "B-Chemical", "B-Disease"])]
IOBES = [["S-Chemical", "O", "B-Chemical", "E-Chemical", "O", "B-Disease", "I-Disease",
          "E-Disease", "O"], ["S-Chemical", "S-Chemical", "S-Disease"]]
BILOU = [[t.replace("S-", "U-").replace("E-", "L-") for t in tags] for tags in IOBES]
IOB1 = [["I-Chemical", "O", "I-Chemical", "I-Chemical", "O", "I-Disease", "I-Disease",
         "I-Disease", "O"], ["I-Chemical", "B-Chemical", "I-Disease"]]


@pytest.mark.parametrize("scheme, tags", [("iobes", IOBES), ("iobes", BILOU), ("iob1", IOB1),
                                          ("bio", [t for _, t in BIO])])
def test_every_scheme_reads_as_the_same_bio_entities(tmp_path, capsys, scheme, tags):
    path = write_iob(tmp_path / "x.tsv", [(tokens, t) for (tokens, _), t in zip(BIO, tags)])
    assert schemes.detect(tags) == scheme
    for given in ("auto", scheme):
        sentences = iob.read_iob(path, given)
        assert [s.tags for s in sentences] == [t for _, t in BIO]
    said = capsys.readouterr().err
    assert (f"tags read as {scheme.upper()}, converted to BIO" in said) == (scheme != "bio")


def test_a_tag_outside_the_named_scheme_names_its_line(tmp_path):
    assert_error_names_line(lambda p: iob.read_iob(p, "bio"), tmp_path / "x.tsv",
                            "a\tB-X\nb\tE-X\n", 2, "is not O or B/I-<type> (bio)")


def test_a_rare_type_beside_a_similar_frequent_one_is_named_as_a_likely_typo(tmp_path, capsys):
    sentences = make_sentences(40, seed=1)
    sentences[3] = (["aspirin"], ["B-Chemcial"])
    folder = write_corpus(tmp_path / "c")
    write_iob(folder / "train.tsv", sentences)
    corpus = data.load_corpus(Config(dataset=str(folder), allow_unseen_tags=True))
    assert "B-Chemcial" in corpus.labels  # still a label of its own: a warning, not an error
    warning = capsys.readouterr().err
    assert "entity type 'Chemcial' has 1 mention(s) beside 'Chemical'" in warning
    assert data.likely_typos([iob.Sentence(t, g) for t, g in make_sentences(40, seed=1)]) == []


# ------------------------------------------------------------------ tokenising and windows


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder):
    return AutoTokenizer.from_pretrained(tiny_encoder)


LABELS = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]


def test_pieces_equal_tokenising_each_sentence_whole(tokenizer):
    sentences = [iob.Sentence(t, g) for t, g in make_sentences(20, seed=3)]
    tokenized = data.tokenize_sentences(sentences, tokenizer, LABELS)
    for sentence, result in zip(sentences, tokenized):
        whole = tokenizer(sentence.tokens, is_split_into_words=True, add_special_tokens=False)
        assert [p for word in result.pieces for p in word] == whole["input_ids"]
        assert result.tag_ids == [LABELS.index(t) for t in sentence.tags]


def test_word_without_pieces_becomes_unk(tokenizer):
    [result] = data.tokenize_sentences([iob.Sentence(["the", "\u200b", "."], ["O"] * 3)],
                                       tokenizer, LABELS)
    assert result.pieces[1] == [tokenizer.unk_token_id]


@pytest.mark.parametrize("max_length", [8, 12, 20, 64])
def test_windows_cover_every_word_once_in_order(tokenizer, max_length):
    sentences = [iob.Sentence(t, g) for t, g in make_sentences(30, seed=1, max_words=30)]
    tokenized = data.tokenize_sentences(sentences, tokenizer, LABELS)
    windows = data.make_windows(tokenized, max_length, tokenizer.cls_token_id,
                                tokenizer.sep_token_id)
    covered = {i: [] for i in range(len(sentences))}
    for w in windows:
        assert len(w.input_ids) <= max_length
        assert w.input_ids[0] == tokenizer.cls_token_id
        assert w.input_ids[-1] == tokenizer.sep_token_id
        for k, start in enumerate(w.word_starts):
            word = w.first_word + k
            covered[w.sentence].append(word)
            assert w.input_ids[start] == tokenized[w.sentence].pieces[word][0]
            assert w.tag_ids[k] == tokenized[w.sentence].tag_ids[word]
    for i, sentence in enumerate(sentences):
        assert covered[i] == list(range(len(sentence.tokens)))  # no gold word dropped
    if max_length < 20:
        assert len(windows) > len(sentences)  # long sentences really were split


def test_make_windows_docstring_example():
    sentence = data.TokenizedSentence(pieces=[[7], [8, 9], [10], [11, 12, 13], [14]],
                                      tag_ids=[1, 2, 0, 3, 0])
    assert data.make_windows([sentence], max_length=8, cls_id=101, sep_id=102) == [
        data.Window(input_ids=[101, 7, 8, 9, 10, 102], word_starts=[1, 2, 4], tag_ids=[1, 2, 0],
                    sentence=0, first_word=0, continues=False),
        data.Window(input_ids=[101, 11, 12, 13, 14, 102], word_starts=[1, 4], tag_ids=[3, 0],
                    sentence=0, first_word=3, continues=True),
    ]


def test_windows_after_the_first_are_flagged_as_continuing(tokenizer):
    sentences = [iob.Sentence(t, g) for t, g in make_sentences(30, seed=5, max_words=30)]
    # 'the' is one piece and 'aspirin' seven: at max_length 10 the cut falls inside the mention
    sentences.append(iob.Sentence(["the", "aspirin", "aspirin", "aspirin"],
                                   ["O", "B-Chemical", "I-Chemical", "I-Chemical"]))
    tokenized = data.tokenize_sentences(sentences, tokenizer, LABELS)
    windows = data.make_windows(tokenized, 10, tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert all(w.continues == (w.first_word > 0) for w in windows)
    assert sum(w.continues for w in windows) > 10 and sum(not w.continues for w in windows) == 31
    last = [w for w in windows if w.sentence == len(sentences) - 1]
    assert [(w.first_word, w.continues) for w in last] == [(0, False), (2, True), (3, True)]
    assert LABELS[last[1].tag_ids[0]] == "I-Chemical"  # what the CRF must accept as a start
    batch = data.collate(windows, tokenizer.pad_token_id, max_length=10)
    assert batch["continues"].dtype == torch.bool
    assert batch["continues"].tolist() == [w.continues for w in windows]


def test_window_predictions_merge_back_to_sentences(tokenizer):
    sentences = [iob.Sentence(t, g) for t, g in make_sentences(10, seed=2, max_words=25)]
    windows = data.make_windows(data.tokenize_sentences(sentences, tokenizer, LABELS), 10,
                                tokenizer.cls_token_id, tokenizer.sep_token_id)
    merged = data.merge_window_predictions(windows, [w.tag_ids for w in windows],
                                           [len(s.tokens) for s in sentences])
    assert merged == [[LABELS.index(t) for t in s.tags] for s in sentences]


# ------------------------------------------------------------------ batches


@pytest.mark.parametrize("n, batch_size", [(1, 4), (37, 4), (500, 32), (64, 64)])
def test_length_grouped_batches_hold_every_index_once(n, batch_size):
    lengths = [random.Random(i).randint(3, 120) for i in range(n)]
    batches = data.length_grouped_batches(lengths, batch_size, seed=0, chunk_batches=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert batches == data.length_grouped_batches(lengths, batch_size, seed=0, chunk_batches=3)


def test_length_grouping_reduces_padding_and_seed_changes_order():
    lengths = [random.Random(i).randint(3, 120) for i in range(2000)]
    grouped = data.length_grouped_batches(lengths, 32, seed=0)
    shuffled = list(range(2000))
    random.Random(0).shuffle(shuffled)
    plain = [shuffled[i:i + 32] for i in range(0, 2000, 32)]

    def waste(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b)
                   for b in batches)

    assert waste(grouped) < 0.3 * waste(plain)
    assert grouped != data.length_grouped_batches(lengths, 32, seed=1)


def test_collate_pads_to_multiples_of_16_with_masks(tokenizer):
    sentences = [iob.Sentence(t, g) for t, g in make_sentences(5, seed=4)]
    windows = data.make_windows(data.tokenize_sentences(sentences, tokenizer, LABELS), 64,
                                tokenizer.cls_token_id, tokenizer.sep_token_id)
    batch = data.collate(windows, tokenizer.pad_token_id, max_length=64)
    B, T = batch["input_ids"].shape
    W = batch["word_index"].shape[1]
    assert B == len(windows) and T % 16 == 0 and W % 16 == 0 and T <= 64
    assert batch["attention_mask"].sum().item() == sum(len(w.input_ids) for w in windows)
    assert batch["word_mask"].sum().item() == sum(len(w.word_starts) for w in windows)
    assert (batch["tags"][~batch["word_mask"]] == data.PAD_TAG).all()
    assert batch["continues"].shape == (B,) and batch["continues"].dtype == torch.bool
    for b, w in enumerate(windows):  # each word mask row is contiguous from the left
        row = batch["word_mask"][b]
        assert row[:len(w.word_starts)].all() and not row[len(w.word_starts):].any()
        assert torch.equal(batch["input_ids"][b, batch["word_index"][b, :len(w.word_starts)]],
                           torch.tensor([w.input_ids[s] for s in w.word_starts]))


# ------------------------------------------------------------------ test on another corpus


def gene_corpus(folder):
    """A corpus of Disease and Gene mentions (Chemical renamed Gene): what a Chemical and
    Disease model has never seen half of."""
    for offset, (split, n) in enumerate(zip(("train", "devel", "test"), (20, 8, 8))):
        write_iob(folder / f"{split}.tsv", [
            (tokens, [tag.replace("Chemical", "Gene") for tag in tags])
            for tokens, tags in make_sentences(n, seed=50 + offset)])
    return folder


def test_test_dataset_replaces_test_and_keeps_types_the_model_lacks(tmp_path):
    own = write_corpus(tmp_path / "own")
    other = gene_corpus(tmp_path / "other")
    corpus = data.load_corpus(Config(dataset=str(own), test_dataset=str(other), eval_limit=5))
    assert corpus.train == iob.read_iob(own / "train.tsv")
    assert corpus.devel == iob.read_iob(own / "devel.tsv")[:5]
    assert corpus.test == iob.read_iob(other / "test.tsv")[:5]  # Gene: no error, counted missed
    assert corpus.labels == ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
    assert corpus.test_types == ["Disease", "Gene"] and corpus.cross_corpus
    assert corpus.test_corpus == str(other)
    assert str(corpus.origins["test"]) == str(other / "test.tsv")
    assert not data.load_corpus(Config(dataset=str(own))).cross_corpus


def test_type_map_renames_the_test_corpus_types(tmp_path):
    own = write_corpus(tmp_path / "own")
    other = gene_corpus(tmp_path / "other")
    corpus = data.load_corpus(Config(dataset=str(own), test_dataset=str(other),
                                     type_map={"Gene": "Chemical"}))
    assert corpus.test == data.rename_types(iob.read_iob(other / "test.tsv"), {"Gene": "Chemical"})
    assert corpus.test_types == ["Chemical", "Disease"]
    with pytest.raises(ValueError, match=r"type_map renames \['Protein'\], which the test corpus "
                                         r"lacks \(its types: Disease, Gene\)"):
        data.load_corpus(Config(dataset=str(own), test_dataset=str(other),
                                type_map={"Protein": "Chemical"}))


def test_entity_types_keep_those_types_in_every_split(tmp_path):
    own = write_corpus(tmp_path / "own")
    corpus = data.load_corpus(Config(dataset=str(own), entity_types=["Disease"]))
    assert corpus.labels == ["O", "B-Disease", "I-Disease"]
    assert data.entity_types_of(data.tags_of(corpus.train + corpus.devel + corpus.test)) == \
        ["Disease"]
    assert [s.tokens for s in corpus.test] == [s.tokens for s in iob.read_iob(own / "test.tsv")]
    with pytest.raises(ValueError, match=r"entity_types names \['Gen'\], which the training "
                                         r"split lacks \(its types: Chemical, Disease\)"):
        data.load_corpus(Config(dataset=str(own), entity_types=["Gen"]))


def test_keep_and_rename_types_docstring_examples():
    assert data.keep_types(["B-A", "I-A", "B-B"], {"B"}) == ["O", "O", "B-B"]
    assert data.entity_types_of(["O", "B-Disease", "I-Disease", "B-Chemical"]) == \
        ["Chemical", "Disease"]
    assert data.rename_types([iob.Sentence(["a", "b"], ["B-X", "I-X"])], {"X": "Y"}) == \
        [iob.Sentence(["a", "b"], ["B-Y", "I-Y"])]


@pytest.mark.parametrize("from_env", [True, False])
def test_a_data_directory_that_does_not_exist_says_so_and_how_to_do_without(
        tmp_path, monkeypatch, from_env):
    missing = str(tmp_path / "no-such-dir")
    monkeypatch.setenv(sources.DATA_DIR_ENV, missing)
    with pytest.raises(FileNotFoundError) as error:
        sources.find_corpus("bc5cdr", None if from_env else missing)
    named = "$NER_DATA_DIR" if from_env else "the config key 'data_dir'"
    assert str(error.value) == (f"data directory {missing!r} (from {named}) does not exist: "
                                f"point it at a folder of corpora, or unset it to download the "
                                f"known corpora")
