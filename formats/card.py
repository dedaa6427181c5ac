"""The model card of an exported tagger: `README.md` in the hub's model-card form.

A YAML header the hub reads (license, base_model, datasets, library_name, pipeline_tag and a
`model-index` holding the run's test F1), then text: the method and what it trained, the corpus,
its slice and the budget, devel and test scores (micro and per type), the experiment's figures
over its seeds when the run belongs to a sweep, how to load the tagger, and what it was not
tested on. Every figure comes from the run's own files (`metrics.json`, `config.json`,
`labels.json`, `predictions.txt`, the sweep's `summary.csv`), as export.py reads them into
`RunFacts`; nothing here is typed in.

The licence and the base model's hub id come from the base model's own card (`README.md` in its
folder) when it has one; a hub id given as `model:` is the base model itself. Without either,
the header says `license: unknown` and names no base model, and the text says so.

Left out: the hub's `eval_results` and widget fields, and languages (the card of the base model
says them).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class RunFacts:
    """What the card says about a run, as its files hold it."""
    config: dict  # config.json: the resolved config
    metrics: dict  # metrics.json
    labels: list[str]  # labels.json
    trains: str  # the method table's words for what the method trains
    settings: dict  # the method's own config keys and their values in this run
    test_sentences: int  # sentences in predictions.txt
    exported_params: int  # parameters of the exported model
    base: dict  # the base model's card header (license, base_model), or {}
    sweep: dict | None  # the experiment's row of the sweep's summary.csv, or None


def front_matter(readme: Path) -> dict:
    """The YAML header of a model card (`---` lines around it); {} without one or unreadable."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return {}
    match = re.match(r"---\n(.*?)\n---\n", text, flags=re.DOTALL)
    try:
        header = yaml.safe_load(match[1]) if match else None
    except yaml.YAMLError:
        return {}
    return header if isinstance(header, dict) else {}


def sweep_row(summary: Path, experiment: str) -> dict | None:
    """The row of `experiment` in a sweep's summary.csv (comparison/report.py writes it), or
    None when there is no such file or row."""
    if not summary.is_file():
        return None
    with summary.open(encoding="utf-8", newline="") as f:
        return next((row for row in csv.DictReader(f) if row.get("experiment") == experiment),
                    None)


def is_hub_id(model: str) -> bool:
    """`owner/name` as the hub spells it (not a local path, nor `package:<module>`)."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", model) is not None and not Path(model).exists()


def flow(value) -> str:
    """A config value as YAML writes it on one line: `[query, value]`, `false`, `32.0`."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip()


def entity_types(labels: list[str]) -> list[str]:
    return sorted({label[2:] for label in labels if label[:2] in ("B-", "I-")})


def header(facts: RunFacts) -> dict:
    cfg, test = facts.config, facts.metrics["test"]
    base_model = facts.base.get("base_model") or (cfg["model"] if is_hub_id(cfg["model"]) else None)
    dataset = Path(cfg["dataset"]).name
    fields = {"license": facts.base.get("license") or "unknown"}
    if base_model:
        fields["base_model"] = base_model
    fields.update({
        "datasets": [dataset], "library_name": "transformers",
        "pipeline_tag": "token-classification",
        "tags": ["token-classification", "named-entity-recognition", cfg["method"]],
        "model-index": [{"name": cfg["name"], "results": [{
            "task": {"type": "token-classification", "name": "Named entity recognition"},
            "dataset": {"type": dataset, "name": dataset, "split": "test"},
            "metrics": [{"type": name, "value": round(test[name], 4),
                         "name": f"test {name} (entity level, micro)"}
                        for name in ("f1", "precision", "recall")]}]}]})
    return fields


def scores_table(metrics: dict) -> list[str]:
    """Devel and test P/R/F1, micro, then F1 per type, as markdown lines."""
    devel, test = metrics["devel"], metrics["test"]
    lines = ["| split | precision | recall | F1 |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} |"
              for name, s in (("devel", devel), ("test", test))]
    types = sorted(set(devel.get("per_type", {})) | set(test.get("per_type", {})))
    lines += ["", "| type | devel F1 | test F1 | test mentions |", "|---|---:|---:|---:|"]
    for t in types:
        d, s = devel.get("per_type", {}).get(t, {}), test.get("per_type", {}).get(t, {})
        lines.append(f"| {t} | {d.get('f1', 0.0):.4f} | {s.get('f1', 0.0):.4f} | "
                     f"{s.get('support', 0):,} |")
    return lines


def sweep_lines(row: dict) -> list[str]:
    """The experiment's mean ± std over its seeds and its Δ against the sweep's baseline."""
    experiment, runs = row["experiment"], int(row["runs"] or 0)
    spread = f" ± {float(row['f1_std']):.4f}" if row["f1_std"] else " (one seed: no spread)"
    lines = [(f"Over the sweep's {runs} seed{'s' * (runs != 1)} of `{experiment}`: test F1 "
              f"{float(row['f1']):.4f}{spread} (mean ± std); this run is one of them.")]
    if row["baseline"] == experiment:
        lines.append("It is the sweep's baseline, against which the other experiments are "
                     "compared.")
    elif row["delta_f1"]:
        lines.append(f"ΔF1 against the sweep's baseline `{row['baseline']}`: "
                     f"{float(row['delta_f1']):+.4f} [{float(row['delta_ci_low']):+.4f}, "
                     f"{float(row['delta_ci_high']):+.4f}] (95% paired bootstrap interval over "
                     f"the test sentences, seeds paired; p = {float(row['p_value']):.3g}).")
    else:
        lines.append(f"It was scored on another test set than the baseline's "
                     f"(`{row['baseline']}`), so there is no paired ΔF1.")
    return lines


