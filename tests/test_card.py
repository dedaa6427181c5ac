"""formats/card.py: the model card in the hub's form, every figure read from the run's files and
its sweep's summary.csv (as comparison/report.py writes it), none typed in."""

from __future__ import annotations

import yaml

from comparison import report
from formats import card

LABELS = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]


def scores(f1: float, chemical: float, disease: float) -> dict:
    return {"precision": f1 - 0.0111, "recall": f1 + 0.0111, "f1": f1,
            "per_type": {"Chemical": {"f1": chemical, "support": 1234},
                         "Disease": {"f1": disease, "support": 987}}}


def facts(model: str = "dmis-lab/biobert-base-cased-v1.2", base: dict | None = None,
          sweep: dict | None = None) -> card.RunFacts:
    config = {"name": "lora-r16", "method": "lora", "model": model, "dataset": "data/bc5cdr",
              "seed": 43, "train_limit": 1000, "eval_limit": 0, "epochs": 3, "batch_size": 32,
              "max_length": 128, "dropout": 0.1}
    metrics = {"test": scores(0.6789, 0.7654, 0.5432), "devel": scores(0.6543, 0.7321, 0.5123),
               "trainable_params": 296837, "total_params": 22862213, "steps": 96,
               "lr": 0.004, "precision": "fp32", "best_epoch": 3}
    return card.RunFacts(config=config, metrics=metrics, labels=LABELS,
                         trains="low-rank adapters on the target linears, and the head",
                         settings={"rank": 16, "targets": ["query", "value"], "dora": False},
                         test_sentences=4797, exported_params=22567301,
                         base=base if base is not None else {}, sweep=sweep)


def header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_header_is_the_hubs_form():
    fields = header(card.model_card(facts(), "tagger"))
    assert fields["license"] == "unknown"
    assert fields["base_model"] == "dmis-lab/biobert-base-cased-v1.2"
    assert fields["datasets"] == ["bc5cdr"]
    assert fields["library_name"] == "transformers"
    assert fields["pipeline_tag"] == "token-classification"
    (result,) = fields["model-index"][0]["results"]
    assert fields["model-index"][0]["name"] == "lora-r16"
    assert result["task"]["type"] == "token-classification"
    assert result["dataset"]["split"] == "test"
    assert {m["type"]: m["value"] for m in result["metrics"]} == \
        {"f1": 0.6789, "precision": 0.6678, "recall": 0.69}


def test_every_figure_of_the_text_is_the_runs():
    text = card.model_card(facts(), "out/tagger")
    for figure in ("296,837 of 22,862,213 (1.30%)", "22,567,301", "first 1,000 sentences",
                   "the whole devel and test splits", "4,797 test sentences", "3 epochs",
                   "96 steps", "rate 0.004", "seed 43", "epoch (3)", "dropout 0.1",
                   "| devel | 0.6432 | 0.6654 | 0.6543 |", "| test | 0.6678 | 0.6900 | 0.6789 |",
                   "| Chemical | 0.7321 | 0.7654 | 1,234 |", "| Disease | 0.5123 | 0.5432 | 987 |",
                   "(rank: 16, targets: [query, value], dora: false)",
                   'model="out/tagger"', "longer than 128 subwords",
                   "a Chemical and Disease tagger (bc5cdr)"):
        assert figure in text, figure
    assert "## In its sweep" not in text


def test_base_model_and_licence_come_from_the_base_models_card(tmp_path):
    base = tmp_path / "encoder"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# MiniLM\n")
    found = card.front_matter(base / "README.md")
    assert found == {"license": "apache-2.0", "language": "en"}
    text = card.model_card(facts(model=str(base), base=found), "tagger")
    fields = header(text)
    assert fields["license"] == "apache-2.0" and "base_model" not in fields
    assert "not a hub id" in text and "from the base model's card" in text
    assert card.front_matter(tmp_path / "missing.md") == {}
    assert header(card.model_card(facts(base={"base_model": "a/b"}), "t"))["base_model"] == "a/b"


def summary_row(experiment: str, baseline: str, runs: int, delta: bool) -> dict:
    """A row as comparison/report.summarise gives it (the fields csv_table writes)."""
    row = {"experiment": experiment, "method": "lora", "lr": 0.004, "runs": runs,
           "dataset": "bc5cdr", "failed": [], "f1": 0.6712345, "f1_std": 0.0123456 if runs > 1
           else None, "devel_f1": 0.66, "per_type_f1": {"Chemical": 0.7, "Disease": 0.6},
           "baseline": baseline, "delta_f1": None, "delta_ci_low": None, "delta_ci_high": None,
           "p_value": None}
    if delta:
        row.update(delta_f1=-0.0487, delta_ci_low=-0.0612, delta_ci_high=-0.0354,
                   p_value=0.000999)
    return row


def test_the_sweep_row_gives_mean_std_and_delta_against_the_baseline(tmp_path):
    summary = tmp_path / "summary.csv"
    summary.write_text(report.csv_table([
        summary_row("full", "full", 3, delta=False),
        summary_row("lora-r16", "full", 3, delta=True),
        summary_row("lora-chem", "full", 1, delta=False)]))
    row = card.sweep_row(summary, "lora-r16")
    text = card.model_card(facts(sweep=row), "tagger")
    assert "## In its sweep" in text
    assert "3 seeds of `lora-r16`: test F1 0.6712 ± 0.0123 (mean ± std)" in text
    assert "baseline `full`: -0.0487 [-0.0612, -0.0354]" in text and "p = 0.000999" in text
    assert "this is one run of the sweep above" in text
    baseline = card.model_card(facts(sweep=card.sweep_row(summary, "full")), "tagger")
    assert "It is the sweep's baseline" in baseline
    alone = card.model_card(facts(sweep=card.sweep_row(summary, "lora-chem")), "tagger")
    assert "1 seed of" in alone and "(one seed: no spread)" in alone
    assert "no paired ΔF1" in alone
    assert card.sweep_row(summary, "absent") is None
    assert card.sweep_row(tmp_path / "none.csv", "lora-r16") is None
