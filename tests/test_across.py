"""comparison/across.py: methods at their devel choice per corpus, ranks with ties, Kendall's
τ-b, and the table from the summaries of several sweeps."""

from __future__ import annotations

import csv
import itertools
import math

import pytest

from comparison import across
from comparison.report import CSV_FIELDS


def test_ranks_share_the_mean_rank_when_tied():
    assert across.ranks({"a": 0.7, "b": 0.9, "c": 0.7}) == {"b": 1.0, "a": 2.5, "c": 2.5}


def slow_tau_b(x, y):
    """τ-b from its definition with the sign function, over every ordered pair."""
    def sign(v):
        return (v > 0) - (v < 0)
    pairs = list(itertools.combinations(range(len(x)), 2))
    s = sum(sign(x[i] - x[j]) * sign(y[i] - y[j]) for i, j in pairs)
    tx = sum(x[i] == x[j] for i, j in pairs)
    ty = sum(y[i] == y[j] for i, j in pairs)
    return s / math.sqrt((len(pairs) - tx) * (len(pairs) - ty))


@pytest.mark.parametrize("x, y", [([1, 2, 3, 4], [1, 2, 3, 4]), ([1, 2, 3, 4], [4, 3, 2, 1]),
                                  ([1, 2.5, 2.5, 4], [2, 1, 3, 4]),
                                  ([1, 2, 3, 4, 5], [3, 1, 2, 5, 4])])
def test_kendall_tau_b_follows_its_definition(x, y):
    assert across.kendall_tau_b(x, y) == pytest.approx(slow_tau_b(x, y))
    assert across.kendall_tau_b([1, 2, 3], [1, 2, 3]) == 1.0
    assert across.kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0


def write_summary(folder, rows):
    folder.mkdir(parents=True)
    with (folder / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({field: row.get(field, "") for field in CSV_FIELDS})


def row(experiment, corpus, f1, delta="", p="", selected=False, params=100, trained_on=None):
    return {"experiment": experiment, "dataset": trained_on or corpus, "test_corpus": corpus,
            "f1": f1, "delta_f1": delta, "p_value": p, "selected_on_devel": selected,
            "trainable_params": params}


def test_the_table_ranks_methods_per_corpus_and_compares_rankings(tmp_path, capsys):
    write_summary(tmp_path / "one", [
        row("full", "x", 0.8, 0.0, 1.0, params=1000),
        row("lora[lr=1]", "x", 0.9, 0.1, 0.5), row("lora[lr=2]", "x", 0.6, -0.2, 0.01,
                                                    selected=True),
        row("ia3", "x", 0.7, -0.1, 0.001, params=10),
        row("bitfit", "x", 0.95, 0.15, 0.001, params=5)])  # not run on y: no mean rank
    write_summary(tmp_path / "two", [
        row("full@y", "y", 0.5, 0.0, 1.0), row("lora@y", "y", 0.7, 0.2, 0.001),
        row("ia3@y", "y", 0.4, -0.1, 0.2), row("full-from-x@y", "y", 0.3, -0.2, 0.001,
                                              trained_on="x")])
    for name in ("one", "two"):
        (tmp_path / f"{name}.yml").write_text(f"dataset: {'x' if name == 'one' else 'y'}\n"
                                              f"output_dir: {tmp_path / name}\n")
    assert across.main([str(tmp_path / "one.yml"), str(tmp_path / "two.yml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    # Among the methods both corpora have: x: full 0.8 (1), ia3 0.7 (2), lora's devel choice
    # 0.6 (3); y: lora 1, full 2, ia3 3. bitfit, best on x, moves none of them.
    assert lines[0].endswith("| mean rank (2 corpora, 3 methods) |")
    assert lines[2:6] == ["| `full` | 1,000 | F1 0.800 | F1 0.500 | 1.5 |",
                          "| `lora` | 100 | −0.200 † | +0.200 † | 2.0 |",
                          "| `ia3` | 10 | −0.100 † | −0.100 | 2.5 |",
                          "| `bitfit` | 5 | +0.150 † | – | – |"]
    tau = across.kendall_tau_b([2, 4, 3], [2, 1, 3])
    assert lines[-1] == (f"Rank agreement with x (Kendall's τ-b over the methods both rank): "
                         f"y {tau:.2f}.")
    assert across.main([str(tmp_path / "one.yml"), "--reference", "z"]) == 2
    assert "no sweep holds rows on the reference corpus 'z'" in capsys.readouterr().err
