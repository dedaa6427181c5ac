"""report.py's table: grids chosen on devel, paired significance, --only, files, --help."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_sweep import table, write_sweep

import compare
import config
from comparison import report
from runs import config_files


def test_sweep_writes_table_and_files_then_resumes(tmp_path, tiny_encoder, tiny_corpus, capsys):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus,
                       "  - {name: full-a, repeats: 2}\n  - {name: full-b, lr: 3e-3}\n")
    assert compare.main([str(path)]) == 0
    printed = capsys.readouterr().out
    assert "Summary" in printed and "test F1 (mean ± std)" in printed
    out = tmp_path / "out"
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["name"], r["seed"], r["status"]) for r in results] == [
        ("full-a", 3, "ok"), ("full-a", 4, "ok"), ("full-b", 3, "ok")]
    assert results[2]["config"]["lr"] == 3e-3
    rows = table(tmp_path)
    assert [r["experiment"] for r in rows] == ["full-a", "full-b"]
    assert rows[0]["runs"] == "2" and rows[1]["runs"] == "1"
    assert float(rows[0]["f1"]) == pytest.approx(sum(r["test"]["f1"] for r in results[:2]) / 2)
    assert rows[1]["f1_std"] == ""  # one seed: no spread
    assert {"f1_Chemical", "f1_Disease", "devel_f1", "delta_f1", "delta_ci_low",
            "delta_ci_high", "p_value", "selected_on_devel", "lr"} <= set(rows[0])
    markdown = (out / "summary.md").read_text()
    assert "| full-b |" in markdown and "0.003" in markdown and "± –" in markdown
    assert "![pareto](pareto.png)" in markdown and (out / "pareto.png").exists()
    assert "test F1 per entity type" in printed

    # Rerunning trains nothing; more repeats train only the new seeds.
    assert compare.main([str(path)]) == 0
    assert capsys.readouterr().out.count("already finished") == 3
    assert compare.main([str(path), "--only=full-b", "--repeats=2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already finished") == 1
    # --only keeps the other experiments' rows in the table.
    assert [(r["experiment"], r["runs"]) for r in table(tmp_path)] == [("full-a", "2"),
                                                                       ("full-b", "2")]


def test_baseline_delta_is_zero_for_itself_and_paired_for_others(tmp_path, tiny_encoder,
                                                                 tiny_corpus):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus,
                       "  - {name: a}\n  - {name: same}\n  - {name: other, lr: 2e-2}\n",
                       top="repeats: 2\nbaseline: a\nbootstrap_resamples: 200\n")
    assert compare.main([str(path)]) == 0
    rows = {r["experiment"]: r for r in table(tmp_path)}
    for name in ("a", "same"):  # `same` is the same config: the same runs, bit for bit
        assert (float(rows[name]["delta_f1"]), float(rows[name]["delta_ci_low"]),
                float(rows[name]["delta_ci_high"]), float(rows[name]["p_value"])) == (0, 0, 0, 1)
    other = rows["other"]
    assert float(other["delta_f1"]) == pytest.approx(float(other["f1"]) - float(rows["a"]["f1"]))
    assert float(other["delta_ci_low"]) <= float(other["delta_f1"]) <= \
        float(other["delta_ci_high"])
    assert all(r["baseline"] == "a" for r in rows.values())


def test_grid_marks_the_best_devel_combination_and_never_uses_test(tmp_path):
    configs = [config_files.make_config({"name": f"lora[lr={lr}]", "grid": {"lr": [1e-3, 2e-3]},
                                         "lr": lr}) for lr in (0.001, 0.002)]

    def run(name, devel, test):
        return {"name": name, "seed": 1, "test": {"f1": test, "precision": 0, "recall": 0,
                                                  "per_type": {}},
                "devel": {"f1": devel}, "trainable_params": 1, "total_params": 1,
                "setup_seconds": 0, "train_seconds": 1, "tokens_per_second": 1,
                "peak_memory_mb": 1, "memory_baseline_mb": 0.5,
                "peak_memory_measure": "cpu_peak_rss"}

    # The first combination is better on devel, the second on test: devel decides.
    finished = {"lora[lr=0.001]": [run("lora[lr=0.001]", 0.9, 0.1)],
                "lora[lr=0.002]": [run("lora[lr=0.002]", 0.5, 0.95)]}
    settings = config.SweepSettings(baseline=["nothing-finished"])
    rows = report.summarise(list(configs), finished, {}, settings)
    assert [r["selected_on_devel"] for r in rows] == [True, False]
    assert "lora[lr=0.001] *" in report.ascii_table(rows)
    # The figures draw the grid by its devel choice alone.
    assert [r["experiment"] for r in report.plotted(rows, configs)] == ["lora[lr=0.001]"]


def test_terminal_table_stays_narrow_with_many_types():
    types = {f"Type{i}": 0.5 for i in range(16)}
    row = {"experiment": "lora-r16-crf", "method": "lora", "lr": 2e-3, "runs": 3, "failed": [],
           "f1": 0.8, "f1_std": 0.01, "devel_f1": 0.81, "precision": 0.8, "recall": 0.8,
           "per_type_f1": types, "trainable_params": 296_837, "trainable_percent": 1.3,
           "setup_seconds": 3, "train_seconds": 100, "tokens_per_second": 2000,
           "peak_memory_mb": 900, "peak_memory_measure": "cpu_peak_rss", "selected_on_devel": False,
           "delta_f1": 0.01, "delta_ci_low": -0.002, "delta_ci_high": 0.02, "p_value": 0.04,
           "baseline": "full", "is_baseline": False, "pairs": 3, "test_corpus": "bc5cdr",
           "dataset": "bc5cdr", "cross_corpus": False, "dropped_types": [], "missed_types": []}
    text = report.ascii_table([row])
    main = text.split("\n\n")[0]
    assert max(len(line) for line in main.splitlines() if line.startswith(("|", "+"))) <= 150
    assert "Type15" in text and "Type15" not in main and "†" in main


def test_help_prints_every_key(capsys):
    assert compare.main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert "--parallel" in printed and "--shard" in printed
    assert all(f"  {key} (default" in printed for key in config.Config.__dataclass_fields__)


def test_one_seed_std_shows_as_a_dash():
    assert report.mean_std([0.5]) == (0.5, None)
    assert report.mean_std([0.4, 0.6])[1] == pytest.approx(np.std([0.4, 0.6], ddof=1))


def test_csv_has_the_protocol_columns():
    header = next(csv.reader([report.csv_table([]).strip()]))
    assert {"devel_f1", "delta_f1", "delta_ci_low", "delta_ci_high", "p_value",
            "selected_on_devel"} <= set(header)


# ------------------------------------------------------------------ cells that say what they mean


def cell_row(**values) -> dict:
    base = {"experiment": "x", "runs": 3, "is_baseline": False, "pairs": 3, "p_value": 0.0004,
            "delta_f1": 0.02, "delta_ci_low": 0.01, "delta_ci_high": 0.03,
            "selected_on_devel": False, "baseline": "full", "failed": [], "test_corpus": "c",
            "dataset": "c", "cross_corpus": False, "dropped_types": [], "missed_types": []}
    return {**base, **values}


def test_the_baseline_row_says_baseline_and_small_p_values_are_bounds():
    assert report._delta(cell_row(is_baseline=True)) == "baseline"
    assert report._p(cell_row(is_baseline=True)) == "–"
    assert report._p(cell_row()) == "<0.001"
    assert report._p(cell_row(p_value=0.0312)) == "0.031"
    assert report._delta(cell_row()) == "+0.0200 [+0.0100, +0.0300] †"
    assert report._delta(cell_row(p_value=0.05, delta_ci_low=-0.001)).endswith("]")  # no †


def test_a_one_seed_comparison_is_flagged_and_explained():
    rows = [cell_row(experiment="full", is_baseline=True), cell_row(pairs=1)]
    assert report._delta(rows[1]).endswith("† ¹")
    notes = report.footnotes(rows)
    assert any(note.startswith("¹ one seed a side") for note in notes)
    assert not any(note.startswith("¹") for note in report.footnotes(rows[:1] + [cell_row()]))


def test_only_takes_a_grids_name_and_an_unknown_name_lists_the_experiments(
        tmp_path, tiny_encoder, tiny_corpus, capsys):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus,
                       "  - {name: a}\n  - {name: l, method: lora, grid: {lr: [1e-3, 2e-3]}}\n")
    assert compare.main([str(path), "--dry-run", "--only=l"]) == 0
    printed = capsys.readouterr().out
    assert "l[lr=0.001]" in printed and "l[lr=0.002]" in printed and "| a " not in printed
    assert compare.main([str(path), "--only=lora"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "unknown experiments ['lora']" in line and "a, l, l[lr=0.001], l[lr=0.002]" in line


def test_each_config_writes_to_its_own_folder_and_a_sweep_refuses_anothers(
        tmp_path, tiny_encoder, tiny_corpus, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = f"model: {tiny_encoder}\ndataset: {tiny_corpus}\ngpu: -1\nepochs: 1\nrepeats: 1\n"
    (tmp_path / "first.yml").write_text(text + "experiments:\n  - {name: a}\n")
    (tmp_path / "second.yml").write_text(text + "experiments:\n  - {name: a, lr: 2e-3}\n")
    [cfg] = config_files.experiment_configs(tmp_path / "first.yml")
    assert cfg.output_dir == "outputs/first"  # a config that names no folder gets its own
    assert compare.main([str(tmp_path / "first.yml")]) == 0
    assert compare.main([str(tmp_path / "second.yml"), "--output_dir=outputs/first"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "output_dir outputs/first holds the runs of another sweep" in line
    assert str(tmp_path / "first.yml") in line
    assert compare.main([str(tmp_path / "second.yml"), "--dry-run"]) == 0  # its own: fine


# ------------------------------------------------------------------ test sets and corpora


def finished_run(folder, name: str, test_set: str, f1: float) -> dict:
    """A finished run's metrics whose predictions.txt scores 1 of 2 sentences right."""
    folder.mkdir(parents=True)
    (folder / "predictions.txt").write_text("aspirin B-Chemical B-Chemical\n\n"
                                            "fever B-Disease O\n")
    return {"name": name, "seed": 1, "run_dir": str(folder), "test_set": test_set,
            "test": {"f1": f1, "precision": 0, "recall": 0, "per_type": {}},
            "devel": {"f1": 0.5}, "trainable_params": 1, "total_params": 1, "setup_seconds": 0,
            "train_seconds": 1, "tokens_per_second": 1, "peak_memory_mb": 1,
            "memory_baseline_mb": 0.5, "peak_memory_measure": "cpu_peak_rss",
            "devel_f1_per_epoch": [0.5]}


