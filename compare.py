"""The sweep: every experiment of a config, `repeats` seeds each, and one table at the end.

    python compare.py configs/bc5cdr.yml [--only=NAME,NAME] [--key=value ...]

Each run is `train.train(cfg)` in this process. After every run its metrics are appended to
`<output_dir>/results.jsonl` and the table so far is printed and written (`summary.md`,
`summary.csv`), so a crash mid-sweep loses no finished run. A run whose `metrics.json` already
exists with the same resolved config is not trained again: rerunning a sweep resumes it.
A run that fails is reported, the sweep goes on, and the exit status says so.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import traceback
from pathlib import Path

import config
import fusion
import train

# ---------------------------------------------------------------------------------------------
# Planning


def plan_runs(configs: list[config.Config]) -> list[config.Config]:
    """One config per (experiment, seed): seeds seed, seed+1, ..., seed+repeats-1."""
    return [dataclasses.replace(cfg, seed=cfg.seed + i) for cfg in configs
            for i in range(cfg.repeats)]


def source_problem(source: config.Config, cfg: config.Config) -> str | None:
    """Why `source` cannot feed the fusion experiment `cfg`, or None."""
    if source.method != "lora":
        return f"method is {source.method!r}, not 'lora'"
    if source.model != cfg.model:
        return f"model {source.model!r} differs from {cfg.model!r}"
    needed = set(range(cfg.seed, cfg.seed + cfg.repeats))
    have = set(range(source.seed, source.seed + source.repeats))
    if not needed <= have:
        return f"it runs seeds {sorted(have)}, the fusion needs {sorted(needed)}"
    return None


def order_sources_first(configs: list[config.Config]) -> list[config.Config]:
    """Check every fusion experiment's sources before anything trains, and put the experiments
    they name first, so each source adapter exists when its fusion runs."""
    by_name = {c.name: c for c in configs}
    sources = set()
    for cfg in configs:
        if cfg.method != "fusion":
            continue
        for name in cfg.adapters:
            if Path(name).is_dir():
                fusion.load_source_adapter(name)  # a saved adapter: readable now, or an error
                continue
            source = by_name.get(name)
            if source is None:
                raise config.ConfigError(
                    f"experiment {cfg.name!r}: adapter {name!r} is neither an experiment of "
                    f"this sweep ({', '.join(by_name)}) nor a run folder")
            problem = source_problem(source, cfg)
            if problem:
                raise config.ConfigError(f"experiment {cfg.name!r}: source {name!r}: {problem}")
            sources.add(name)
        targets = {tuple(by_name[n].targets) for n in cfg.adapters if n in by_name}
        if len(targets) > 1:
            raise config.ConfigError(f"experiment {cfg.name!r}: its sources adapt different "
                                    f"linears: {sorted(targets)}")
    return [c for c in configs if c.name in sources] + \
        [c for c in configs if c.name not in sources]


def finished_metrics(cfg: config.Config) -> dict | None:
    """The metrics of an earlier identical run, if it finished. `repeats` says how many runs
    a sweep makes, not what one run does, so it may differ."""
    folder = train.run_dir(cfg)
    try:
        saved = json.loads((folder / "config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if {**saved, "repeats": cfg.repeats} == dataclasses.asdict(cfg) else None


# ---------------------------------------------------------------------------------------------
# The table


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(configs: list[config.Config], results: list[dict]) -> list[dict]:
    """One row per experiment that has at least one finished run, in config order."""
    rows = []
    for cfg in configs:
        runs = [r for r in results if r["name"] == cfg.name]
        if not runs:
            continue
        f1, f1_std = mean_std([r["test"]["f1"] for r in runs])
        types = sorted({t for r in runs for t in r["test"]["per_type"]})
        row = {
            "experiment": cfg.name, "method": cfg.method, "runs": len(runs),
            "f1": f1, "f1_std": f1_std,
            "precision": mean_std([r["test"]["precision"] for r in runs])[0],
            "recall": mean_std([r["test"]["recall"] for r in runs])[0],
            "per_type_f1": {t: mean_std([r["test"]["per_type"].get(t, {}).get("f1", 0.0)
                                         for r in runs])[0] for t in types},
            "trainable_params": runs[0]["trainable_params"],
            "trainable_percent": 100 * runs[0]["trainable_params"] / runs[0]["total_params"],
            "train_seconds": mean_std([r["train_seconds"] for r in runs])[0],
            "tokens_per_second": mean_std([r["tokens_per_second"] for r in runs])[0],
            "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
            "peak_memory_kind": runs[0]["peak_memory_kind"],
        }
        rows.append(row)
    return rows


def table_cells(row: dict) -> list[str]:
    per_type = " ".join(f"{t} {f1:.3f}" for t, f1 in row["per_type_f1"].items())
    memory = "CUDA" if row["peak_memory_kind"] == "cuda_max_allocated" else "RSS"
    return [row["experiment"], row["method"], str(row["runs"]),
            f"{row['f1']:.4f} ± {row['f1_std']:.4f}", f"{row['precision']:.4f}",
            f"{row['recall']:.4f}", per_type,
            f"{row['trainable_params']:,} ({row['trainable_percent']:.2f}%)",
            f"{row['train_seconds']:.0f}", f"{row['tokens_per_second']:.0f}",
            f"{row['peak_memory_mb']:.0f} ({memory})"]


HEADER = ["experiment", "method", "runs", "test F1 (mean ± std)", "P", "R", "per-type F1",
          "trainable params", "train s", "tokens/s", "peak MB"]


def ascii_table(rows: list[dict]) -> str:
    lines = [HEADER] + [table_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    text = [rule]
    for k, line in enumerate(lines):
        text.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
        if k == 0:
            text.append(rule)
    return "\n".join(text + [rule])


def markdown_table(rows: list[dict]) -> str:
    lines = [HEADER, ["---"] * len(HEADER)] + [table_cells(r) for r in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def csv_table(rows: list[dict]) -> str:
    import csv
    import io

    types = sorted({t for r in rows for t in r["per_type_f1"]})
    columns = ["experiment", "method", "runs", "f1", "f1_std", "precision", "recall",
               "trainable_params", "trainable_percent", "train_seconds", "tokens_per_second",
               "peak_memory_mb", "peak_memory_kind"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns + [f"f1_{t}" for t in types])
    for row in rows:
        writer.writerow([row[c] for c in columns] + [row["per_type_f1"].get(t, "") for t in types])
    return buffer.getvalue()


def write_summary(output_dir: Path, rows: list[dict]) -> None:
    train.write_atomic(output_dir / "summary.md", markdown_table(rows))
    train.write_atomic(output_dir / "summary.csv", csv_table(rows))


# ---------------------------------------------------------------------------------------------
# The sweep


def compare(configs: list[config.Config]) -> tuple[list[dict], list[str]]:
    """Run every planned run; the summary rows and the names of runs that failed."""
    runs = plan_runs(order_sources_first(configs))  # a bad fusion source stops us here
    output_dir = Path(configs[0].output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    for cfg in runs:
        metrics = finished_metrics(cfg)
        if metrics is not None:
            print(f"[{cfg.name} seed {cfg.seed}] already finished: test F1 "
                  f"{metrics['test']['f1']:.4f}")
        else:
            try:
                metrics = train.train(cfg)
            except Exception:  # noqa: BLE001 - one broken run must not take the finished ones with it
                traceback.print_exc()
                failed.append(f"{cfg.name} seed {cfg.seed}")
                continue
            with (output_dir / "results.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"config": dataclasses.asdict(cfg), **metrics}) + "\n")
        results.append(metrics)
        rows = summarise(configs, results)
        write_summary(output_dir, rows)
        print(ascii_table(rows))
    return summarise(configs, results), failed


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("--"):
        sys.exit("usage: python compare.py CONFIG.yml [--only=NAME,NAME] [--key=value ...]")
    path, rest = argv[0], argv[1:]
    only = None
    for arg in list(rest):
        if arg.startswith("--only="):
            only = arg.split("=", 1)[1].split(",")
            rest.remove(arg)
    configs = config.experiment_configs(path, config.parse_overrides(rest))
    if len({c.output_dir for c in configs}) > 1:
        sys.exit(f"{path}: output_dir must be the same for every experiment of a sweep")
    if only:
        unknown = sorted(set(only) - {c.name for c in configs})
        if unknown:
            sys.exit(f"{path}: --only names unknown experiments {unknown}")
        # A chosen fusion brings its sources along (skipped if they already finished).
        only += [a for c in configs if c.name in only and c.method == "fusion" for a in c.adapters]
        configs = [c for c in configs if c.name in only]
    rows, failed = compare(configs)
    print("\nSummary\n" + ascii_table(rows))
    print(f"written: {Path(configs[0].output_dir) / 'summary.md'}, summary.csv, results.jsonl")
    if failed:
        print(f"failed runs: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
