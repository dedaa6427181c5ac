"""sweep.py and compare.py's engine: isolated runs, honest records, parallel runs, shards.

Every run here is a real spawned process training a tiny BERT on a tiny corpus.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import save_tiny_encoder, write_corpus

import compare
import config
from comparison import fingerprint, preflight, runner, sweep
from runs import config_files, folders

ROOT = Path(compare.__file__).parent
real_child = runner.child  # what a run's process runs, kept before a test replaces it


def write_sweep(tmp_path, encoder, corpus, experiments: str, top: str = "") -> Path:
    path = tmp_path / "sweep.yml"
    path.write_text(f"model: {encoder}\ndataset: {corpus}\ngpu: -1\nepochs: 1\nbatch_size: 8\n"
                    f"lr: 1e-3\nrepeats: 1\nseed: 3\noutput_dir: {tmp_path / 'out'}\n{top}"
                    f"experiments:\n{experiments}")
    return path


def table(tmp_path, folder: str = "out") -> list[dict]:
    return list(csv.DictReader((tmp_path / folder / "summary.csv").open()))


def f1s(rows: list[dict]) -> dict[str, str]:
    return {r["experiment"]: r["f1"] for r in rows}


def planned(path) -> list[sweep.Run]:
    configs = config_files.experiment_configs(path)
    _, origins = preflight.check_inputs(configs)
    return sweep.plan(configs, origins)


# ------------------------------------------------------------------ never stale


def test_changed_config_killed_mid_run_trains_again(tmp_path, tiny_encoder, tiny_corpus,
                                                     capsys):
    """The issue's repro: train `a`, change its lr, kill the new run mid-way, rerun."""
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, "  - {name: a}\n")
    assert compare.main([str(path)]) == 0
    folder = tmp_path / "out" / "a" / "seed3"
    assert (folder / "record.json").exists()
    # What a killed attempt with the new lr leaves: its config.json beside the old metrics.
    path.write_text(path.read_text().replace("lr: 1e-3", "lr: 2e-2"))
    (folder / "config.json").write_text((folder / "config.json").read_text()
                                        .replace('"lr": 0.001', '"lr": 0.02'))
    capsys.readouterr()
    assert compare.main([str(path), "--dry-run"]) == 0
    assert "| stale " in capsys.readouterr().out
    assert compare.main([str(path)]) == 0
    assert "already finished" not in capsys.readouterr().out
    assert table(tmp_path)[0]["lr"] == "0.02"
    assert json.loads((folder / "metrics.json").read_text())["lr"] == 0.02
    assert compare.main([str(path)]) == 0  # nothing changed: nothing trains
    assert "already finished" in capsys.readouterr().out


def test_corpus_change_trains_again(tmp_path, tiny_encoder):
    corpus = write_corpus(tmp_path / "corpus")
    path = write_sweep(tmp_path, tiny_encoder, corpus, "  - {name: a}\n")
    [run] = planned(path)
    with (corpus / "train.tsv").open("a") as f:
        f.write("\nmore\tO\n")
    [changed] = planned(path)
    assert run.fingerprint != changed.fingerprint
    other_encoder = save_tiny_encoder(tmp_path / "other-encoder", seed=1)
    path.write_text(path.read_text().replace(str(tiny_encoder), str(other_encoder)))
    assert planned(path)[0].fingerprint not in (run.fingerprint, changed.fingerprint)
    path.write_text(path.read_text().replace("repeats: 1", "repeats: 1\nlog_every: 7"))
    assert planned(path)[0].fingerprint == planned(path)[0].fingerprint  # bookkeeping only


FUSION = ("  - {name: chem, method: lora, rank: 2}\n"
          "  - {name: dis, method: lora, rank: 2}\n"
          "  - {name: fused, method: fusion, adapters: [chem, dis]}\n"
          "  - {name: full}\n")


def test_changing_a_fusion_source_trains_it_and_the_fusion_only(tmp_path, tiny_encoder,
                                                                 tiny_corpus, capsys):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, FUSION)
    before = {r.cfg.name: r.fingerprint for r in planned(path)}
    path.write_text(path.read_text().replace("{name: dis, method: lora, rank: 2}",
                                             "{name: dis, method: lora, rank: 3}"))
    after = {r.cfg.name: r.fingerprint for r in planned(path)}
    assert [n for n in before if before[n] != after[n]] == ["dis", "fused"]
    path.write_text(path.read_text().replace("rank: 3", "rank: 2"))
    assert compare.main([str(path)]) == 0
    capsys.readouterr()
    path.write_text(path.read_text().replace("{name: dis, method: lora, rank: 2}",
                                             "{name: dis, method: lora, rank: 3}"))
    assert compare.main([str(path)]) == 0
    printed = capsys.readouterr().out
    assert sorted(line.split("]")[0][1:] for line in printed.splitlines()
                  if "already finished" in line) == ["chem seed 3", "full seed 3"]


