"""Figures of a sweep: the accuracy/cost trade-off of every experiment, and its learning curves.

`write_plots(output_dir, rows, curves)` writes two PNGs next to the sweep's table:

- `pareto.png`: mean test F1 (error bars: std over seeds) against trainable parameters (log
  axis) and against the run's own peak memory, one labelled point per experiment (report.py
  passes a grid's devel choice alone). The methods
  worth keeping are the ones no other point beats on both axes. Memory is CUDA's
  max_memory_allocated on a GPU, and on the CPU the peak resident set above what the process
  held before the run loaded anything (torch and transformers, the same ~0.5 GB for every
  method, which would otherwise bury the differences). An experiment scored on a test set of
  its own (a single-type corpus) is a hollow point, its label says so: its F1 is on another
  task.
- `curves.png`: devel F1 after every epoch, the mean over seeds as a line and, with 2+ seeds,
  the min-max band around it; an experiment on a test set of its own in hollow markers and
  "(own test set)", as in `pareto.png`.

An experiment has the same colour in both figures (`colours`).

matplotlib is imported inside the functions, so importing this module costs nothing, and the
figures are drawn on a bare `Figure` with the Agg canvas: headless, and without switching the
global pyplot backend of a caller that has one (a notebook). Left out: interactive output.
"""

from __future__ import annotations

import io
from pathlib import Path

from runs.folders import write_bytes_atomic


def write_plots(output_dir: Path, rows: list[dict], curves: dict[str, list[list[float]]]
                ) -> list[Path]:
    """Write `pareto.png` and `curves.png` into `output_dir`; the paths written.

    rows: one dict per experiment with `experiment`, `f1` (mean test F1), `f1_std` (None or 0
    with one seed), `trainable_params` and `memory_above_baseline_mb` (`peak_memory_measure`
    and `own_test_set` optional).
    curves: experiment → one list per seed of devel F1 per epoch,
    e.g. {"lora": [[0.41, 0.62], [0.45, 0.60]]}.
    No rows: nothing is written. No curve at all: only `pareto.png`.
    """
    if not rows:
        return []
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    palette = colours([row["experiment"] for row in rows] + list(curves))
    written = [save_atomic(pareto_figure(rows, palette), output_dir / "pareto.png")]
    if any(seed for runs in curves.values() for seed in runs):
        own = {row["experiment"] for row in rows if row.get("own_test_set")}
        written.append(save_atomic(curves_figure(curves, palette, own),
                                   output_dir / "curves.png"))
    return written


def colours(names: list[str]) -> dict[str, str]:
    """One colour per experiment, in order of first appearance: matplotlib's cycle (C0..C9, the
    tab10 colours), then ColorBrewer's Dark2 and black, so that 19 experiments stay apart."""
    unique = list(dict.fromkeys(names))
    cycle = [f"C{i}" for i in range(10)] + ["#1b9e77", "#d95f02", "#7570b3", "#e7298a",
                                            "#66a61e", "#e6ab02", "#a6761d", "#666666", "k"]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(unique)}


def save_atomic(figure, path: Path) -> Path:
    """Whole or not at all, as every file of a sweep (files.py): shards that rebuild the
    table at the same moment never trip over each other's half-written PNG."""
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=120)
    write_bytes_atomic(path, png.getvalue())
    return path


def pareto_figure(rows: list[dict], palette: dict[str, str]):
    """Two panels sharing the F1 axis: against trainable parameters (log) and peak memory."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    by_params, by_memory = figure.subplots(1, 2, sharey=True)
    memory = {"cuda_max_allocated": "peak CUDA memory allocated, MB",
              "cpu_peak_rss": "peak resident memory above the run's start, MB"}
    panels = ((by_params, "trainable_params", "trainable parameters (log scale)"),
              (by_memory, "memory_above_baseline_mb",
               memory.get(rows[0].get("peak_memory_measure"), "peak memory, MB")))
    for axes, key, label in panels:
        for row in rows:
            x, y = row[key], row["f1"]
            colour, own = palette[row["experiment"]], row.get("own_test_set", False)
            axes.errorbar([x], [y], yerr=[row.get("f1_std") or 0.0], fmt="o", capsize=3,
                          color=colour, markerfacecolor="none" if own else colour)
            text = row["experiment"] + (" (own test set)" if own else "")
            axes.annotate(text, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
        axes.set_xlabel(label)
        axes.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
        axes.grid(alpha=0.3)
    by_params.set_xscale("log")
    by_params.set_ylabel("test F1 (entity level, mean ± std over seeds)")
    figure.suptitle("Accuracy against cost, one point per experiment")
    return figure


def curve_summary(runs: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """Mean, min and max over seeds at each epoch; a seed with fewer epochs (stopped early)
    counts only where it has values.

    [[0.2, 0.4], [0.4, 0.6, 0.7]] -> ([0.3, 0.5, 0.7], [0.2, 0.4, 0.7], [0.4, 0.6, 0.7])
    """
    epochs = max(len(seed) for seed in runs)
    at = [[seed[e] for seed in runs if e < len(seed)] for e in range(epochs)]
    return [sum(v) / len(v) for v in at], [min(v) for v in at], [max(v) for v in at]


def curves_figure(curves: dict[str, list[list[float]]], palette: dict[str, str],
                  own: set[str] = frozenset()):
    """Devel F1 per epoch: one line per experiment (mean over seeds), min-max band for 2+; the
    experiments of `own` (scored on a test set of their own) in hollow markers."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for name, runs in curves.items():
        runs = [seed for seed in runs if seed]
        if not runs:
            continue
        mean, low, high = curve_summary(runs)
        epochs = list(range(1, len(mean) + 1))
        label = f"{name} ({len(runs)} seed{'s' * (len(runs) > 1)})"
        line, = axes.plot(epochs, mean, marker="o", markersize=4, color=palette[name],
                          markerfacecolor="none" if name in own else palette[name],
                          label=label + (" (own test set)" if name in own else ""))
        if len(runs) > 1:
            axes.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xlabel("epoch")
    axes.set_ylabel("devel F1 (entity level)")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.suptitle("Learning curves: mean over seeds, band from min to max")
    return figure

