"""Apply a finished run to new text: `python predict.py RUN_DIR INPUT [--format F] [--output FILE]`.

A run folder (`<output_dir>/<experiment>/seed<n>/`) holds everything needed to rebuild its
tagger: `config.json` (the resolved config), `labels.json` and `weights.safetensors` (what the
method trained). `load_run` rebuilds the model exactly as training did (`model.py`), for every
method (full, LoRA, CRF head, fusion), and `TrainedTagger.tag` runs it on lists of tokens
through the same windows as training, so a sentence longer than `max_length` subwords is tagged
whole.

INPUT is one of three formats (`--format`, detected when not given):

- `text`: raw documents, one per line or separated by blank lines (a PubMed title and abstract
  on two lines of one document). Sentences and tokens are cut as the corpora cut them
  (corpora/text.py), and the output is the entities with character offsets into each document: JSONL,
  one `{"doc", "start", "end", "type", "text"}` per entity (`document[start:end] == text`), or
  PubTator (`--output-format pubtator`). `TrainedTagger.tag_text(str)` is the same from Python.
- `tokens`: one sentence per line, tokens separated by whitespace; `token<TAB>tag` out.
- `iob`: a two-column IOB file (`token<TAB>tag`, as the corpora, any tagging scheme); the gold
  tags are kept in the output and an entity-level score (micro P/R/F1) goes to stderr.

Left out: streaming input (the whole file is read, then tagged in sorted batches), and
PubTator input.

Dimensions: B batch, T subword tokens, W words, K tags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import config
import data
from corpora import schemes
from corpora import text as text_tokens
from corpora.iob import Sentence, read_iob
from corpora.schemes import mention_spans
from inference import Batcher, autocast_dtype, predict_sentences
from methods import sources_of
from model import Tagger, build_tagger, load_encoder, load_weights_file, window_length
from runs import scoring
from runs.config_files import make_config
from runs.folders import METRICS, load_json, source_dirs, write_atomic


@dataclass(frozen=True)
class Span:
    """An entity found in a document: `document[start:end] == text`."""
    start: int
    end: int
    type: str
    text: str


@dataclass
class TrainedTagger:
    """A finished run's tagger, ready to tag tokenised sentences."""
    model: Tagger
    tokenizer: object  # the encoder's fast tokenizer
    labels: list[str]
    config: config.Config
    max_length: int  # subwords per window, special tokens included
    device: torch.device

    @torch.inference_mode()
    def tag(self, sentences: list[list[str]]) -> list[list[str]]:
        """One tag per token of every sentence; an empty sentence gets no tags.

        [["aspirin", "caused", "fever"]] -> [["B-Chemical", "O", "B-Disease"]]
        """
        if any(isinstance(s, str) for s in sentences):
            raise TypeError("tag() takes lists of tokens, e.g. [['aspirin', 'caused', 'fever']]")
        kept = [i for i, s in enumerate(sentences) if s]  # the tokenizer rejects empty ones
        result: list[list[str]] = [[] for _ in sentences]
        if not kept:
            return result
        tokenizer, cfg = self.tokenizer, self.config
        plain = [Sentence(list(sentences[i]), ["O"] * len(sentences[i])) for i in kept]
        tokenized = data.tokenize_sentences(plain, tokenizer, self.labels)
        windows = data.make_windows(tokenized, self.max_length, tokenizer.cls_token_id,
                                    tokenizer.sep_token_id)
        # Padding to 1 (none): the same batches, shapes and numbers as the run's CPU evaluation.
        batcher = Batcher(tokenizer.pad_token_id, self.max_length, 1, self.device)
        amp = autocast_dtype(cfg.precision, self.device)
        by_sentence = predict_sentences(self.model, tokenized, windows, cfg.eval_batch_size,
                                        batcher, amp)
        for i, tag_ids in zip(kept, by_sentence):
            result[i] = [self.labels[t] for t in tag_ids]
        return result

    def tag_documents(self, documents: list[str]) -> list[list[Span]]:
        """The entities of every document, its sentences cut and tokenised as the corpora are
        (corpora/text.py), all sentences tagged in one batched pass."""
        sentences = [text_tokens.sentences(document) for document in documents]
        flat = [[token.text for token in tokens] for doc in sentences for tokens in doc]
        tags = iter(self.tag(flat))
        spans: list[list[Span]] = []
        for document, doc_sentences in zip(documents, sentences):
            found = []
            for tokens in doc_sentences:
                for first, end, kind in mention_spans(next(tags)):
                    start, stop = tokens[first].start, tokens[end - 1].end
                    found.append(Span(start, stop, kind, document[start:stop]))
            spans.append(found)
        return spans

    def tag_text(self, document: str) -> list[Span]:
        """The entities of one raw document, with character offsets into it.

        "Aspirin-induced asthma." -> [Span(0, 7, "Chemical", "Aspirin"),
                                      Span(16, 22, "Disease", "asthma")]
        """
        return self.tag_documents([document])[0]


