"""Which method, across corpora: one table from the tables of several sweeps.

    python -m comparison.across configs/peft_cpu.yml configs/peft_corpora_cpu.yml
        [--reference bc5cdr] [--baseline full]

Each sweep's summary.csv (report.py) gives, per experiment, the corpus it trained and was tested
on, its mean test F1, its ΔF1 against the baseline of its test set with a paired bootstrap p,
and its trainable parameters. Here a method is an experiment's name before any grid suffix
(`pfeiffer[lr=0.01]`) or corpus suffix (`pfeiffer@linnaeus`); a gridded method counts at its
devel choice only, and a row tested on another corpus than it trained on (`test_dataset`) is
left to its own sweep's table.

Per corpus the methods are ranked by mean test F1 (1 the best; tied methods share the mean of
their ranks). The table gives each method's ΔF1 against the baseline method per corpus († where
p < 0.05), its mean rank over the corpora, and its trainable parameters on the reference corpus
(the head's size follows each corpus's entity types); then Kendall's τ-b between each corpus's
ranking and the reference corpus's, over the methods both rank: 1 the same order, -1 the
reverse, near 0 no relation. The mean rank ranks only the methods that every corpus has, so that
a method missing from one corpus (a sweep stopped early) moves no other method's rank; a missing
method has none, and comes after those that have one.

Left out: intervals (each sweep's own table has them), and a test of the rank agreement (with
13 methods and 3 seeds, τ's own uncertainty would need a bootstrap over seeds and sentences).
"""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path

from runs.config_files import experiment_configs

ALPHA = 0.05  # the significance level of a ΔF1's †, as report.py marks it


def method_name(experiment: str) -> str:
    """`pfeiffer[lr=0.01]` and `pfeiffer@linnaeus` -> `pfeiffer`."""
    return re.split(r"[\[@]", experiment, maxsplit=1)[0]


def corpus_rows(summary: Path) -> list[dict]:
    """The rows of a summary.csv that speak for a method on a corpus: finished, trained and
    tested on one corpus, and for a grid its devel choice."""
    with summary.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [row for row in rows if row["f1"] and row["dataset"] == row["test_corpus"]
            and ("[" not in row["experiment"] or row["selected_on_devel"] == "True")]


def ranks(scores: dict[str, float]) -> dict[str, float]:
    """Rank 1 for the highest score; tied scores share the mean of their ranks.

    {"a": 0.7, "b": 0.9, "c": 0.7} -> {"b": 1.0, "a": 2.5, "c": 2.5}
    """
    ordered = sorted(scores, key=lambda name: -scores[name])
    result, start = {}, 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and scores[ordered[end + 1]] == scores[ordered[start]]:
            end += 1
        for name in ordered[start:end + 1]:
            result[name] = (start + end) / 2 + 1
        start = end + 1
    return result


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's τ-b of two rankings of the same items, ties corrected: (concordant -
    discordant) / sqrt((pairs - ties in x) (pairs - ties in y)); nan with fewer than two
    items or a ranking of all ties."""
    concordant = discordant = ties_x = ties_y = pairs = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            pairs += 1
            sign = (x[i] - x[j]) * (y[i] - y[j])
            ties_x += x[i] == x[j]
            ties_y += y[i] == y[j]
            concordant += sign > 0
            discordant += sign < 0
    denominator = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    return (concordant - discordant) / denominator if denominator else math.nan


def signed(value: float) -> str:
    return f"{value:+.3f}".replace("-", "−")


def table(rows: list[dict], reference: str, baseline: str) -> str:
    """The markdown table and the rank agreement (module docstring) of `rows`, the rows of
    every sweep (`corpus_rows`)."""
    by_corpus: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_corpus.setdefault(row["test_corpus"], {})[method_name(row["experiment"])] = row
    if reference not in by_corpus:
        raise ValueError(f"no sweep holds rows on the reference corpus {reference!r} (corpora: "
                         f"{', '.join(by_corpus)})")
    corpora = [reference] + sorted(set(by_corpus) - {reference})
    ranked = {corpus: ranks({m: float(r["f1"]) for m, r in by_corpus[corpus].items()})
              for corpus in corpora}
    methods = list(by_corpus[reference])
    methods += sorted({m for corpus in corpora for m in by_corpus[corpus]} - set(methods))

    def delta(corpus: str, method: str) -> str:
        row = by_corpus[corpus].get(method)
        if row is None:
            return "–"
        if method == baseline:
            return f"F1 {float(row['f1']):.3f}"  # the baseline's own, the others' reference
        if not row["delta_f1"]:
            return "–"
        mark = " †" if float(row["p_value"]) < ALPHA else ""
        return signed(float(row["delta_f1"])) + mark

    everywhere = [m for m in methods if all(m in by_corpus[c] for c in corpora)]
    mean_ranks = {m: 0.0 for m in everywhere}
    for corpus in corpora:
        for method, rank in ranks({m: float(by_corpus[corpus][m]["f1"])
                                   for m in everywhere}).items():
            mean_ranks[method] += rank / len(corpora)
    header = (["method", "trainable params"] + [f"ΔF1 {c}" for c in corpora] +
              [f"mean rank ({len(corpora)} corpora, {len(everywhere)} methods)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    missing = [m for m in methods if m not in mean_ranks]  # in the reference corpus's order
    for method in sorted(everywhere, key=lambda m: mean_ranks[m]) + missing:
        params = by_corpus[reference].get(method, {}).get("trainable_params")
        lines.append("| " + " | ".join(
            [f"`{method}`", f"{int(params):,}" if params else "–"] +
            [delta(c, method) for c in corpora] +
            [f"{mean_ranks[method]:.1f}" if method in mean_ranks else "–"]) + " |")
    agreement = []
    for corpus in corpora[1:]:
        shared = [m for m in methods if m in ranked[corpus] and m in ranked[reference]]
        tau = kendall_tau_b([ranked[reference][m] for m in shared],
                            [ranked[corpus][m] for m in shared])
        agreement.append(f"{corpus} {tau:.2f}")
    return "\n".join(lines) + (f"\n\nRank agreement with {reference} (Kendall's τ-b over the "
                               f"methods both rank): {'; '.join(agreement)}.\n")


USAGE = """usage: python -m comparison.across CONFIG.yml [CONFIG.yml ...] [--reference CORPUS]
                                     [--baseline METHOD]

One table of every method's ΔF1 per corpus, its mean rank and its parameters, from the summary
of each config's sweep (run compare.py on each first), and the rank agreement between corpora.
--reference: the corpus the others' rankings are compared with (default: the first config's
dataset); --baseline: the method ΔF1 is against (default: full).
"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    options = {"--reference": None, "--baseline": "full"}
    paths = []
    words = iter(argv)
    for word in words:
        if word in options:
            options[word] = next(words, None)
        else:
            paths.append(word)
    rows = []
    for path in paths:
        summary = Path(experiment_configs(path)[0].output_dir) / "summary.csv"
        if not summary.is_file():
            print(f"{path}: no table yet ({summary}): run python compare.py {path} first",
                  file=sys.stderr)
            return 2
        rows += corpus_rows(summary)
    reference = options["--reference"] or experiment_configs(paths[0])[0].dataset
    try:
        print(table(rows, reference, options["--baseline"]), end="")
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
