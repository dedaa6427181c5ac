"""Export a finished run as a tagger anyone can load:
`python export.py RUN_DIR OUT_DIR [--format hf|adapterhub]`.

With `--format hf` (the default), OUT_DIR becomes a 🤗 token-classification folder
(formats/hf.py) with a model card (formats/card.py), written whole or not at all, which
transformers alone loads:

    from transformers import pipeline
    tagger = pipeline("token-classification", model=OUT_DIR, aggregation_strategy="first")
    tagger("Cocaine - induced myocardial infarction .")

The run's tagger is rebuilt as predict.py rebuilds it (`load_run`), then its method's change is
folded into BERT's own weights as the method table says (`to_plain`, plain.py). A method whose
change no BERT weight can hold (bottleneck adapters, attention fusion), and a CRF head, are
refused with the reason and what works instead.

Held equal: the run's test sentences, each sentence's tokens joined by spaces, give through the
pipeline the entities (character offsets) that predict.py's tags give, for every exportable
method of the conformance suite (tests/test_export.py). The pipeline's "first" strategy tags a
word by its first subword, as the tagger does; its words are BERT's, and where they are not the
run's tokens the two differ (docs/export.md says how, and tests each case):

- a token BERT's pre-tokeniser cuts (punctuation, `_` or a CJK character inside: Linnaeus'
  `+/-`, `(R)`) is tagged piece by piece, each piece by its own first subword, where the tagger
  tagged the whole token by its first piece: predict.py's tags on BERT's pieces are what the
  pipeline gives;
- a word whose first subword covers more characters than it has (an accent written as a
  separate combining character, `e` + U+0301, which BERT strips) is taken by the pipeline for
  the continuation of the word before: NFC-normalise the text first;
- a token BERT reads as nothing (a control character) is tagged by the tagger through [UNK],
  and is not there for the pipeline;
- a sentence longer than the run's `max_length` subwords is tagged by predict.py in windows of
  that length, by the pipeline whole, up to the tokenizer's `model_max_length` (truncated
  beyond it).

With `--format adapterhub`, a run of bottleneck adapters becomes AdapterHub's adapter folder
(formats/adapterhub.py): the adapter's config and weights and the tagging head with the run's
labels, which AdapterHub's `load_adapter(OUT_DIR, load_as=..., with_head=True)` reads into its
`BertAdapterModel` on the run's encoder. The method table says which methods have that form
(`to_adapterhub`). AdapterHub's head scores every subword; the tagger's tags are its best tags
at each word's first subword (docs/export.md). bench/adapterhub_export_check.py loads the
folders into AdapterHub itself and holds its scores equal to the tagger's emissions.

Bad input is one line on stderr and exit status 2, before anything is written: a folder that is
not a finished run, a failed run, an OUT_DIR that exists and is not empty, or a run that has no
form in the format asked for (its method, a variant such as attention fusion, or a CRF head),
with the reason and what works instead.

Left out: pushing to the hub, and a model card in AdapterHub's folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

from formats import adapterhub, card, hf
from methods import METHODS
from model import resolve_model
from predict import load_run
from runs.config_files import make_config
from runs.folders import METRICS, RECORD, load_json, read_json, write_folder_atomic

# --format -> what it makes of a run, for the refusals
FORMATS = {"hf": "a plain BERT tagger", "adapterhub": "an AdapterHub adapter"}

# A CRF head exports in no format: both heads take each position's best tag alone.
CRF_REFUSALS = {
    "hf": ("a CRF head decodes whole sentences with transition scores, which a "
           "token-classification model has no place for (its pipeline takes each word's best "
           "tag alone): tag with predict.py"),
    "adapterhub": ("a CRF head decodes whole sentences with transition scores, which "
                   "AdapterHub's tagging head has no place for (it scores each subword alone): "
                   "tag with predict.py"),
}


def refusal(cfg, output_format: str = "hf") -> str:
    """Why the run of `cfg` cannot be exported in `output_format`, and what works instead; ""
    when it can."""
    if cfg.crf:
        return CRF_REFUSALS[output_format]
    return adapterhub_refusal(cfg) if output_format == "adapterhub" else plain_refusal(cfg)


def plain_refusal(cfg) -> str:
    """Why the run cannot be a plain BERT token classifier, as the method table says."""
    method = METHODS[cfg.method]
    reason = method.not_plain(cfg) if method.not_plain is not None else ""
    if not reason and method.to_plain is None:
        reason = f"the method table gives {cfg.method} no way to a plain BERT encoder"
    return reason


def adapterhub_refusal(cfg) -> str:
    """Why the run cannot be an AdapterHub adapter: its method has no AdapterHub form in the
    table; then --format hf where the run exports so, else predict.py."""
    if METHODS[cfg.method].to_adapterhub is not None:
        return ""
    forms = ", ".join(n for n, m in METHODS.items() if m.to_adapterhub is not None)
    instead = "tag with predict.py" if plain_refusal(cfg) else "export it with --format hf"
    return f"the method table gives {cfg.method} no AdapterHub form (only {forms}): {instead}"


def check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out}: exists and is not empty (export into a new or empty folder)")


def read_run(run: Path):
    """The run's resolved config, after checking it is a finished run that did not fail."""
    if not run.is_dir():
        raise ValueError(f"{run}: no such run folder")
    record = read_json(run / RECORD)
    if record is not None and record.get("status") == "failed":
        raise ValueError(f"{run}: a failed run ({RECORD}: {record.get('reason') or 'failed'})")
    if not (run / METRICS).is_file():
        raise ValueError(f"{run}: not a finished run (no {METRICS}; expected "
                         f"<output_dir>/<experiment>/seed<n>/ of a run that ended)")
    return make_config(load_json(run / "config.json"), str(run / "config.json"))


