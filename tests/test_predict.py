"""predict.py: a finished run of every method reproduces its own test predictions, from the
Python API and the command line, windows long sentences, and names the file of every error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CHEMICALS, make_sentences, write_corpus, write_iob

import data
import predict
import train
from corpora import iob, schemes, text
from runs import config_files

# experiment name → what differs from the shared tiny config. The fusions fuse the two LoRA
# runs above them (same sweep, same seed), found by name as compare.py would.
METHODS = {
    "full": {"method": "full"},
    "lora": {"method": "lora", "rank": 4},
    "lora-crf": {"method": "lora", "rank": 4, "crf": True},
    "fusion-merge": {"method": "fusion", "adapters": ["lora", "lora-crf"]},
    "fusion-fixed": {"method": "fusion", "adapters": ["lora", "lora-crf"],
                     "fusion_weights": [0.5, 0.5]},
    "fusion-attention": {"method": "fusion", "fusion_mode": "attention",
                         "adapters": ["lora", "lora-crf"]},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_encoder) -> dict[str, Path]:
    """One finished run per method, on a corpus whose test split holds sentences longer than a
    window (max_length 32), and small evaluation batches, so that both are reproduced."""
    root = tmp_path_factory.mktemp("predict")
    corpus = write_corpus(root / "corpus", sizes=(32, 8, 8))
    long = make_sentences(2, seed=3, min_words=30, max_words=40)
    short = [(s.tokens, s.tags) for s in iob.read_iob(corpus / "test.tsv")]
    write_iob(corpus / "test.tsv", short[:4] + long[:1] + short[4:] + long[1:])
    shared = {"model": str(tiny_encoder), "dataset": str(corpus), "gpu": -1, "epochs": 1,
              "lr": 3e-3, "batch_size": 8, "eval_batch_size": 3, "max_length": 32,
              "output_dir": str(root / "out"), "log_every": 100}
    folders = {}
    for name, overrides in METHODS.items():
        cfg = config_files.make_config({**shared, "name": name, **overrides}, "test")
        train.train(cfg)
        folders[name] = root / "out" / name / "seed42"
    return folders


def saved_predictions(run: Path) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """Tokens, gold and predicted tags of the run's own predictions.txt."""
    blocks = [[line.split() for line in block.splitlines()]
              for block in (run / "predictions.txt").read_text().strip().split("\n\n")]
    return ([[f[0] for f in b] for b in blocks], [[f[1] for f in b] for b in blocks],
            [[f[2] for f in b] for b in blocks])


def read_blocks(text: str) -> list[list[list[str]]]:
    assert text.endswith("\n") and "\n\n\n" not in text
    return [[line.split("\t") for line in block.splitlines()]
            for block in text.strip("\n").split("\n\n")]


# ------------------------------------------------------------------ reproducing the run


@pytest.mark.parametrize("name", list(METHODS))
def test_load_run_reproduces_the_runs_test_predictions(runs, name):
    tokens, _, predicted = saved_predictions(runs[name])
    tagger = predict.load_run(runs[name])
    assert tagger.labels == json.loads((runs[name] / "labels.json").read_text())
    assert tagger.config.name == name and not tagger.model.training
    assert max(len(t) for t in tokens) > tagger.max_length  # some sentences need 2+ windows
    assert tagger.tag(tokens) == predicted


@pytest.mark.parametrize("name", ["lora-crf", "fusion-attention"])
def test_iob_input_keeps_gold_and_scores_like_the_run(runs, name, tmp_path, capsys):
    test_file = Path(json.loads((runs[name] / "config.json").read_text())["dataset"]) / "test.tsv"
    output = tmp_path / "sub" / "tagged.tsv"
    assert predict.main([str(runs[name]), str(test_file), "--output", str(output)]) == 0
    tokens, gold, predicted = saved_predictions(runs[name])
    assert read_blocks(output.read_text()) == [
        [list(fields) for fields in zip(*columns)] for columns in zip(tokens, gold, predicted)]
    assert not list(output.parent.glob("*.tmp"))
    captured = capsys.readouterr()
    assert captured.out == ""
    f1 = json.loads((runs[name] / "metrics.json").read_text())["test"]["f1"]
    assert captured.err.strip().endswith(f"F1 {f1:.4f}") and str(test_file) in captured.err