# ------------------------------------------------------------------ failures


def crashing_child(cfg_values, run_fingerprint, inputs, threads, log_path):
    """A run body that dies without a word for experiment `dies`, else the real one."""
    if cfg_values["name"] == "dies":
        os._exit(1)
    if cfg_values["name"] == "segfaults":
        os.kill(os.getpid(), signal.SIGSEGV)
    real_child(cfg_values, run_fingerprint, inputs, threads, log_path)


def test_failed_runs_are_recorded_with_their_reason_and_the_sweep_goes_on(
        tmp_path, tiny_encoder, tiny_corpus, monkeypatch, capsys):
    monkeypatch.setattr(runner, "child", crashing_child)
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus,
                       "  - {name: good}\n"
                       "  - {name: raises, method: lora, targets: [no_such_linear]}\n"
                       "  - {name: dies}\n  - {name: segfaults}\n  - {name: after}\n")
    assert compare.main([str(path)]) == 1
    printed = capsys.readouterr().out
    assert "failed runs: raises seed 3, dies seed 3, segfaults seed 3" in printed
    rows = {r["experiment"]: r for r in table(tmp_path)}
    assert rows["good"]["runs"] == rows["after"]["runs"] == "1"
    assert "ValueError: target(s) no_such_linear match no nn.Linear" in rows["raises"]["failed"]
    assert "exited with status 1" in rows["dies"]["failed"]
    assert "killed by signal SIGSEGV" in rows["segfaults"]["failed"]
    assert "failed: raises seed 3: ValueError" in (tmp_path / "out" / "summary.md").read_text()
    # A rerun retries the failed runs only.
    monkeypatch.setattr(runner, "child", real_child)
    capsys.readouterr()
    assert compare.main([str(path), "--dry-run"]) == 0
    statuses = capsys.readouterr().out
    assert statuses.count("| failed ") == 3 and statuses.count("| finished ") == 2


def test_a_killed_sweep_resumes_to_the_uninterrupted_table(tmp_path, tiny_encoder, tiny_corpus):
    experiments = "  - {name: a}\n  - {name: b, lr: 3e-3}\n  - {name: c, method: lora}\n"
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, experiments)
    process = subprocess.Popen([sys.executable, str(ROOT / "compare.py"), str(path)],
                               cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    out = tmp_path / "out"
    deadline = time.time() + 120
    while not (out / "b" / "seed3" / "config.json").exists() and time.time() < deadline:
        time.sleep(0.05)  # `a` has finished and `b` is training
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / "a" / "seed3" / "record.json").exists()
    assert not (out / "c" / "seed3" / "record.json").exists()
    assert compare.main([str(path)]) == 0
    whole = tmp_path / "whole"
    whole.mkdir()
    assert compare.main([str(write_sweep(whole, tiny_encoder, tiny_corpus, experiments))]) == 0
    assert f1s(table(tmp_path)) == f1s(table(whole))


