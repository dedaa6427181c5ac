"""export.py and formats/hf.py: a finished run of every exportable method of the table, in every
variant of the conformance suite, becomes a folder that transformers alone loads, and whose
pipeline finds on the run's test sentences the entities predict.py's tags give. Where BERT's
words are not the run's tokens, the pipeline gives what predict.py gives on BERT's words. Runs
that cannot export, and bad input, are refused in one line with exit status 2, nothing written.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from pathlib import Path

import pytest
import test_methods
import torch
import yaml
from test_card import summary_row
from test_methods import CASES, IDS, case_config
from test_plain import EXPORTABLE, REFUSED
from transformers import AutoModelForTokenClassification, pipeline
from transformers.utils import logging as hf_logging

import export
import predict
import train
from comparison import report
from corpora.schemes import mention_spans
from runs.folders import run_dir

bench = test_methods.bench  # the conformance suite's corpus and source runs (a fixture)


def ids(cases):
    return [IDS[CASES.index(case)] for case in cases]


@pytest.fixture(scope="module")
def finished(bench):
    """A finished run of a case, trained once per module: finished(name, variant) -> folder."""
    folders = {}

    def run(name: str, variant: int, **more) -> Path:
        key = (name, variant, tuple(sorted(more.items())))
        if key not in folders:
            cfg = case_config(bench, name, variant, **more)
            cfg = dataclasses.replace(cfg, name=f"{cfg.name}-export{len(folders)}")
            train.train(cfg)
            folders[key] = run_dir(cfg)
        return folders[key]
    return run


def exported(run: Path, out: Path, capsys) -> Path:
    assert export.main([str(run), str(out)]) == 0, capsys.readouterr().err
    return out


def load_pipeline(folder: Path):
    hf_logging.set_verbosity_error()  # the weight-loading report
    return pipeline("token-classification", model=str(folder), aggregation_strategy="first")


def sentences_of(run: Path) -> list[list[str]]:
    blocks = (run / "predictions.txt").read_text().strip().split("\n\n")
    return [[line.split()[0] for line in block.splitlines()] for block in blocks]


def joined_offsets(tokens: list[str]) -> list[tuple[int, int]]:
    """(start, end) of each token in the tokens joined by spaces."""
    offsets, start = [], 0
    for token in tokens:
        offsets.append((start, start + len(token)))
        start += len(token) + 1
    return offsets


def spans(offsets: list[tuple[int, int]], tags: list[str]) -> list[tuple[int, int, str]]:
    """(start, end, type) of each entity of the tags, from its words' character offsets."""
    return [(offsets[first][0], offsets[end - 1][1], kind)
            for first, end, kind in mention_spans(tags)]


def found(tagger, text: str) -> list[tuple[int, int, str]]:
    return [(e["start"], e["end"], e["entity_group"]) for e in tagger(text)]


def one_window(tagger: predict.TrainedTagger, tokens: list[str]) -> bool:
    """The sentence fits in one window of the run: the pipeline and the tagger see it whole."""
    pieces = tagger.tokenizer(tokens, is_split_into_words=True, add_special_tokens=False)
    return len(pieces["input_ids"]) + 2 <= tagger.max_length