def test_plain_text_to_stdout(runs, tmp_path, capsys):
    tokens, _, predicted = saved_predictions(runs["lora"])
    text = tmp_path / "plain.txt"
    # blank lines are skipped, any run of whitespace separates tokens
    text.write_text("\n\n".join("  ".join(t) for t in tokens[:5]) + "\n\n\n" +
                    "\n".join("\t".join(t) for t in tokens[5:]) + "\n")
    # the corpus's own tokens, which text.py's tokenizer would cut further: named, not detected
    assert predict.main([str(runs["lora"]), str(text), "--format", "tokens"]) == 0
    captured = capsys.readouterr()
    assert read_blocks(captured.out) == [[[w, t] for w, t in zip(words, tags)]
                                         for words, tags in zip(tokens, predicted)]
    assert captured.err == ""  # no gold, no score


def test_a_sentence_longer_than_the_encoder_is_windowed(runs):
    tagger = predict.load_run(runs["lora"])
    words = (CHEMICALS * 20)[:90]  # several pieces each: far beyond 64 positions
    pieces = data.tokenize_sentences([iob.Sentence(words, ["O"] * 90)], tagger.tokenizer,
                                     tagger.labels)
    windows = data.make_windows(pieces, tagger.max_length, 0, 0)
    assert sum(len(p) for p in pieces[0].pieces) > 64 and len(windows) > 2
    tags = tagger.tag([["the", "patient"], words, []])
    assert [len(t) for t in tags] == [2, 90, 0]
    # Without a CRF each window is tagged on its own (a CRF knows which windows continue a
    # sentence; predictions.txt checks that): as its words alone would be.
    for i, window in enumerate(windows):
        alone = words[window.first_word:window.first_word + len(window.word_starts)]
        assert tagger.tag([alone])[0] == tags[1][window.first_word:][:len(alone)], i


def test_input_detection():
    assert predict.is_iob(["aspirin\tB-Chemical", "", "fever\tx\tI-Disease"])
    assert not predict.is_iob(["aspirin\tB-Chemical", "the patient was given aspirin"])
    assert not predict.is_iob(["aspirin B-Chemical"])  # plain text with a tag-like word
    assert not predict.is_iob(["aspirin\tB-"])
    assert not predict.is_iob(["", "  "])


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        predict.main(["--help"])
    assert exit_.value.code == 0 and "RUN_DIR" in capsys.readouterr().out


# ------------------------------------------------------------------ errors