def test_ctrl_c_stops_the_sweep_in_one_line_and_keeps_what_finished(tmp_path, tiny_encoder,
                                                                     tiny_corpus):
    experiments = "  - {name: a}\n  - {name: b, lr: 3e-3}\n  - {name: c, method: lora}\n"
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, experiments)
    # a shell's background job starts with SIGINT ignored, and so would this sweep: restore it
    launch = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)"
              f"; sys.argv = ['compare.py', {str(path)!r}]"
              "; runpy.run_path('compare.py', run_name='__main__')")
    process = subprocess.Popen([sys.executable, "-c", launch], cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    deadline = time.time() + 120
    while not (out / "b" / "seed3" / "config.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"interrupted: the finished runs stay in {out}")
    assert (out / "a" / "seed3" / "record.json").exists()
    assert not (out / "c" / "seed3" / "record.json").exists()
    # b was stopped (no record) or had just finished: never a record of a failure
    b = out / "b" / "seed3" / "record.json"
    assert not b.exists() or json.loads(b.read_text())["status"] == "ok"


# ------------------------------------------------------------------ parallel, memory


def test_parallel_runs_match_serial_runs_and_lora_peaks_below_full(tmp_path, tiny_corpus):
    # An encoder big enough that full fine-tuning's gradients and Adam moments (3 x 4 bytes
    # per weight, ~90 MB) stand out of the process's resident memory.
    encoder = save_tiny_encoder(tmp_path / "encoder", hidden=384, layers=4, intermediate=1536)
    experiments = "  - {name: full}\n  - {name: lora, method: lora, rank: 2}\n"
    top = "save_weights: false\nrepeats: 2\n"
    serial = tmp_path / "serial"
    serial.mkdir()
    assert compare.main([str(write_sweep(serial, encoder, tiny_corpus, experiments, top))]) == 0
    parallel = tmp_path / "parallel"
    parallel.mkdir()
    assert compare.main([str(write_sweep(parallel, encoder, tiny_corpus, experiments, top)),
                         "--parallel=2"]) == 0
    assert f1s(table(serial)) == f1s(table(parallel))
    assert (parallel / "out" / "lora" / "seed4" / "output.log").exists()
    for rows in (table(serial), table(parallel)):
        by_name = {r["experiment"]: r for r in rows}
        assert float(by_name["lora"]["peak_memory_mb"]) < float(by_name["full"]["peak_memory_mb"])


def instant_child(cfg_values, fingerprint, inputs, threads, log_path):
    """A run body that records success at once, after 2 s for experiment `slow`."""
    if cfg_values["name"] == "slow":
        time.sleep(2)
    cfg = config_files.make_config(cfg_values, "test")
    sweep.write_record(sweep.Run(cfg, fingerprint), "ok")
    (folders.run_dir(cfg) / "metrics.json").write_text("{}")


def test_a_freed_slot_is_refilled_before_the_finished_run_is_reported(tmp_path):
    """Reporting a run rebuilds the table (seconds); the next run must not wait for it."""
    runs = [sweep.Run(config.Config(name=name, output_dir=str(tmp_path)), name)
            for name in ("quick", "slow")]
    alive_when_reported = {}

    def on_finish(run, record):
        assert record["status"] == "ok"
        alive_when_reported[run.cfg.name] = [p.name for p in multiprocessing.active_children()]

    assert runner.execute(runs, parallel=1, on_finish=on_finish, target=instant_child) == []
    assert alive_when_reported == {"quick": ["slow seed 42"], "slow": []}


def test_cpu_threads_and_device_slots():
    assert runner.cpu_threads(1) >= runner.cpu_threads(2) >= 1
    assert runner.device_slots(config.Config(gpu=[-1]), 3) == [-1, -1, -1]
    assert runner.device_slots(config.Config(gpu=[0, 1]), 3) == [0, 1, 0]


# ------------------------------------------------------------------ shards, report, dry run


def test_shards_are_disjoint_cover_the_sweep_and_keep_fusions_with_sources(tmp_path,
                                                                         tiny_encoder,
                                                                         tiny_corpus):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus,
                       FUSION + "  - {name: x}\n  - {name: y}\n", top="repeats: 2\n")
    runs = planned(path)
    for count in (1, 2, 3, 5):
        slices = [sweep.shard(runs, k, count) for k in range(1, count + 1)]
        keys = [r.key for s in slices for r in s]
        assert sorted(keys) == sorted(r.key for r in runs) and len(set(keys)) == len(keys)
        for piece in slices:
            mine = {r.key for r in piece}
            assert all(set(r.sources) <= mine for r in piece)
        assert max(map(len, slices)) - min(map(len, slices)) <= 3  # a fusion group is 3 runs


def test_report_over_shards_equals_the_unsharded_table(tmp_path, tiny_encoder, tiny_corpus,
                                                       capsys):
    experiments = "  - {name: a}\n  - {name: b, method: lora}\n  - {name: c, lr: 3e-3}\n"
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    path = write_sweep(sharded, tiny_encoder, tiny_corpus, experiments)
    for k in (1, 2):
        assert compare.main([str(path), f"--shard={k}/2"]) == 0
    assert compare.main([str(path), "--report"]) == 0
    whole = tmp_path / "whole"
    whole.mkdir()
    assert compare.main([str(write_sweep(whole, tiny_encoder, tiny_corpus, experiments))]) == 0
    assert f1s(table(sharded)) == f1s(table(whole))
    assert len(table(sharded)) == 3


def test_dry_run_trains_nothing(tmp_path, tiny_encoder, tiny_corpus, capsys):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, FUSION, top="repeats: 2\n")
    assert compare.main([str(path), "--dry-run", "--parallel=2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| new ") == 8 and "8 of 8 runs to train" in printed
    assert printed.index("| chem ") < printed.index("| fused ")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("experiments, top, words", [
    ("  - {name: a, rank: -4, method: lora}\n  - {name: b, dropout: 2}\n", "",
     ["sweep.yml:11: experiments[0] (a): key 'rank' must be >= 1, found -4",
      "sweep.yml:12: experiments[1] (b): key 'dropout' must be in [0, 1), found 2.0"]),
    ("  - {name: a, learning_rate: 1}\n", "",
     ["sweep.yml:11: experiments[0] (a): unknown key 'learning_rate'"]),
    ("  - {name: a, dataset: /no/such/folder}\n", "",
     ["experiment 'a': dataset '/no/such/folder'"]),
    ("  - {name: f, method: fusion, adapters: [nope]}\n", "",
     ["experiment 'f': adapter 'nope' is neither an experiment"]),
    ("  - {name: a}\n", "baseline: zzz\n", ["baseline 'zzz' is not an experiment"]),
])
def test_bad_input_is_one_line_each_and_nothing_trains(tmp_path, tiny_encoder, tiny_corpus,
                                                       capsys, experiments, top, words):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, experiments, top)
    assert compare.main([str(path)]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    for line in words:
        assert line in error
    assert len(error.strip().splitlines()) == len(words)
    assert not (tmp_path / "out").exists()


def test_corpus_that_is_not_utf8_names_file_and_line(tmp_path, tiny_encoder, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "devel.tsv").write_bytes(b"the\tO\n\ncaf\xe9\tO\n")
    path = write_sweep(tmp_path, tiny_encoder, corpus, "  - {name: a}\n")
    assert compare.main([str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"{corpus / 'devel.tsv'}:3: not UTF-8" in error and len(error.splitlines()) == 1


# ------------------------------------------------------------------ results that know their code


CODE_SWEEP = ("  - {name: full}\n  - {name: lora, method: lora, rank: 2}\n"
              "  - {name: crf, method: lora, rank: 2, crf: true}\n"
              "  - {name: aug, aug: {p: 0.5, copies: 0}}\n")


@pytest.fixture
def code_copy(tmp_path, monkeypatch) -> Path:
    """The project's Python files copied aside, and the sweep's fingerprints taken from the
    copy, so a test can edit "the code" without touching the checkout."""
    folder = tmp_path / "code"
    for source in ROOT.rglob("*.py"):
        relative = source.relative_to(ROOT)
        if relative.parts[0] not in (".venv", "tests", "bench"):
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_text(source.read_text())
    monkeypatch.setattr(fingerprint, "ROOT", folder)
    return folder


def fingerprints(path) -> dict[str, str]:
    return {r.cfg.name: r.fingerprint for r in planned(path)}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_code_edits_retrain_the_runs_that_execute_that_code(tmp_path, tiny_encoder, tiny_corpus,
                                                            code_copy):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, CODE_SWEEP)
    before = fingerprints(path)
    # comments, docstrings and formatting: nothing retrains
    edit(code_copy / "crf.py", "NEG = -1e4  # score", "NEG = -1e4  # still the score")
    edit(code_copy / "train.py", '"""Multiplier of the peak learning rate', '"""The factor of')
    edit(code_copy / "lora.py", "return alpha / math.sqrt(rank) if rslora else alpha / rank",
         "return (alpha / math.sqrt(rank)) if rslora else (alpha / rank)")
    assert fingerprints(path) == before
    # the CRF's code: the CRF run only
    edit(code_copy / "crf.py", "NEG = -1e4  #", "NEG = -1e5  #")
    after = fingerprints(path)
    assert [n for n in before if after[n] != before[n]] == ["crf"]
    # augmentation's code: the augmented run only; LoRA's: both LoRA runs
    edit(code_copy / "augment.py", "rng.random() < p", "p > rng.random()")
    edit(code_copy / "lora.py", "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
         "nn.init.kaiming_uniform_(self.lora_A, a=2.0)")
    again = fingerprints(path)
    assert sorted(n for n in after if again[n] != after[n]) == ["aug", "crf", "lora"]
    # the loop's code: everything
    edit(code_copy / "train.py", "return seed * 1_000_003 + epoch",
         "return seed * 1_000_033 + epoch")
    last = fingerprints(path)
    assert all(last[n] != again[n] for n in last)


def test_dry_run_says_why_a_run_is_stale(tmp_path, tiny_encoder, tiny_corpus, code_copy,
                                         capsys):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, CODE_SWEEP)
    assert compare.main([str(path)]) == 0
    edit(code_copy / "crf.py", "NEG = -1e4  #", "NEG = -1e5  #")
    capsys.readouterr()
    assert compare.main([str(path), "--dry-run", "--rank=4"]) == 0
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip()
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert rows["full"] == "finished" and rows["aug"] == "finished"  # rank is not theirs
    assert rows["lora"] == "stale (rank 2 -> 4)"
    assert rows["crf"] == "stale (rank 2 -> 4; code of crf.py)"


def test_option_keys_count_only_when_the_option_is_on(tmp_path, tiny_encoder, tiny_corpus):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, CODE_SWEEP)
    before = fingerprints(path)
    path.write_text(path.read_text().replace("repeats: 1", "repeats: 1\ncrf_lr: 0.5"))
    after = fingerprints(path)
    assert [n for n in before if after[n] != before[n]] == ["crf"]


