"""compare.py end to end on a tiny config: table, files, resuming, and a failing run."""

from __future__ import annotations

import csv
import json

import compare


def write_sweep(tmp_path, encoder, corpus, experiments: str):
    path = tmp_path / "sweep.yml"
    path.write_text(f"model: {encoder}\ndataset: {corpus}\ngpu: -1\nepochs: 1\nbatch_size: 8\n"
                    f"lr: 1e-3\nrepeats: 2\nseed: 3\noutput_dir: {tmp_path / 'out'}\n"
                    f"experiments:\n{experiments}")
    return path


def test_sweep_writes_table_and_files_then_resumes(tmp_path, tiny_encoder, tiny_corpus, capsys):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus,
                       "  - {name: full-a}\n  - {name: full-b, lr: 3e-3, repeats: 1}\n")
    assert compare.main([str(path)]) == 0
    printed = capsys.readouterr().out
    assert "Summary" in printed and "test F1 (mean ± std)" in printed
    out = tmp_path / "out"
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["name"], r["seed"]) for r in results] == [("full-a", 3), ("full-a", 4),
                                                        ("full-b", 3)]
    assert results[2]["config"]["lr"] == 3e-3
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["experiment"] for r in rows] == ["full-a", "full-b"]
    assert rows[0]["runs"] == "2" and rows[1]["runs"] == "1"
    f1s = [r["test"]["f1"] for r in results[:2]]
    assert float(rows[0]["f1"]) == sum(f1s) / 2
    assert {"f1_Chemical", "f1_Disease"} <= set(rows[0])
    markdown = (out / "summary.md").read_text()
    assert markdown.count("\n") == 4 and "| full-b |" in markdown

    # Rerunning the same sweep trains nothing again; more repeats train only the new seeds.
    assert compare.main([str(path)]) == 0
    assert capsys.readouterr().out.count("already finished") == 3
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    assert compare.main([str(path), "--only=full-b", "--repeats=2"]) == 0
    assert capsys.readouterr().out.count("already finished") == 1
    assert json.loads((out / "results.jsonl").read_text().splitlines()[-1])["seed"] == 4


def test_a_failing_run_keeps_the_finished_ones(tmp_path, tiny_encoder, tiny_corpus, capsys):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus,
                       "  - {name: good, repeats: 1}\n"
                       "  - {name: broken, repeats: 1, dataset: /no/such/folder}\n"
                       "  - {name: after, repeats: 1}\n")
    assert compare.main([str(path)]) == 1
    printed = capsys.readouterr()
    assert "failed runs: broken seed 3" in printed.out
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["experiment"] for r in rows] == ["good", "after"]


def test_only_selects_experiments(tmp_path, tiny_encoder, tiny_corpus):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus,
                       "  - {name: a, repeats: 1}\n  - {name: b, repeats: 1}\n")
    assert compare.main([str(path), "--only=b"]) == 0
    assert not (tmp_path / "out" / "a").exists() and (tmp_path / "out" / "b").exists()
