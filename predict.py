"""Apply a finished run to new text: `python predict.py RUN_DIR INPUT [--output FILE]`.

A run folder (`<output_dir>/<experiment>/seed<n>/`) holds everything needed to rebuild its
tagger: `config.json` (the resolved config), `labels.json` and `weights.safetensors` (what the
method trained). `load_run` rebuilds the model exactly as training did (`model.py`), for every
method (full, LoRA, CRF head, fusion), and `TrainedTagger.tag` runs it on lists of tokens
through the same windows as training, so a sentence longer than `max_length` subwords is tagged
whole.

INPUT is either plain text (one sentence per line, tokens separated by whitespace) or a
two-column IOB file (`token<TAB>tag`, as the corpora); with IOB input the gold tags are kept in
the output and an entity-level score (seqeval, micro P/R/F1) goes to stderr.

Left out: raw-text sentence splitting and tokenisation (the input is already tokenised, as the
corpora are), and streaming input: the whole file is read, then tagged in sorted batches.

Dimensions: B batch, T subword tokens, W words, K tags.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import config
import data
import scoring
import train
from files import write_atomic
from model import Tagger, build_tagger, load_encoder, load_weights_file


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
        plain = [data.Sentence(list(sentences[i]), ["O"] * len(sentences[i])) for i in kept]
        tokenized = data.tokenize_sentences(plain, tokenizer, self.labels)
        windows = data.make_windows(tokenized, self.max_length, tokenizer.cls_token_id,
                                    tokenizer.sep_token_id)
        # Padding to 1 (none): the same batches, shapes and numbers as the run's CPU evaluation.
        batcher = train.Batcher(tokenizer.pad_token_id, self.max_length, 1, self.device)
        amp = train.autocast_dtype(cfg.precision, self.device)
        by_window = train.predict_windows(self.model, windows, cfg.eval_batch_size, batcher, amp)
        by_sentence = data.merge_window_predictions(windows, by_window,
                                                    [len(s.tokens) for s in plain])
        for i, tag_ids in zip(kept, by_sentence):
            result[i] = [self.labels[t] for t in tag_ids]
        return result

def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from error


def load_run(path: str | Path, device: str | torch.device = "cpu") -> TrainedTagger:
    """The tagger of a finished run folder, in eval mode on `device`, its weights in fp32.

    Raises FileNotFoundError or ValueError naming the file for a missing folder, an unfinished
    run (no metrics.json), a run saved without weights, or weights that do not fit the model.
    """
    run = Path(path)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    if not (run / "metrics.json").is_file():
        raise ValueError(f"{run}: unfinished run (no metrics.json)")
    weights = run / "weights.safetensors"
    if not weights.is_file():
        raise ValueError(f"{weights}: no such file (was the run trained with save_weights: "
                         f"false?)")
    cfg = config.make_config(read_json(run / "config.json"), str(run / "config.json"))
    labels = read_json(run / "labels.json")
    if not (isinstance(labels, list) and labels and all(isinstance(t, str) for t in labels)):
        raise ValueError(f"{run / 'labels.json'}: expected a list of tag strings")

    encoder, tokenizer = load_encoder(cfg.model)
    max_length = min(cfg.max_length, encoder.config.max_position_embeddings)
    # A fusion finds its sources beside it, as `<output_dir>/<source>/seed<n>`: look next to
    # where the run is now, so that a moved or relative output_dir still resolves.
    built = cfg
    if run.name == f"seed{cfg.seed}" and run.parent.name == cfg.name:
        built = dataclasses.replace(cfg, output_dir=str(run.parent.parent))
    model, _ = build_tagger(built, labels, encoder)
    load_weights_file(model, weights)
    model.to(device).eval()
    return TrainedTagger(model, tokenizer, labels, cfg, max_length, torch.device(device))


# ---------------------------------------------------------------------------------------------
# Input and output files


def read_lines(path: Path) -> list[str]:
    """The file's lines, decoded as UTF-8; an undecodable line is an error naming it."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise OSError(f"{path}: cannot read ({error.strerror or error})") from error
    lines = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}:{number}: not UTF-8 ({error.reason} at byte "
                             f"{error.start})") from error
    return lines


def is_iob(lines: list[str]) -> bool:
    """Every non-blank line has two or more tab-separated fields, the last a tag (O, B-X, I-X)."""
    filled = [line for line in lines if line.strip()]
    return bool(filled) and all(len(fields := line.rstrip("\r\n").split("\t")) >= 2
                                and data.check_tag(fields[-1].strip()) for line in filled)


def read_input(path: str | Path) -> tuple[list[list[str]], list[list[str]] | None]:
    """Sentences of INPUT, and their gold tags when it is an IOB file (else None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    lines = read_lines(path)
    if is_iob(lines):
        sentences = data.read_iob(path)
        return [s.tokens for s in sentences], [s.tags for s in sentences]
    sentences = [line.split() for line in lines if line.strip()]
    if not sentences:
        raise ValueError(f"{path}: no sentences (the file is empty)")
    return sentences, None


def format_output(sentences: list[list[str]], predicted: list[list[str]],
                  gold: list[list[str]] | None = None) -> str:
    """`token<TAB>tag` (or `token<TAB>gold<TAB>predicted`) lines, a blank line between sentences."""
    blocks = []
    for i, (tokens, tags) in enumerate(zip(sentences, predicted)):
        columns = (tokens, gold[i], tags) if gold is not None else (tokens, tags)
        blocks.append("\n".join("\t".join(fields) for fields in zip(*columns)))
    return "\n\n".join(blocks) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="predict.py", description="Tag new text with a finished run.",
        epilog="Plain text input: one sentence per line, tokens separated by whitespace. IOB "
               "input (token<TAB>tag): the gold tags are kept and scored.")
    parser.add_argument("run", metavar="RUN_DIR", help="a finished run folder "
                        "(<output_dir>/<experiment>/seed<n>/, with metrics.json)")
    parser.add_argument("input", metavar="INPUT", help="plain text or a two-column IOB file")
    parser.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--gpu", type=int, default=-1, metavar="N",
                        help="CUDA device index (default: the CPU)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        if args.gpu >= torch.cuda.device_count():
            raise ValueError(f"--gpu {args.gpu}: only {torch.cuda.device_count()} CUDA devices")
        sentences, gold = read_input(args.input)
        # Whatever loading prints (library notes) goes to stderr: stdout carries only tags.
        with contextlib.redirect_stdout(sys.stderr):
            tagger = load_run(args.run, f"cuda:{args.gpu}" if args.gpu >= 0 else "cpu")
    except (OSError, ValueError) as error:  # the user's files: one line, no traceback
        print(f"predict.py: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    predicted = tagger.tag(sentences)
    text = format_output(sentences, predicted, gold)
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
        print(f"{args.input}: {len(sentences)} sentences, entity level P {s['precision']:.4f} "
              f"R {s['recall']:.4f} F1 {s['f1']:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