def test_a_key_at_its_neutral_value_stays_out_of_the_fingerprint(tmp_path, tiny_encoder,
                                                                 tiny_corpus, monkeypatch):
    """As if `dropout` were a new key whose 0.1 reproduces what runs did before it existed."""
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, "  - {name: a}\n")
    [run] = planned(path)
    assert "dropout" in run.inputs["config"]
    monkeypatch.setattr(fingerprint, "NEUTRAL_VALUES", {"dropout": 0.1})
    [neutral] = planned(path)
    assert "dropout" not in neutral.inputs["config"]
    path.write_text(path.read_text().replace("repeats: 1", "repeats: 1\ndropout: 0.2"))
    assert planned(path)[0].inputs["config"]["dropout"] == 0.2


def test_a_standalone_run_removes_the_sweeps_record_of_its_folder(tmp_path, tiny_encoder,
                                                                   tiny_corpus, capsys):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, "  - {name: a}\n")
    assert compare.main([str(path)]) == 0
    folder = tmp_path / "out" / "a" / "seed3"
    assert (folder / "record.json").exists()
    import train

    assert train.main([str(path), "--epochs=2"]) == 0  # README's one-run command
    assert not (folder / "record.json").exists()
    capsys.readouterr()
    assert compare.main([str(path), "--dry-run"]) == 0
    assert "| new " in capsys.readouterr().out  # never "finished" with other weights