def broken_copy(run: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "copy" / run.parent.name / run.name
    shutil.copytree(run, copy)
    change(copy)
    return copy


ERRORS = {
    "missing folder": (lambda run, tmp: tmp / "nowhere", "no such run folder"),
    "unfinished": (lambda run, tmp: broken_copy(
        run, tmp, lambda c: (c / "metrics.json").unlink()), "unfinished run (no metrics.json)"),
    "an experiment's folder": (lambda run, tmp: run.parent,
                               ("an experiment's folder, which holds its runs, one per seed "
                               "(seed42/): give one, e.g. ")),
    "no weights": (lambda run, tmp: broken_copy(
        run, tmp, lambda c: (c / "weights.safetensors").unlink()), "save_weights: false"),
    "not safetensors": (lambda run, tmp: broken_copy(
        run, tmp, lambda c: (c / "weights.safetensors").write_bytes(b"garbage")),
        "not a readable safetensors file"),
    "wrong shapes": (lambda run, tmp: broken_copy(
        run, tmp, lambda c: (c / "labels.json").write_text('["O", "B-X", "I-X"]')),
        "head.weight: expected (3, 32), found (5, 32)"),
    "bad config": (lambda run, tmp: broken_copy(
        run, tmp, lambda c: (c / "config.json").write_text('{"rank": "big"}')),
        "key 'rank' expects int"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_run_errors_exit_2_with_one_line_naming_the_path(runs, tmp_path, capsys, case):
    make, words = ERRORS[case]
    folder = make(runs["lora"], tmp_path)
    text = tmp_path / "in.txt"
    text.write_text("aspirin caused fever\n")
    assert predict.main([str(folder), str(text)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert str(folder) in captured.err and words in captured.err, captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    (b"aspirin caused fever\nthe \xff patient\n", ":2: not UTF-8"),
    (b"\n \n", "no sentences"),
    (b"aspirin\tB-Chemical\n\tO\n", ":2: empty token"),
])
def test_input_errors_exit_2_naming_the_file_and_line(runs, tmp_path, capsys, content, words):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    assert predict.main([str(runs["lora"]), str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"{path}{words}" in captured.err or f"{path}: {words}" in captured.err, captured.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_gpu_without_cuda_exits_2(runs, tmp_path, capsys):
    text = tmp_path / "in.txt"
    text.write_text("aspirin caused fever\n")
    assert predict.main([str(runs["lora"]), str(text), "--gpu", "0"]) == 2
    assert capsys.readouterr().err == "predict.py: --gpu 0: only 0 CUDA devices\n"


def test_a_moved_sweep_still_finds_its_fusion_sources(runs, tmp_path):
    """config.json keeps the old output_dir; the sources are looked up beside the run."""
    moved = tmp_path / "moved"
    shutil.copytree(runs["fusion-merge"].parents[1], moved)
    run = moved / "fusion-merge" / "seed42"
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "output_dir": str(tmp_path / "gone")}))
    tokens, _, predicted = saved_predictions(run)
    assert predict.load_run(run).tag(tokens) == predicted


# ------------------------------------------------------------------ raw text


def abstract(tokens: list[list[str]]) -> tuple[str, list[list[str]]]:
    """A document built from tokenised sentences: each made to read as one (its own periods
    dropped, a capital first, a period last), the first on a line of its own as a title."""
    sentences = [[w for w in s if w != "."] for s in tokens]
    sentences = [[s[0].capitalize(), *s[1:], "."] for s in sentences if s]
    lines = [text.join_tokens(sentences[0]), " ".join(text.join_tokens(s)
                                                      for s in sentences[1:])]
    return "\n".join(lines), sentences


def test_tag_text_gives_the_entities_of_tagging_its_sentences_with_exact_offsets(runs):
    tagger = predict.load_run(runs["lora-crf"])
    tokens, _, _ = saved_predictions(runs["lora-crf"])
    document, sentences = abstract(tokens[:6])
    assert [[t.text for t in s] for s in text.sentences(document)] == sentences
    spans = tagger.tag_text(document)
    expected = [(kind, s[first:end]) for s, tags in zip(sentences, tagger.tag(sentences))
                for first, end, kind in schemes.mention_spans(tags)]
    assert spans and [(s.type, [t.text for t in text.tokenize(s.text)]) for s in spans] == \
        expected
    assert all(document[s.start:s.end] == s.text for s in spans)
    assert spans == sorted(spans, key=lambda s: s.start)


def test_text_input_writes_jsonl_and_pubtator_with_offsets_into_each_document(runs, tmp_path,
                                                                            capsys):
    tokens, _, _ = saved_predictions(runs["lora"])
    documents = [abstract(tokens[i:i + 3])[0] for i in (0, 3, 6)]
    path = tmp_path / "abstracts.txt"
    path.write_text("\n\n".join(documents) + "\n")  # blank lines between documents
    assert predict.main([str(runs["lora"]), str(path)]) == 0  # detected as text
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines and all(set(e) == {"doc", "start", "end", "type", "text"} for e in lines)
    assert all(documents[e["doc"]][e["start"]:e["end"]] == e["text"] for e in lines)
    tagger = predict.load_run(runs["lora"])
    assert [(e["doc"], e["start"], e["end"]) for e in lines] == [
        (doc, s.start, s.end) for doc, found in enumerate(tagger.tag_documents(documents))
        for s in found]
    assert predict.main([str(runs["lora"]), str(path), "--output-format", "pubtator"]) == 0
    out = capsys.readouterr().out
    blocks = out.strip("\n").split("\n\n")
    assert len(blocks) == 3
    for doc, block in enumerate(blocks):
        title, body, *entities = block.split("\n")
        assert title == f"{doc}|t|{documents[doc].split(chr(10))[0]}"
        assert body.startswith(f"{doc}|a|")
        joined = title.split("|t|")[1] + " " + body.split("|a|")[1]  # PubTator's offsets
        for line in entities:
            _, start, end, mention, kind = line.split("\t")
            assert joined[int(start):int(end)] == mention and kind in ("Chemical", "Disease")
    assert sum(len(b.split("\n")) - 2 for b in blocks) == len(lines)


def test_one_document_per_line_and_formats_by_detection(tmp_path):
    assert predict.detect_format("Aspirin caused fever.\nThe patient recovered.\n") == "text"
    assert predict.detect_format("aspirin caused fever .\nthe patient recovered\n") == "tokens"
    assert predict.detect_format("A first abstract.\n\nA second one\n") == "text"
    assert predict.detect_format("aspirin\tB-Chemical\nfever\tS-Disease\n") == "iob"
    assert text.read_documents("one.\ntwo.\n\n") == ["one.", "two."]
    assert text.read_documents("Title\nAbstract.\n\nOther\n") == ["Title\nAbstract.", "Other"]


@pytest.mark.parametrize("content, words", [
    (b"Aspirin caused fever.\nThe \xff patient.\n", ":2: not UTF-8"),
    (b"\n\n  \n", "no documents (the file is empty)"),
])
def test_text_input_errors_are_one_line(runs, tmp_path, capsys, content, words):
    path = tmp_path / "input.txt"
    path.write_bytes(content)
    assert predict.main([str(runs["lora"]), str(path), "--format", "text"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"{path}{words}" in captured.err or f"{path}: {words}" in captured.err, captured.err
