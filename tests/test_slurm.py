"""slurm.py: a sweep's shards through submitit, on its local executor (real processes, no Slurm)."""

from __future__ import annotations

import sys

from test_sweep import FUSION, f1s, table, write_sweep

import compare
from comparison import slurm


def test_shards_through_submitit_give_the_unsharded_table(tmp_path, tiny_encoder, tiny_corpus,
                                                          capsys):
    experiments = FUSION + "  - {name: c, lr: 3e-3}\n"
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    path = write_sweep(sharded, tiny_encoder, tiny_corpus, experiments)
    assert slurm.main([str(path), "--shards=2", "--cluster=local", "--timeout_min=10"]) == 0
    assert "submitted 2 shards (local" in capsys.readouterr().out
    assert len(list((sharded / "out" / ".slurm").glob("*_log.out"))) == 2  # one log per task
    whole = tmp_path / "whole"
    whole.mkdir()
    assert compare.main([str(write_sweep(whole, tiny_encoder, tiny_corpus, experiments))]) == 0
    assert f1s(table(sharded)) == f1s(table(whole))


def test_a_failed_run_in_a_shard_makes_the_launch_fail(tmp_path, tiny_encoder, tiny_corpus):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus,
                       "  - {name: good}\n  - {name: bad, method: lora, targets: [nothing]}\n")
    assert slurm.main([str(path), "--shards=2", "--cluster=debug"]) == 1
    rows = {r["experiment"]: r for r in table(tmp_path)}
    assert rows["good"]["runs"] == "1" and "match no nn.Linear" in rows["bad"]["failed"]


def test_bad_input_is_one_line_each_and_nothing_is_submitted(tmp_path, tiny_encoder,
                                                             tiny_corpus, capsys, monkeypatch):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, "  - {name: a, rank: -1}\n")
    assert slurm.main([str(path), "--shards=x", "--cluster=local", "--shard=1/2"]) == 2
    printed = capsys.readouterr().err.splitlines()
    assert printed[0] == "command line: --shards expects int, found 'x'"
    assert printed[1].startswith("command line: slurm.py makes the shards")
    assert any("rank" in line and "sweep.yml:" in line for line in printed[2:])
    assert not (tmp_path / "out").exists()
    assert slurm.main([str(path)]) == 2
    assert "--shards=N is required" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, "  - {name: a}\n")
    assert slurm.main([str(path), "--shards=2"]) == 2
    assert capsys.readouterr().err.strip() == "slurm.py needs submitit: pip install submitit"