def load_run(path: str | Path, device: str | torch.device = "cpu") -> TrainedTagger:
    """The tagger of a finished run folder, in eval mode on `device`, its weights in fp32.

    Raises FileNotFoundError or ValueError naming the file for a missing folder, an unfinished
    run (no metrics.json), a run saved without weights, or weights that do not fit the model.
    """
    run = Path(path)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    seeds = sorted(p.name + "/" for p in run.glob("seed*") if (p / "config.json").is_file())
    if seeds and not (run / METRICS).is_file():
        raise ValueError(f"{run}: an experiment's folder, which holds its runs, one per seed "
                         f"({', '.join(seeds)}): give one, e.g. {run / seeds[0]}")
    if not (run / METRICS).is_file():
        raise ValueError(f"{run}: unfinished run (no metrics.json)")
    weights = run / "weights.safetensors"
    if not weights.is_file():
        raise ValueError(f"{weights}: no such file (was the run trained with save_weights: "
                         f"false?)")
    cfg = make_config(load_json(run / "config.json"), str(run / "config.json"))
    labels = load_json(run / "labels.json")
    if not (isinstance(labels, list) and labels and all(isinstance(t, str) for t in labels)):
        raise ValueError(f"{run / 'labels.json'}: expected a list of tag strings")

    encoder, tokenizer = load_encoder(cfg.model)
    max_length = window_length(cfg, encoder)
    # A fusion finds its sources beside the run folder where it is now, so that a moved sweep
    # (or one run from another working directory) still resolves them.
    sources = source_dirs(run, cfg.seed, sources_of(cfg))
    model, _ = build_tagger(cfg, labels, encoder, sources)
    load_weights_file(model, weights)
    model.to(device).eval()
    return TrainedTagger(model, tokenizer, labels, cfg, max_length, torch.device(device))


# ---------------------------------------------------------------------------------------------
# Input and output files