@pytest.mark.parametrize("offline", [True, False])
def test_an_encoder_neither_cached_nor_reachable_is_one_line_before_anything_runs(
        tmp_path, tiny_corpus, capsys, monkeypatch, offline):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    path = write_sweep(tmp_path, "dmis-lab/biobert-base-cased-v1.2", tiny_corpus,
                       "".join(f"  - {{name: e{i}}}\n" for i in range(5)))
    started = time.perf_counter()
    assert compare.main([str(path)]) == 2
    assert time.perf_counter() - started < 10
    [line] = capsys.readouterr().err.strip().splitlines()  # once, though five experiments use it
    # the encoder and the fix first, the experiments by count at the end
    assert line.startswith("model 'dmis-lab/biobert-base-cased-v1.2' is not in the Hugging Face "
                           "cache")
    assert line.endswith("(used by 5 experiments: 'e0', 'e1', 'e2', …)")
    assert str(tmp_path / "empty-cache") in line and "model: /path/to/folder" in line
    assert ("offline (HF_HUB_OFFLINE)" in line) == offline
    assert ("(http://127.0.0.1:9) cannot be reached" in line) != offline
    assert not (tmp_path / "out").exists()


def test_an_encoder_folder_without_weights_or_tokenizer_is_named(tmp_path, tiny_corpus, capsys):
    folder = tmp_path / "half-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    path = write_sweep(tmp_path, folder, tiny_corpus, "  - {name: a}\n")
    assert compare.main([str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"model '{folder}': folder {folder} lacks weights (*.safetensors or *.bin), "
                     f"a tokenizer (tokenizer.json or vocab.txt) (used by experiment 'a')")


def test_the_closing_line_names_every_file_the_table_rebuilt(tmp_path, tiny_encoder, tiny_corpus,
                                                             capsys):
    path = write_sweep(tmp_path, tiny_encoder, tiny_corpus, "  - {name: a}\n")
    assert compare.main([str(path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"written: {tmp_path / 'out' / 'summary.md'}, summary.csv, results.jsonl, "
                    f"pareto.png, curves.png")