def count_sentences(predictions: Path) -> int:
    """Sentences of a run's predictions.txt (blocks separated by blank lines)."""
    text = predictions.read_text(encoding="utf-8").strip()
    return len(text.split("\n\n")) if text else 0


def run_facts(run: Path, cfg, labels: list[str], exported_params: int) -> card.RunFacts:
    """What the model card says, from the run's files and, when the run belongs to a sweep
    (<output_dir>/<experiment>/seed<n>/ beside <output_dir>/summary.csv), the sweep's row."""
    method = METHODS[cfg.method]
    in_sweep = run.name == f"seed{cfg.seed}" and run.parent.name == cfg.name
    return card.RunFacts(
        config=dataclasses.asdict(cfg), metrics=load_json(run / METRICS), labels=labels,
        trains=method.trains, settings={key: getattr(cfg, key) for key in method.keys},
        test_sentences=count_sentences(run / "predictions.txt"),
        exported_params=exported_params,
        base=card.front_matter(Path(resolve_model(cfg.model)) / "README.md"),
        sweep=card.sweep_row(run.parent.parent / "summary.csv", cfg.name) if in_sweep else None)


def plain_files(run: Path, cfg, tagger, out: Path) -> dict[str, bytes]:
    """--format hf: the method's change folded into BERT's own weights (`to_plain`), as a
    token-classification folder with its model card."""
    encoder = tagger.model.encoder
    METHODS[cfg.method].to_plain(encoder, cfg)
    files = hf.token_classification_files(encoder, tagger.model.head, tagger.labels,
                                          cfg.dropout, tagger.tokenizer)
    exported = sum(p.numel() for p in encoder.parameters()) + \
        sum(p.numel() for p in tagger.model.head.parameters())
    facts = run_facts(run, cfg, tagger.labels, exported)
    files["README.md"] = card.model_card(facts, str(out)).encode()
    return files


def adapterhub_files(run: Path, cfg, tagger, out: Path) -> dict[str, bytes]:
    """--format adapterhub: the method's adapter (`to_adapterhub`) and the tagging head, named
    after the experiment, in AdapterHub's folder."""
    name = adapterhub.adapter_name(cfg.name)
    encoder = tagger.model.encoder
    adapter = METHODS[cfg.method].to_adapterhub(encoder, cfg, name)
    return adapterhub.folder_files(adapter, tagger.model.head, tagger.labels, cfg.dropout, name,
                                   encoder.config, resolve_model(cfg.model))


def export(run_dir: str | Path, out_dir: str | Path, output_format: str = "hf") -> Path:
    """Write the run at `run_dir` at `out_dir` in `output_format` (FORMATS). Every problem with
    the input is a ValueError (or OSError) raised before anything is written."""
    run, out = Path(run_dir), Path(out_dir)
    if output_format not in FORMATS:
        raise ValueError(f"--format {output_format}: expected one of {', '.join(FORMATS)}")
    cfg = read_run(run)
    check_target(out)
    reason = refusal(cfg, output_format)
    if reason:
        raise ValueError(f"{run}: method {cfg.method}{' with crf' * cfg.crf} cannot be "
                         f"{FORMATS[output_format]}: {reason}")

    tagger = load_run(run)
    files = (adapterhub_files if output_format == "adapterhub" else plain_files)(
        run, cfg, tagger, out)
    write_folder_atomic(out, files)
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="export.py", description="Export a finished run as a 🤗 token-classification "
        "folder with a model card, which transformers alone loads, or as AdapterHub's adapter "
        "folder.",
        epilog=f"Methods the method table gives a way to a plain BERT (--format hf): "
               f"{', '.join(n for n, m in METHODS.items() if m.to_plain is not None)}; an "
               f"AdapterHub form (--format adapterhub): "
               f"{', '.join(n for n, m in METHODS.items() if m.to_adapterhub is not None)}. A "
               f"run that has no form in the format asked for (its method, a variant such as "
               f"attention fusion, or a CRF head) is refused with the reason and what works "
               f"instead; predict.py tags any run.")
    parser.add_argument("run", metavar="RUN_DIR", help="a finished run folder "
                        "(<output_dir>/<experiment>/seed<n>/, with metrics.json)")
    parser.add_argument("out", metavar="OUT_DIR", help="the folder to write (new or empty)")
    parser.add_argument("--format", choices=list(FORMATS), default="hf",
                        help="hf: a plain BertForTokenClassification (default); adapterhub: "
                             "AdapterHub's adapter folder with its tagging head, for "
                             "load_adapter")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        # Whatever loading prints (library notes) goes to stderr; stdout names the folder.
        with contextlib.redirect_stdout(sys.stderr):
            out = export(args.run, args.out, args.format)
    except (OSError, ValueError) as error:  # the user's files: one line, no traceback
        print(f"export.py: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