def read_text(path: Path) -> str:
    """The file decoded as UTF-8; an undecodable line is an error naming it."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise OSError(f"{path}: cannot read ({error.strerror or error})") from error
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        number = raw[:error.start].count(b"\n") + 1
        raise ValueError(f"{path}:{number}: not UTF-8 ({error.reason} at byte "
                         f"{error.start})") from error


def is_iob(lines: list[str]) -> bool:
    """Every non-blank line has two or more tab-separated fields, the last a tag (O, or a tag
    of the BIO, IOB1 or IOBES schemes)."""
    filled = [line for line in lines if line.strip()]
    return bool(filled) and all(len(fields := line.rstrip("\r\n").split("\t")) >= 2
                                and schemes.split_tag(fields[-1].strip()) for line in filled)


def detect_format(content: str) -> str:
    """`iob`, `tokens` or `text` for a file's content: IOB when is_iob says so; `text` when it
    separates documents by blank lines or holds a line whose whitespace does not already
    separate its tokens (`fever.`); else `tokens`."""
    lines = content.splitlines()
    if is_iob(lines):
        return "iob"
    if text_tokens.read_documents(content) != [line for line in lines if line.strip()]:
        return "text"
    tokenised = all(line.split() == [t.text for t in text_tokens.tokenize(line)]
                    for line in lines)
    return "tokens" if tokenised else "text"


def read_input(path: str | Path, kind: str = "auto"):
    """(format, what to tag, gold tags or None): for `text` the documents, else the sentences'
    tokens (with gold tags for `iob`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    content = read_text(path)
    kind = detect_format(content) if kind == "auto" else kind
    if kind == "iob":
        sentences = read_iob(path)
        return kind, [s.tokens for s in sentences], [s.tags for s in sentences]
    if kind == "text":
        documents = text_tokens.read_documents(content)
        if not documents:
            raise ValueError(f"{path}: no documents (the file is empty)")
        return kind, documents, None
    sentences = [line.split() for line in content.splitlines() if line.strip()]
    if not sentences:
        raise ValueError(f"{path}: no sentences (the file is empty)")
    return kind, sentences, None


def format_output(sentences: list[list[str]], predicted: list[list[str]],
                  gold: list[list[str]] | None = None) -> str:
    """`token<TAB>tag` (or `token<TAB>gold<TAB>predicted`) lines, a blank line between sentences."""
    blocks = []
    for i, (tokens, tags) in enumerate(zip(sentences, predicted)):
        columns = (tokens, gold[i], tags) if gold is not None else (tokens, tags)
        blocks.append("\n".join("\t".join(fields) for fields in zip(*columns)))
    return "\n\n".join(blocks) + "\n"


def spans_jsonl(spans: list[list[Span]]) -> str:
    """One JSON object per entity: {"doc", "start", "end", "type", "text"}, documents in order."""
    return "".join(json.dumps({"doc": doc, **asdict(span)}) + "\n"
                   for doc, found in enumerate(spans) for span in found)


def spans_pubtator(documents: list[str], spans: list[list[Span]]) -> str:
    """PubTator: per document `<id>|t|<first line>`, `<id>|a|<the rest>`, then one
    `<id>\t<start>\t<end>\t<text>\t<type>` line per entity and a blank line. The id is the
    document's index; offsets count in title + " " + abstract, which is the document itself
    with its first line break read as a space, so they are the same offsets."""
    blocks = []
    for doc, (document, found) in enumerate(zip(documents, spans)):
        title, _, abstract = document.partition("\n")
        lines = [f"{doc}|t|{title}", f"{doc}|a|{abstract.replace(chr(10), ' ')}"]
        lines += [f"{doc}\t{s.start}\t{s.end}\t{s.text}\t{s.type}" for s in found]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="predict.py", description="Tag new text with a finished run.",
        epilog="text: raw documents, one per line or separated by blank lines; entities with "
               "character offsets out (JSONL, or PubTator). tokens: one sentence per line, "
               "tokens separated by whitespace. iob: token<TAB>tag, the gold tags kept and "
               "scored.")
    parser.add_argument("run", metavar="RUN_DIR", help="a finished run folder "
                        "(<output_dir>/<experiment>/seed<n>/, with metrics.json)")
    parser.add_argument("input", metavar="INPUT", help="raw text, tokenised sentences, or a "
                        "two-column IOB file")
    parser.add_argument("--format", choices=["auto", "text", "tokens", "iob"], default="auto",
                        help="what INPUT holds (default: detected)")
    parser.add_argument("--output-format", choices=["jsonl", "pubtator"], default="jsonl",
                        help="for text input: the entities as JSON lines or PubTator")
    parser.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--gpu", type=int, default=-1, metavar="N",
                        help="CUDA device index (default: the CPU)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        if args.gpu >= torch.cuda.device_count():
            raise ValueError(f"--gpu {args.gpu}: only {torch.cuda.device_count()} CUDA devices")
        kind, inputs, gold = read_input(args.input, args.format)
        # Whatever loading prints (library notes) goes to stderr: stdout carries only tags.
        with contextlib.redirect_stdout(sys.stderr):
            tagger = load_run(args.run, f"cuda:{args.gpu}" if args.gpu >= 0 else "cpu")
    except (OSError, ValueError) as error:  # the user's files: one line, no traceback
        print(f"predict.py: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if kind == "text":
        spans = tagger.tag_documents(inputs)
        text = spans_pubtator(inputs, spans) if args.output_format == "pubtator" else \
            spans_jsonl(spans)
    else:
        predicted = tagger.tag(inputs)
        text = format_output(inputs, predicted, gold)
    if args.output:
        try:
            write_atomic(Path(args.output), text)
        except OSError as error:
            print(f"predict.py: {args.output}: cannot write ({error.strerror or error})",
                  file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    if gold is not None:
        s = scoring.score(gold, predicted)
        print(f"{args.input}: {len(inputs)} sentences, entity level P {s['precision']:.4f} "
              f"R {s['recall']:.4f} F1 {s['f1']:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