def test_rows_pair_only_when_scored_on_the_same_test_set(tmp_path):
    """Equal gold entity counts are not the same test set: the recorded digest of the test
    sentences and gold decides."""
    configs = [config.Config(name=n) for n in ("base", "same", "other")]
    finished = {"base": [finished_run(tmp_path / "base", "base", "aaaa", 0.6)],
                "same": [finished_run(tmp_path / "same", "same", "aaaa", 0.6)],
                "other": [finished_run(tmp_path / "other", "other", "bbbb", 0.6)]}
    rows = {r["experiment"]: r for r in report.summarise(
        configs, finished, {}, config.SweepSettings(bootstrap_resamples=50))}
    assert rows["same"]["delta_f1"] == 0.0 and rows["same"]["pairs"] == 1
    assert rows["other"]["delta_f1"] is None and report._delta(rows["other"]) == "–"


def test_rows_pair_with_the_baseline_of_their_test_sentences_across_corpora(tmp_path,
                                                                           tiny_encoder):
    """Trained on Chemical and Disease, tested on a corpus of Disease and Gene: its Chemical
    predictions are dropped, Gene counts as missed, and the row pairs with the baseline trained
    on that corpus, which was scored on the same test sentences. `baseline: [a list]` gives each
    test set its own baseline; a row whose test set has none gets no ΔF1."""
    from conftest import write_corpus
    from test_data import gene_corpus

    own, other = write_corpus(tmp_path / "own"), gene_corpus(tmp_path / "other")
    path = write_sweep(tmp_path, tiny_encoder, other,
                       f"  - {{name: in-corpus}}\n"
                       f"  - {{name: cross, dataset: {own}, test_dataset: {other}}}\n"
                       f"  - {{name: elsewhere, dataset: {own}}}\n"
                       f"  - {{name: elsewhere-lr, dataset: {own}, lr: 3e-3}}\n",
                       top="baseline: [in-corpus, elsewhere]\n")
    assert compare.main([str(path)]) == 0
    rows = {r["experiment"]: r for r in table(tmp_path)}
    assert {name: row["baseline"] for name, row in rows.items()} == {
        "in-corpus": "in-corpus", "cross": "in-corpus", "elsewhere": "elsewhere",
        "elsewhere-lr": "elsewhere"}
    assert (rows["cross"]["dataset"], rows["cross"]["test_corpus"]) == (str(own), str(other))
    assert (rows["cross"]["dropped_types"], rows["cross"]["missed_types"]) == ("Chemical", "Gene")
    assert rows["cross"]["delta_f1"] != "" and rows["elsewhere-lr"]["delta_f1"] != ""
    assert rows["elsewhere"]["delta_f1"] == "0.0"  # each baseline against itself
    predicted = (tmp_path / "out" / "cross" / "seed3" / "predictions.txt").read_text()
    assert "Chemical" not in predicted and "B-Gene" in predicted  # dropped; gold kept, missed
    metrics = json.loads((tmp_path / "out" / "cross" / "seed3" / "metrics.json").read_text())
    assert metrics["test"]["per_type"]["Gene"]["recall"] == 0.0
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert f"| cross | full | {other} ‡ |" in markdown
    assert (f"‡ cross: trained on {own}, tested on {other}; its predicted Chemical dropped "
            f"before scoring ({other} does not annotate them); Gene of {other} unknown to the "
            f"model, counted as missed.") in markdown
    assert "the baseline scored on the same test sentences (in-corpus, elsewhere)" in markdown

    # One baseline: the rows tested on `own` have nothing to pair with.
    assert compare.main([str(path), "--report", "--baseline=in-corpus"]) == 0
    rows = {r["experiment"]: r for r in table(tmp_path)}
    assert rows["elsewhere"]["delta_f1"] == "" and rows["elsewhere-lr"]["delta_f1"] == ""
    assert compare.main([str(path), "--baseline=[in-corpus, nowhere]"]) == 2