@pytest.mark.parametrize("name, variant", EXPORTABLE, ids=ids(EXPORTABLE))
def test_the_pipeline_finds_the_entities_predict_finds(finished, tmp_path, capsys, name,
                                                       variant):
    run = finished(name, variant)
    folder = exported(run, tmp_path / "tagger", capsys)
    tagger = predict.load_run(run)
    model = AutoModelForTokenClassification.from_pretrained(folder)
    assert type(model).__name__ == "BertForTokenClassification"
    assert model.config.id2label == dict(enumerate(tagger.labels))
    assert model.config.classifier_dropout == tagger.config.dropout

    sentences = [s for s in sentences_of(run) if one_window(tagger, s)]
    assert len(sentences) >= 8  # of the suite's 12
    for tokens in sentences:  # the folder's model scores each word as the tagger does
        encoded = tagger.tokenizer(tokens, is_split_into_words=True, return_tensors="pt")
        firsts = first_subwords(encoded.word_ids())
        with torch.no_grad():
            logits = model(**encoded).logits[0, firsts]  # (W, K)
            emissions = tagger.model(encoded["input_ids"], encoded["attention_mask"],
                                     torch.tensor([firsts]))[0]  # (W, K)
        torch.testing.assert_close(logits, emissions, rtol=1e-4, atol=1e-4)

    pipe = load_pipeline(folder)
    tags = tagger.tag(sentences)
    expected = [spans(joined_offsets(s), t) for s, t in zip(sentences, tags)]
    assert [found(pipe, " ".join(s)) for s in sentences] == expected
    # Word by word, O included: the label of each word's first subword is the tagger's tag.
    assert [first_subword_labels(pipe, " ".join(s)) for s in sentences] == tags


def first_subword_labels(pipe, text: str) -> list[str]:
    """The pipeline's label of each word's first subword (no aggregation, O kept)."""
    labels = {e["index"]: e["entity"]
              for e in pipe(text, aggregation_strategy="none", ignore_labels=[])}
    return [labels[i] for i in first_subwords(pipe.tokenizer(text).word_ids())]


def first_subwords(word_ids: list[int | None]) -> list[int]:
    """Where each word's first subword is, from a tokenizer's word ids ([CLS] and [SEP]: None)."""
    return [i for i, w in enumerate(word_ids) if w is not None and w != word_ids[i - 1]]


@pytest.fixture(scope="module")
def lora_export(finished, tmp_path_factory):
    """One exported LoRA run: the run's folder and tagger, and the pipeline of its export."""
    run = finished("lora", 0, lr=2e-2, epochs=6)  # trained to tag entities (test F1 0.35)
    folder = tmp_path_factory.mktemp("lora-export") / "tagger"
    folder.mkdir()  # an empty folder is a fine target
    assert export.main([str(run), str(folder)]) == 0
    return run, folder, predict.load_run(run), load_pipeline(folder)


