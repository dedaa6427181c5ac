"""The sweep's table: one row per experiment, from the records its runs left.

`write_summary` rebuilds every summary file from the records on disk (results.jsonl,
summary.md, summary.csv, pareto.png, curves.png), so a crash loses no finished run and never
shows a stale one; compare.py calls it after every run.

The table is honest about the protocol: each gridded experiment's combination with the best
mean devel F1 is marked (test figures are shown for every combination but never choose), and
every experiment's ΔF1 against the baseline comes with a paired bootstrap interval and p-value
over the test sentences (significance.py), for the rows scored on the baseline's test set: the
same sentences with the same gold (a digest each run records). A sweep over several corpora
names a baseline per test set, and each row is compared with the one that shares its test
sentences. Each row names its test corpus;
a row tested on another corpus than it trained on (`test_dataset`) says in a footnote which
predicted types were dropped and which gold types its model lacked. `COLUMNS` says what each
renderer shows: the terminal's table stays narrow, summary.md has every column, summary.csv
every figure unrounded.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import config
import data
from comparison import significance, sweep
from runs import scoring
from runs.config_files import grid_groups
from runs.folders import run_dir, write_atomic

# ---------------------------------------------------------------------------------------------
# Rows


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean, and the sample std (None for one value: there is no spread to report)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


@functools.cache
def predicted_counts(path: str, mtime_ns: int):
    """(S, 3) entity counts of one run's test predictions; the table is rebuilt after every run,
    so each file is read once (a rewritten file has a new mtime)."""
    return scoring.sentence_counts(*significance.read_predictions(path))


def test_counts(runs: list[dict]) -> list:
    """Per-run (S, 3) entity counts of the test predictions, in seed order."""
    paths = [Path(r["run_dir"]) / "predictions.txt" for r in sorted(runs, key=lambda r: r["seed"])]
    return [predicted_counts(str(p), p.stat().st_mtime_ns) for p in paths]


def summarise(configs: list[config.Config], finished: dict[str, list[dict]],
              failures: dict[str, list[str]], settings: config.SweepSettings) -> list[dict]:
    """One row per experiment with a finished or failed run, in config order."""
    rows = []
    for cfg in configs:
        runs = finished.get(cfg.name, [])
        row = {"experiment": cfg.name, "method": cfg.method, "lr": cfg.lr, "runs": len(runs),
               "dataset": cfg.dataset, "test_corpus": data.test_corpus_name(cfg),
               "cross_corpus": data.is_cross_corpus(cfg), "dropped_types": [], "missed_types": [],
               "test_set": None, "failed": failures.get(cfg.name, []),
               "selected_on_devel": False, "is_baseline": False, "pairs": None,
               "delta_f1": None, "delta_ci_low": None, "delta_ci_high": None, "p_value": None}
        if not runs and not row["failed"]:
            continue
        if runs:
            f1, f1_std = mean_std([r["test"]["f1"] for r in runs])
            types = sorted({t for r in runs for t in r["test"]["per_type"]})
            row.update({
                "f1": f1, "f1_std": f1_std,
                "devel_f1": mean_std([r["devel"]["f1"] for r in runs])[0],
                "precision": mean_std([r["test"]["precision"] for r in runs])[0],
                "recall": mean_std([r["test"]["recall"] for r in runs])[0],
                "per_type_f1": {t: mean_std([r["test"]["per_type"].get(t, {}).get("f1", 0.0)
                                             for r in runs])[0] for t in types},
                "trainable_params": runs[0]["trainable_params"],
                "trainable_percent": 100 * runs[0]["trainable_params"] / runs[0]["total_params"],
                "setup_seconds": mean_std([r["setup_seconds"] for r in runs])[0],
                "train_seconds": mean_std([r["train_seconds"] for r in runs])[0],
                "tokens_per_second": mean_std([r["tokens_per_second"] for r in runs])[0],
                "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
                "memory_above_baseline_mb": max(r["peak_memory_mb"] - r["memory_baseline_mb"]
                                                for r in runs),
                "peak_memory_measure": runs[0]["peak_memory_measure"],
                "dropped_types": runs[0].get("dropped_types", []),
                "missed_types": runs[0].get("missed_types", []),
                # one test set per experiment: its seeds read the same corpus
                "test_set": runs[0].get("test_set")})
        rows.append(row)
    by_name = {r["experiment"]: r for r in rows}
    for members in grid_groups(configs).values():  # the devel choice; test never takes part
        scored = [by_name[m] for m in members if m in by_name and by_name[m]["runs"]]
        if scored:
            max(scored, key=lambda r: r["devel_f1"])["selected_on_devel"] = True
    groups = grid_groups(configs)
    baselines = [next((m for m in groups[name] if m in by_name and
                       by_name[m]["selected_on_devel"]), groups[name][0])
                 if name in groups else name  # a grid's name: its devel choice
                 for name in settings.baseline or [configs[0].name]]
    finished_baselines = [b for b in baselines if finished.get(b)]
    for row in rows:
        # the baseline scored on this row's test sentences and gold, if any
        baseline = next((b for b in finished_baselines if row["runs"] and row["test_set"]
                         is not None and row["test_set"] == by_name[b]["test_set"]), None)
        row["baseline"] = baseline or baselines[0]
        row["is_baseline"] = row["experiment"] in baselines
        # scored on a baseline's test set (the same sentences and gold), or on another
        row["own_test_set"] = bool(finished_baselines) and baseline is None
        if baseline is None:
            continue  # scored on other sentences or other gold: nothing to pair
        test = significance.paired_bootstrap(test_counts(finished[row["experiment"]]),
                                             test_counts(finished[baseline]),
                                             settings.bootstrap_resamples,
                                             settings.bootstrap_seed)
        row.update(delta_f1=test["delta"], delta_ci_low=test["ci_low"],
                   delta_ci_high=test["ci_high"], p_value=test["p_value"], pairs=test["pairs"])
    return rows


# ---------------------------------------------------------------------------------------------
# Columns and renderers


def signed(x: float) -> str:
    return f"{x:+.4f}"


@dataclass
class Column:
    header: str
    cell: Callable[[dict], str]
    # in the terminal's table, which must stay narrow; or a test of the rows (shown when the
    # rows differ in it)
    terminal: bool | Callable[[list[dict]], bool] = True
    file: bool = True  # in summary.md


def _f1(row: dict) -> str:
    if not row["runs"]:
        return "failed"
    return f"{row['f1']:.4f}" + (f" ± {row['f1_std']:.4f}" if row["f1_std"] is not None
                                  else " ± –")


def _delta(row: dict) -> str:
    if row["is_baseline"] and row["runs"]:
        return "baseline"
    if row["delta_f1"] is None:
        return "–"
    mark = " †" if row["p_value"] < significance.ALPHA else ""
    one_seed = " ¹" if row["pairs"] == 1 else ""
    return (f"{signed(row['delta_f1'])} [{signed(row['delta_ci_low'])}, "
            f"{signed(row['delta_ci_high'])}]{mark}{one_seed}")


def _p(row: dict) -> str:
    if row["is_baseline"] or row["p_value"] is None:
        return "–"
    return "<0.001" if row["p_value"] < 0.001 else f"{row['p_value']:.3f}"


def _tested_apart(row: dict) -> bool:
    """Whether the row was tested on another corpus than it trained on, or its model lacked
    types of the test corpus (a footnote says which)."""
    return bool(row["cross_corpus"] or row["dropped_types"] or row["missed_types"])


def _runs(row: dict) -> str:
    return str(row["runs"]) + (f" ({len(row['failed'])} failed)" if row["failed"] else "")


def _when(text: Callable[[dict], str]) -> Callable[[dict], str]:
    """A cell that only finished runs can fill."""
    return lambda row: text(row) if row["runs"] else ""


COLUMNS = [
    Column("experiment", lambda r: r["experiment"] + (" *" if r["selected_on_devel"] else "")),
    Column("method", lambda r: r["method"], terminal=False),
    Column("test corpus", lambda r: r["test_corpus"] + (" ‡" if _tested_apart(r) else ""),
           terminal=lambda rows: len({r["test_corpus"] for r in rows}) > 1 or
           any(r["cross_corpus"] for r in rows)),
    Column("lr", lambda r: f"{r['lr']:g}"),
    Column("runs", _runs),
    Column("test F1 (mean ± std)", _f1),
    Column("ΔF1 [95% CI]", _delta),
    Column("p", _p),
    Column("devel F1", _when(lambda r: f"{r['devel_f1']:.4f}")),
    Column("P", _when(lambda r: f"{r['precision']:.4f}"), terminal=False),
    Column("R", _when(lambda r: f"{r['recall']:.4f}"), terminal=False),
    Column("trainable params", _when(lambda r: (
        f"{r['trainable_params']:,} ({r['trainable_percent']:.2f}%)")), terminal=False),
    Column("params", _when(lambda r: f"{r['trainable_params']:,}"), file=False),
    Column("setup s", _when(lambda r: f"{r['setup_seconds']:.0f}"),
           terminal=False),
    Column("train s", _when(lambda r: f"{r['train_seconds']:.0f}"),
           terminal=False),
    Column("tokens/s", _when(lambda r: f"{r['tokens_per_second']:.0f}"), terminal=False),
    Column("peak MB", _when(lambda r: (
        f"{r['peak_memory_mb']:.0f} "
        f"{'CUDA' if r['peak_memory_measure'] == 'cuda_max_allocated' else 'RSS'}"))),
]
CSV_FIELDS = ["experiment", "method", "lr", "runs", "dataset", "test_corpus", "dropped_types",
              "missed_types", "f1", "f1_std", "devel_f1",
              "delta_f1", "delta_ci_low", "delta_ci_high", "p_value", "pairs",
              "selected_on_devel", "precision",
              "recall", "trainable_params", "trainable_percent", "setup_seconds",
              "train_seconds", "tokens_per_second", "peak_memory_mb", "memory_above_baseline_mb",
              "peak_memory_measure",
              "baseline", "failed"]


def footnotes(rows: list[dict]) -> list[str]:
    notes = []
    baselines = list(dict.fromkeys(r["baseline"] for r in rows))
    if len(baselines) == 1:
        notes.append(f"ΔF1: mean test F1 minus the baseline's ({baselines[0]}), seeds "
                     f"paired, 95% paired bootstrap interval over test sentences; † p < 0.05, "
                     f"exactly when the interval excludes 0; – scored on other test sentences "
                     f"or gold than the baseline's: nothing to pair.")
    elif baselines:
        notes.append(f"ΔF1: mean test F1 minus that of the baseline scored on the same test "
                     f"sentences ({', '.join(baselines)}), seeds paired, 95% paired bootstrap "
                     f"interval over test sentences; † p < 0.05, exactly when the interval "
                     f"excludes 0; – scored on other test sentences or gold than every "
                     f"baseline's: nothing to pair.")
    if any(r["pairs"] == 1 for r in rows):
        notes.append("¹ one seed a side: the interval covers the choice of test sentences only, "
                     "not the seed, so † says nothing about another seed; run 3 seeds before "
                     "claiming a difference.")
    if any(r["selected_on_devel"] for r in rows):
        notes.append("*: the combination of its grid with the best mean devel F1 (test F1 "
                     "never chooses).")
    for row in rows:
        if row["runs"] and _tested_apart(row):
            said = []
            if row["dropped_types"]:
                said.append(f"its predicted {', '.join(row['dropped_types'])} dropped before "
                            f"scoring ({row['test_corpus']} does not annotate them)")
            if row["missed_types"]:
                said.append(f"{', '.join(row['missed_types'])} of {row['test_corpus']} unknown "
                            f"to the model, counted as missed")
            trained = f"trained on {row['dataset']}, " if row["cross_corpus"] else ""
            notes.append(f"‡ {row['experiment']}: {trained}tested on {row['test_corpus']}"
                         + "".join(f"; {part}" for part in said) + ".")
    for row in rows:
        for failure in row["failed"]:
            notes.append(f"failed: {row['experiment']} {failure}")
    return notes


def text_table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    head = "| " + " | ".join(c.ljust(w) for c, w in zip(header, widths)) + " |"
    return "\n".join([rule, head, rule] + body + [rule])


def per_type_lines(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Experiments × entity types: test F1 per type (own table: many types would make the main
    one unreadably wide)."""
    types = sorted({t for r in rows if r["runs"] for t in r["per_type_f1"]})
    lines = [[r["experiment"]] + [f"{r['per_type_f1'][t]:.3f}" if t in r["per_type_f1"] else "–"
                                  for t in types] for r in rows if r["runs"]]
    return ["experiment"] + types, lines