def introduction(facts: RunFacts, fields: dict) -> list[str]:
    cfg = facts.config
    base = (f"`{fields['base_model']}`" if "base_model" in fields else
            f"`{cfg['model']}` (not a hub id, so the header names no base model)")
    licence = (f"License: {fields['license']}, from the base model's card."
               if facts.base.get("license") else
               "License: unknown (the base model's folder holds no card that says it); the "
               "base model's and the corpus's terms apply.")
    return [(f"# {cfg['name']}: a {' and '.join(entity_types(facts.labels))} tagger "
            f"({Path(cfg['dataset']).name})"), "",
            (f"A token-classification model exported by `export.py` from the run "
            f"`{cfg['name']}` (seed {cfg['seed']}) of a parameter-efficient fine-tuning study. "
            f"Base model: {base}. {licence}")]


def method_lines(facts: RunFacts) -> list[str]:
    cfg, metrics = facts.config, facts.metrics
    settings = ", ".join(f"{key}: {flow(value)}" for key, value in facts.settings.items())
    trained, total = metrics["trainable_params"], metrics["total_params"]
    return [f"- `{cfg['method']}`: {facts.trains}" + (f" ({settings})." if settings else "."),
            (f"- Trainable parameters while training: {trained:,} of {total:,} "
            f"({100 * trained / total:.2f}%), the tagging head included."),
            (f"- Exported as a plain BERT token classifier of {facts.exported_params:,} "
            f"parameters (what the method trained folded into the encoder's weights), with "
            f"dropout {cfg['dropout']} before the head.")]


def data_lines(facts: RunFacts) -> list[str]:
    cfg, metrics = facts.config, facts.metrics
    train_slice = (f"the first {cfg['train_limit']:,} sentences of its training split"
                   if cfg["train_limit"] else "its whole training split")
    eval_slice = (f"the first {cfg['eval_limit']:,} sentences of devel and of test"
                  if cfg["eval_limit"] else "the whole devel and test splits")
    return [(f"- Corpus: `{Path(cfg['dataset']).name}`, entity types "
            f"{', '.join(entity_types(facts.labels))}, BIO tags."),
            (f"- Trained on {train_slice}; devel and test scores on {eval_slice} "
            f"({facts.test_sentences:,} test sentences)."),
            (f"- {cfg['epochs']} epochs of batches of {cfg['batch_size']} windows of at most "
            f"{cfg['max_length']} subwords, {metrics['steps']:,} steps, peak learning rate "
            f"{metrics['lr']:g}, {metrics['precision']}, seed {cfg['seed']}; the best devel "
            f"epoch ({metrics['best_epoch']}) was kept and test scored once with it.")]


def usage_lines(folder_name: str) -> list[str]:
    return ["```python",
            "from transformers import pipeline",
            (f'tagger = pipeline("token-classification", model="{folder_name}", '
            f'aggregation_strategy="first")'),
            'tagger("Cocaine - induced myocardial infarction .")  # one sentence per call',
            "```", "",
            ("Give it one sentence at a time, its tokens separated by spaces as the corpus cut "
            "them: every run of letters and digits is a token, and every other character one "
            "of its own (`\" \".join(re.findall(r\"\\w+|[^\\w\\s]\", sentence))`). BERT cuts "
            "plain English text the same way by itself, but not a symbol beyond ASCII (`10°C` "
            "stays one word). Each entity comes with `start` and `end` character offsets into "
            "the text; take its text from them, since `word` is the tokenizer's normalised "
            "form.")]


def limit_lines(facts: RunFacts) -> list[str]:
    cfg = facts.config
    return [(f"- Anything but the {facts.test_sentences:,} test sentences of "
            f"`{Path(cfg['dataset']).name}` above: not other corpora or entity types, "
            f"full-text articles, clinical notes or other languages."),
            (f"- Sentences longer than {cfg['max_length']} subwords: the run tagged them in "
            f"windows of that length, the pipeline reads them whole up to the tokenizer's "
            f"`model_max_length` and truncates beyond it."),
            ("- Text whose accents are written as separate combining characters: normalise it "
            "to NFC first (`unicodedata.normalize(\"NFC\", text)`), or the pipeline may take "
            "a word for the continuation of the one before."),
            (f"- Other seeds or settings: this is one run"
            f"{' of the sweep above' * (facts.sweep is not None)}.")]


def model_card(facts: RunFacts, folder_name: str) -> str:
    """README.md of the exported folder; `folder_name` is how the loading lines name it."""
    fields = header(facts)
    lines = ["---", yaml.safe_dump(fields, sort_keys=False, allow_unicode=True).rstrip(), "---",
             "", *introduction(facts, fields), "",
             "## Method", "", *method_lines(facts), "",
             "## Data and budget", "", *data_lines(facts), "",
             "## Scores", "",
             ("Entity level, micro (seqeval's default definition): a mention counts when its "
             "type and both its ends are right."), "", *scores_table(facts.metrics), ""]
    if facts.sweep is not None:
        lines += ["## In its sweep", "", *sweep_lines(facts.sweep), ""]
    lines += ["## How to use", "", *usage_lines(folder_name), "",
              "## What it was not tested on", "", *limit_lines(facts), ""]
    return "\n".join(lines)