def test_the_folder_holds_its_model_card(lora_export):
    run, folder, tagger, _ = lora_export
    text = (folder / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert header["library_name"] == "transformers"
    assert header["pipeline_tag"] == "token-classification"
    assert header["datasets"] == [Path(tagger.config.dataset).name]
    result = header["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "f1", "value": round(metrics["test"]["f1"], 4),
                                    "name": "test f1 (entity level, micro)"}
    assert f"{metrics['trainable_params']:,} of {metrics['total_params']:,}" in text
    assert f'pipeline("token-classification", model="{folder}"' in text
    assert "## In its sweep" not in text  # no summary.csv beside the run


def test_a_run_of_a_sweep_gets_its_experiments_row(lora_export):
    """<output_dir>/<experiment>/seed<n>/ with <output_dir>/summary.csv beside: the card gets
    the experiment's row."""
    run, _, tagger, _ = lora_export
    summary = run.parent.parent / "summary.csv"
    name = tagger.config.name
    summary.write_text(report.csv_table([summary_row("full", "full", 3, delta=False),
                                         summary_row(name, "full", 3, delta=True)]))
    try:
        facts = export.run_facts(run, tagger.config, tagger.labels, 1)
    finally:
        summary.unlink()
    assert facts.sweep["experiment"] == name and facts.sweep["delta_f1"] == "-0.0487"
    assert facts.test_sentences == len(sentences_of(run))


def bert_words(tokenizer, tokens: list[str]) -> tuple[list[str], list[tuple[int, int]]]:
    """The tokens as BERT cuts them into words (its normaliser and pre-tokeniser), and each
    word's offsets in the tokens joined by spaces."""
    words, offsets = [], []
    for token, (start, _) in zip(tokens, joined_offsets(tokens)):
        encoded = tokenizer(token, add_special_tokens=False, return_offsets_mapping=True)
        bounds: dict[int, tuple[int, int]] = {}  # word -> (first char, end)
        for word, (begin, end) in zip(encoded.word_ids(), encoded["offset_mapping"]):
            bounds[word] = (bounds.get(word, (begin, end))[0], end)
        for begin, end in bounds.values():
            words.append(token[begin:end])
            offsets.append((start + begin, start + end))
    return words, offsets


def changed_sentences(run: Path, tagger, change) -> list[list[str]]:
    """The run's test sentences that `change` (tokens -> tokens) changes, and that still fit
    in one window."""
    changed = [(s, change(s)) for s in sentences_of(run)]
    return [new for old, new in changed if new != old and one_window(tagger, new)]


def test_a_token_bert_cuts_is_tagged_piece_by_piece(lora_export):
    """`Ca2+` as one corpus token is `Ca2` and `+` to BERT: the pipeline tags each piece by its
    own first subword, so it gives predict.py's entities on BERT's pieces, not on the token."""
    run, _, tagger, pipe = lora_export
    glued = {"cocaine": "coc+aine", "lithium": "lith_ium", "fever": "fe.ver",
             "nausea": "nau\u4e2dsea"}
    sentences = changed_sentences(run, tagger, lambda s: [glued.get(t, t) for t in s])
    assert len(sentences) >= 6
    entities = 0
    for tokens in sentences:
        words, offsets = bert_words(tagger.tokenizer, tokens)
        assert len(words) > len(tokens)  # the case is there
        expected = spans(offsets, tagger.tag([words])[0])
        assert found(pipe, " ".join(tokens)) == expected
        entities += len(expected)
    assert entities >= 5


def test_a_token_bert_reads_as_nothing_is_not_there_for_the_pipeline(lora_export):
    """A soft hyphen (a format character, which BERT's normaliser removes) is tagged by the
    tagger through [UNK]; the pipeline never sees it, and gives predict.py's entities on the
    tokens without it."""
    run, _, tagger, pipe = lora_export
    sentences = changed_sentences(run, tagger, lambda s: s[:2] + ["\u00ad"] + s[2:])
    entities = 0
    for tokens in sentences:
        kept = [(t, offsets) for t, offsets in zip(tokens, joined_offsets(tokens))
                if t != "\u00ad"]
        words, offsets = [t for t, _ in kept], [o for _, o in kept]
        assert len(tagger.tag([tokens])[0]) == len(tokens)  # the tagger tags it too
        expected = spans(offsets, tagger.tag([words])[0])
        assert found(pipe, " ".join(tokens)) == expected
        entities += len(expected)
    assert entities >= 5


def test_accents_are_stripped_alike_and_decomposed_ones_want_nfc(lora_export):
    """BERT strips accents for both; offsets count in the text as given. With the accents
    written as combining characters, NFC first gives predict.py's entities again."""
    run, _, tagger, pipe = lora_export
    accented = {"heparin": "h\u00e9parin", "aspirin": "\u00e1spirin", "fever": "f\u00e8ver",
                "cocaine": "c\u00f3caine", "lithium": "l\u00ecthium", "the": "th\u00e9"}
    sentences = changed_sentences(run, tagger, lambda s: [accented.get(t, t) for t in s])
    entities = 0
    for tokens in sentences:
        expected = spans(joined_offsets(tokens), tagger.tag([tokens])[0])
        assert found(pipe, " ".join(tokens)) == expected
        decomposed = unicodedata.normalize("NFD", " ".join(tokens))
        assert decomposed != " ".join(tokens)
        assert found(pipe, unicodedata.normalize("NFC", decomposed)) == expected
        entities += len(expected)
    assert entities >= 5


def test_a_decomposed_accent_joins_its_word_to_the_one_before(lora_export):
    """Without NFC, a word whose first subword holds a combining accent (`th` U+0301 `e`) has
    that subword cover more characters of the text than it has, which the pipeline takes for a
    continuation: the word joins the word before, and an entity ending there takes it in. The
    tagger strips the accent and tags the word on its own."""
    run, _, tagger, pipe = lora_export
    sentences = [s for s in sentences_of(run) if one_window(tagger, s)]
    tags = tagger.tag(sentences)
    cases = [(s, t, i) for s, t in zip(sentences, tags) for i in range(1, len(s))
             if t[i - 1] != "O" and t[i] == "O" and len(s[i]) > 1
             and tagger.tokenizer.tokenize(s[i]) == [s[i]]]  # one subword: the accent inside
    assert cases  # the trained run ends entities before whole-word fillers
    for tokens, tags_, i in cases:
        marked = tokens[:i] + [tokens[i][0] + "\u0301" + tokens[i][1:]] + tokens[i + 1:]
        assert tagger.tag([marked]) == [tags_]
        start, _, kind = next(span for span in spans(joined_offsets(tokens), tags_)
                              if span[1] == joined_offsets(tokens)[i - 1][1])
        assert (start, joined_offsets(marked)[i][1], kind) in found(pipe, " ".join(marked))


# ---------------------------------------------------------------------------------------------
# Refusals and bad input: one line, exit status 2, nothing written


def fake_run(folder: Path, cfg, **files: str) -> Path:
    """A run folder holding `cfg` as config.json and `files` ({name with _ for .: text}); what
    export.py reads before it refuses."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    for name, text in files.items():
        (folder / name.replace("_", ".")).write_text(text)
    return folder


def refused(argv: list[str], capsys, tmp_path: Path) -> str:
    """Run export.py, check it refused in one line and wrote nothing; the line."""
    before = sorted(tmp_path.rglob("*"))
    assert export.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert sorted(tmp_path.rglob("*")) == before
    return captured.err


@pytest.mark.parametrize("name, variant", REFUSED, ids=ids(REFUSED))
def test_a_method_that_cannot_export_is_refused(bench, tmp_path, capsys, name, variant):
    run = fake_run(tmp_path / "run", case_config(bench, name, variant), metrics_json="{}")
    line = refused([str(run), str(tmp_path / "tagger")], capsys, tmp_path)
    assert f"method {name} cannot be a plain BERT tagger" in line and "predict.py" in line


def test_a_crf_head_is_refused_whatever_the_method(bench, tmp_path, capsys):
    for name in ("full", "lora", "ia3"):
        run = fake_run(tmp_path / name, case_config(bench, name, 0, crf=True),
                       metrics_json="{}")
        line = refused([str(run), str(tmp_path / "tagger")], capsys, tmp_path)
        assert "CRF" in line and "predict.py" in line


def test_bad_input_is_one_line_and_writes_nothing(bench, tmp_path, capsys):
    cfg = case_config(bench, "full", 0)
    done = fake_run(tmp_path / "done", cfg, metrics_json="{}")
    cases = {
        "no such run folder": [str(tmp_path / "missing"), str(tmp_path / "a")],
        "not a finished run": [str(fake_run(tmp_path / "unfinished", cfg)),
                               str(tmp_path / "b")],
        "a failed run (record.json: loss is nan": [
            str(fake_run(tmp_path / "failed", cfg, metrics_json="{}",
                         record_json='{"status": "failed", "reason": "loss is nan"}')),
            str(tmp_path / "c")],
    }
    full = tmp_path / "full"
    full.mkdir()
    (full / "kept.txt").write_text("mine")
    cases["exists and is not empty"] = [str(done), str(full)]
    (tmp_path / "file").write_text("mine")
    cases["exists and is not a folder"] = [str(done), str(tmp_path / "file")]
    for words, argv in cases.items():
        assert words in refused(argv, capsys, tmp_path), words
    assert (full / "kept.txt").read_text() == "mine"


def test_help_names_the_formats(capsys):
    with pytest.raises(SystemExit) as done:
        export.main(["--help"])
    assert done.value.code == 0
    assert "--format {hf,adapterhub}" in capsys.readouterr().out
