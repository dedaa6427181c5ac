"""export.py --format adapterhub against AdapterHub's `adapters` 1.3: finished adapter runs,
exported, loaded by AdapterHub's own `load_adapter`, score the runs' test sentences as our
tagger does.

It runs from AdapterHub's venv (bench/adapterhub_check.py says how to make it; AdapterHub pins
transformers 4.57, so not in CI), and calls the project's interpreter for what is ours: the
export and our tagger's emissions. It trains nothing; make the runs first (the config of
bench/README.md, written outside the repository), then:

    NER_DATA_DIR=/work/shared/data python compare.py /tmp/adapterhub_runs.yml
    /tmp/ah/bin/python bench/adapterhub_export_check.py --python "$(which python)" \\
        /tmp/adapterhub_runs/{pfeiffer,houlsby,parallel,pfeiffer-h,houlsby-relu-s2}/seed42

(`python` is the project's environment.) For each run:

1. `export.py RUN OUT --format adapterhub`, with the project's interpreter;
2. our side, with the project's interpreter (this script with `--ours`): predict.py's tagger of
   the run, in float64, gives each test sentence's emissions at each word's first subword, and
   predict.py's tags (fp32, in the run's windows);
3. AdapterHub's side, here: `AutoAdapterModel` on the encoder the folder names (`model_name`),
   `load_adapter(OUT, load_as="ner", with_head=True, set_active=True)`, in float64; the tagging
   head's scores at the same subwords, and their best tags. The folder is loaded a second time
   with `use_safetensors=True`, and the two models' weights compared.

Prints per run the largest absolute difference of the scores, how far the adapters moved the
scores (so that a small difference means something), the share of words whose best tag is
predict.py's, the labels AdapterHub's model names (`model.config.id2label`), and how many of the
first sentences a transformers pipeline (`aggregation_strategy="first"`) over AdapterHub's model
gives predict.py's entities for. Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PIPELINE_SENTENCES = 50  # the pipeline calls one sentence at a time: the first 50 per run
BATCH = 32  # sentences a forward pass, padded (one at a time is ten times slower on CPU)


# ---------------------------------------------------------------------------------------------
# Our side, run by the project's interpreter


def sentences_of(run: Path) -> list[list[str]]:
    blocks = (run / "predictions.txt").read_text(encoding="utf-8").strip().split("\n\n")
    return [[line.split(" ")[0] for line in block.splitlines()] for block in blocks]


def first_subwords(word_ids: list[int | None]) -> list[int]:
    """Where each word's first subword is, from a tokenizer's word ids ([CLS] and [SEP]: None)."""
    return [i for i, w in enumerate(word_ids) if w is not None and w != word_ids[i - 1]]


def batches(sentences: list[list[str]], tokenizer):
    """The sentences, whole, BATCH at a time: the padded encoding, and where each sentence's
    words' first subwords are, (B, W) padded with 0, with each sentence's word count."""
    for start in range(0, len(sentences), BATCH):
        batch = sentences[start:start + BATCH]
        encoded = tokenizer(batch, is_split_into_words=True, padding=True, return_tensors="pt")
        firsts = [first_subwords(encoded.word_ids(i)) for i in range(len(batch))]
        index = torch.zeros(len(batch), max(map(len, firsts)), dtype=torch.long)  # (B, W)
        for i, positions in enumerate(firsts):
            index[i, :len(positions)] = torch.tensor(positions)
        yield dict(encoded), index, [len(positions) for positions in firsts]


def at(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, W, K) of (B, T, K) scores at the (B, W) positions."""
    return scores.gather(1, index[..., None].expand(-1, -1, scores.size(-1)))


def our_side(run: Path, out: Path) -> None:
    """Our tagger on the run's test sentences: float64 emissions at first subwords (W, K) of each
    whole sentence, what the bare encoder with the run's head scores there, predict.py's tags,
    and the entities (start, end, type) of those tags in the tokens joined by spaces."""
    sys.path.insert(0, str(ROOT))
    from corpora.schemes import mention_spans
    from model import load_encoder, resolve_model
    from predict import load_run

    tagger = load_run(run)
    sentences = sentences_of(run)
    tags = tagger.tag(sentences)  # what predict.py gives, as the run's predictions.txt
    model = tagger.model.double()
    encoder = load_encoder(resolve_model(tagger.config.model))[0].double().eval()
    emissions, bare = [], []
    for encoded, index, words in batches(sentences, tagger.tokenizer):
        with torch.no_grad():
            found = model(encoded["input_ids"], encoded["attention_mask"], index)  # (B, W, K)
            scores = model.head(encoder(**encoded).last_hidden_state)  # (B, T, K)
        emissions += [found[i, :n] for i, n in enumerate(words)]
        bare += [at(scores, index)[i, :n] for i, n in enumerate(words)]
    entities = []
    for tokens, predicted in zip(sentences, tags):
        starts = [sum(len(t) + 1 for t in tokens[:i]) for i in range(len(tokens))]
        entities.append([[starts[first], starts[end - 1] + len(tokens[end - 1]), kind]
                         for first, end, kind in mention_spans(predicted)])
    lengths = tagger.tokenizer(sentences, is_split_into_words=True)["input_ids"]
    torch.save({"labels": tagger.labels, "sentences": sentences, "tags": tags,
                "entities": entities, "emissions": emissions, "bare": bare,
                "long": [len(ids) > tagger.max_length for ids in lengths]}, out)