def ascii_table(rows: list[dict]) -> str:
    shown = [c for c in COLUMNS if (c.terminal(rows) if callable(c.terminal) else c.terminal)]
    main = text_table([c.header for c in shown], [[c.cell(r) for c in shown] for r in rows])
    header, lines = per_type_lines(rows)
    per_type = text_table(header, lines) if len(header) > 1 else ""
    return "\n".join([main] + footnotes(rows) + ["", "test F1 per entity type", per_type]
                     if per_type else [main] + footnotes(rows))


def markdown_table(rows: list[dict], plots: list[Path]) -> str:
    def table(header, lines):
        return "\n".join("| " + " | ".join(line) + " |"
                         for line in [header, ["---"] * len(header)] + lines)

    shown = [c for c in COLUMNS if c.file]
    main = table([c.header for c in shown], [[c.cell(r) for c in shown] for r in rows])
    parts = [main, ""] + [f"{note}  " for note in footnotes(rows)]
    header, lines = per_type_lines(rows)
    if len(header) > 1:
        parts += ["", "Test F1 per entity type:", "", table(header, lines)]
    parts += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(parts) + "\n"


def csv_table(rows: list[dict]) -> str:
    types = sorted({t for r in rows if r["runs"] for t in r["per_type_f1"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIELDS + [f"f1_{t}" for t in types])
    for row in rows:
        values = {**row, **{key: "; ".join(row.get(key) or [])
                            for key in ("failed", "dropped_types", "missed_types")}}
        writer.writerow([values.get(c, "") if values.get(c) is not None else ""
                         for c in CSV_FIELDS] +
                        [row.get("per_type_f1", {}).get(t, "") for t in types])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# From the records to the files


def collect(runs: list[sweep.Run]) -> tuple[dict, dict, list[dict]]:
    """From the records on disk: finished metrics and failure reasons per experiment, and the
    lines of results.jsonl."""
    finished: dict[str, list[dict]] = {}
    failures: dict[str, list[str]] = {}
    lines = []
    for run in runs:
        record = sweep.read_record(run)
        if record is None:
            continue
        if record["status"] == "ok":
            metrics = {**record["metrics"], "run_dir": str(run_dir(run.cfg))}
            finished.setdefault(run.cfg.name, []).append(metrics)
            lines.append({"status": "ok", "config": dataclasses.asdict(run.cfg),
                          **record["metrics"]})
        else:
            failures.setdefault(run.cfg.name, []).append(
                f"seed {run.cfg.seed}: {record['reason']}")
            lines.append({"status": "failed", "name": run.cfg.name, "seed": run.cfg.seed,
                          "reason": record["reason"]})
    return finished, failures, lines


def plotted(rows: list[dict], configs) -> list[dict]:
    """The rows the figures draw: every finished experiment, a grid by its devel choice alone
    (the table keeps every grid point; a figure of them all buries the comparison)."""
    gridded = {name for members in grid_groups(configs).values() for name in members}
    return [r for r in rows if r["runs"] and (r["experiment"] not in gridded
                                              or r["selected_on_devel"])]


def write_summary(configs, runs, settings) -> tuple[list[dict], list[Path]]:
    """Rebuild every summary file from the records: results.jsonl, summary.md/.csv, plots. The
    table's rows, and the files written."""
    output_dir = Path(configs[0].output_dir)
    finished, failures, lines = collect(runs)
    rows = summarise(configs, finished, failures, settings)
    write_atomic(output_dir / "results.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    plots = []
    if finished:
        from comparison import plots as plotting

        shown = plotted(rows, configs)
        curves = {r["experiment"]: [run["devel_f1_per_epoch"] for run in
                                    sorted(finished[r["experiment"]], key=lambda run: run["seed"])]
                  for r in shown}
        plots = plotting.write_plots(output_dir, shown, curves)
    write_atomic(output_dir / "summary.md", markdown_table(rows, plots))
    write_atomic(output_dir / "summary.csv", csv_table(rows))
    return rows, [output_dir / name for name in ("summary.md", "summary.csv", "results.jsonl")
                  ] + plots


