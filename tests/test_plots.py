"""plots.py: valid PNGs written atomically, the points and curves they draw, and a cheap import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from comparison import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(name: str, f1: float, std: float | None, params: int, memory: float) -> dict:
    return {"experiment": name, "f1": f1, "f1_std": std, "trainable_params": params,
            "memory_above_baseline_mb": memory, "peak_memory_measure": "cpu_peak_rss"}


ROWS = [row("full", 0.79, 0.004, 22_567_301, 1900.0), row("lora-r16", 0.77, None, 296_837, 1200.0),
        row("fusion-merge", 0.71, 0.0, 1_973, 1100.0)]
CURVES = {"full": [[0.70, 0.78, 0.79], [0.72, 0.77, 0.80], [0.69, 0.76, 0.78]],
          "lora-r16": [[0.50, 0.70, 0.76]], "fusion-merge": []}


def test_writes_two_valid_pngs_atomically(tmp_path):
    paths = plots.write_plots(tmp_path / "sweep", ROWS, CURVES)
    assert paths == [tmp_path / "sweep" / "pareto.png", tmp_path / "sweep" / "curves.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["curves.png", "pareto.png"]
    paths_again = plots.write_plots(tmp_path / "sweep", ROWS[:1], {"full": CURVES["full"]})
    assert paths_again == paths  # rewriting after the next run replaces both files


def test_nothing_to_plot_writes_nothing(tmp_path):
    assert plots.write_plots(tmp_path, [], CURVES) == []
    only_pareto = plots.write_plots(tmp_path, ROWS, {"full": [], "lora": [[]]})
    assert only_pareto == [tmp_path / "pareto.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png"]


def test_pareto_draws_one_labelled_point_per_experiment():
    figure = plots.pareto_figure(ROWS, plots.colours([r["experiment"] for r in ROWS]))
    by_params, by_memory = figure.axes
    assert by_params.get_xscale() == "log" and by_memory.get_xscale() == "linear"
    for axes, key in ((by_params, "trainable_params"), (by_memory, "memory_above_baseline_mb")):
        assert len(axes.containers) == len(ROWS)  # one errorbar per experiment
        for bar, r in zip(axes.containers, ROWS):
            data_line, _, (vertical,) = bar.lines
            assert tuple(data_line.get_xydata()[0]) == (r[key], r["f1"])
            [(bottom, top)] = vertical.get_segments()
            assert top[1] - bottom[1] == pytest.approx(2 * (r["f1_std"] or 0.0))
        assert [t.get_text() for t in axes.texts] == [r["experiment"] for r in ROWS]
    assert by_memory.get_xlabel() == "peak resident memory above the run's start, MB"


def test_curves_are_the_mean_over_seeds_with_a_band_for_several():
    figure = plots.curves_figure(CURVES, plots.colours(list(CURVES)))
    [axes] = figure.axes
    lines = {line.get_label().split(" (")[0]: line for line in axes.lines}
    assert set(lines) == {"full", "lora-r16"}  # an experiment without curves is left out
    assert list(lines["full"].get_ydata()) == pytest.approx([0.7033333, 0.77, 0.79])
    assert list(lines["lora-r16"].get_ydata()) == pytest.approx([0.50, 0.70, 0.76])
    assert list(lines["full"].get_xdata()) == [1, 2, 3]
    assert len(axes.collections) == 1  # a min-max band only for the 3-seed experiment
    band = axes.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.69) and band[:, 1].max() == pytest.approx(0.80)
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "full (3 seeds)", "lora-r16 (1 seed)"]


def test_curve_summary_of_seeds_of_different_lengths():
    mean, low, high = plots.curve_summary([[0.2, 0.4], [0.4, 0.6, 0.7]])
    assert mean == pytest.approx([0.3, 0.5, 0.7])
    assert (low, high) == ([0.2, 0.4, 0.7], [0.4, 0.6, 0.7])


def test_importing_plots_does_not_import_matplotlib():
    code = "import sys; from comparison import plots; print('matplotlib' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=Path(plots.__file__).parent.parent, check=True).stdout.strip()
    assert found == "False"


def test_an_experiment_has_one_colour_in_both_figures_and_its_own_test_set_is_marked():
    rows = [*ROWS, {**row("lora-chem", 0.63, 0.02, 296_067, 1150.0), "own_test_set": True}]
    curves = {"lora-r16": CURVES["lora-r16"], "lora-chem": [[0.5, 0.6]], "full": CURVES["full"]}
    palette = plots.colours([r["experiment"] for r in rows] + list(curves))
    pareto = plots.pareto_figure(rows, palette)
    points = {r["experiment"]: bar.lines[0] for r, bar in zip(rows, pareto.axes[0].containers)}
    lines = {line.get_label().split(" (")[0]: line
             for line in plots.curves_figure(curves, palette, {"lora-chem"}).axes[0].lines}
    for name, line in lines.items():
        assert line.get_color() == points[name].get_color()
    assert len({p.get_color() for p in points.values()}) == len(points)
    assert points["lora-chem"].get_markerfacecolor() == "none"
    assert points["full"].get_markerfacecolor() != "none"
    assert "lora-chem (own test set)" in [t.get_text() for t in pareto.axes[0].texts]
    # curves.png marks it the same way: hollow markers, and its legend says so
    assert lines["lora-chem"].get_markerfacecolor() == "none"
    assert lines["full"].get_markerfacecolor() != "none"
    assert lines["lora-chem"].get_label() == "lora-chem (1 seed) (own test set)"


def test_nineteen_experiments_get_nineteen_colours():
    from matplotlib.colors import to_hex

    names = [f"e{i}" for i in range(19)]
    assert len({to_hex(colour) for colour in plots.colours(names).values()}) == 19