# ---------------------------------------------------------------------------------------------
# AdapterHub's side, here


def adapterhub_model(folder: Path, use_safetensors: bool):
    """AdapterHub's model for the folder: its base encoder (adapter_config.json's model_name),
    the adapter and its head loaded as "ner" and made active, in float64."""
    from adapters import AutoAdapterModel  # AdapterHub's package

    base = json.loads((folder / "adapter_config.json").read_text())["model_name"]
    model = AutoAdapterModel.from_pretrained(base)
    name = model.load_adapter(str(folder), load_as="ner", with_head=True, set_active=True,
                              use_safetensors=use_safetensors)
    assert name == "ner" and model.active_head == "ner", (name, model.active_head)
    return model.double().eval(), base


def check(run: Path, python: str, work: Path) -> None:
    from transformers import AutoTokenizer, pipeline

    folder, ours_file = work / f"{run.parent.name}-adapterhub", work / f"{run.parent.name}.pt"
    subprocess.run([python, str(ROOT / "export.py"), str(run), str(folder), "--format",
                    "adapterhub"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    subprocess.run([python, __file__, "--ours", str(run), str(ours_file)], check=True)
    ours = torch.load(ours_file, weights_only=True)
    model, base = adapterhub_model(folder, use_safetensors=False)
    again, _ = adapterhub_model(folder, use_safetensors=True)
    same_weights = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                         again.state_dict().values()))
    tokenizer = AutoTokenizer.from_pretrained(base)
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]

    scores = []  # per sentence (W, K): the head at each word's first subword
    for encoded, index, words in batches(ours["sentences"], tokenizer):
        with torch.no_grad():
            found = at(model(**encoded).logits, index)  # (B, W, K)
        scores += [found[i, :n] for i, n in enumerate(words)]
    largest = max(float((s - e).abs().max()) for s, e in zip(scores, ours["emissions"]))
    moved = max(float((e - b).abs().max()) for e, b in zip(ours["emissions"], ours["bare"]))
    best = [[labels[k] for k in s.argmax(-1).tolist()] for s in scores]
    equal = sum(a == b for found, tags in zip(best, ours["tags"]) for a, b in zip(found, tags))
    words = sum(map(len, ours["tags"]))
    # the pipeline's words are BERT's: with these corpora's tokens, the tokens (docs/export.md)
    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer,
                      aggregation_strategy="first")
    agreed = sum([[e["start"], e["end"], e["entity_group"]] for e in tagger(" ".join(tokens))]
                 == expected for tokens, expected in zip(ours["sentences"][:PIPELINE_SENTENCES],
                                                         ours["entities"]))
    print(f"{run.parent.name:<16} {len(ours['sentences']):>4} sentences "
          f"({sum(ours['long'])} longer than the run's windows)   max |Δ| scores "
          f"{largest:.1e} (adapters move them by {moved:.2f})   tags equal "
          f"{equal}/{words} ({100 * equal / words:.2f}%)   pipeline "
          f"{agreed}/{min(PIPELINE_SENTENCES, len(ours['sentences']))}   "
          f"safetensors = bin: {same_weights}   labels ours: {labels == ours['labels']}")


def main() -> None:
    if sys.argv[1:2] == ["--ours"]:  # our side, run by the project's interpreter
        our_side(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished adapter runs")
    parser.add_argument("--python", required=True,
                        help="the project's interpreter (its environment)")
    args = parser.parse_args()
    import transformers
    from transformers.utils import logging as hf_logging

    import adapters  # AdapterHub's package: this script never puts the project on the path here

    # also the pipeline's "The model 'BertAdapterModel' is not supported for
    # token-classification", logged as an error, after which it runs the model all the same
    hf_logging.set_verbosity(hf_logging.CRITICAL)
    logging.getLogger("adapters").setLevel(logging.ERROR)
    print(f"adapters {adapters.__version__}, transformers {transformers.__version__}, torch "
          f"{torch.__version__}, float64\n")
    with tempfile.TemporaryDirectory() as work:
        for run in args.runs:
            check(Path(run), args.python, Path(work))


if __name__ == "__main__":
    main()
