"""The sweep engine: plan the runs, run each in a process of its own, and keep honest records.

A sweep is experiments × seeds. Each run:

- has a **fingerprint** of everything its result depends on (`run_inputs`): the config keys
  that can change it (its method's own keys only for its method, an option's keys only when
  the option is on, no bookkeeping keys), the code of the files it runs (methods.code_files:
  the core, its method's, crf.py with a CRF, augment.py with augmentation, and which functions
  its entry of the method table runs), the corpus files, the encoder, and for a fusion its
  sources' fingerprints;
- runs in a **spawned child process**, so its peak memory is its own, and a run that raises,
  runs out of memory, segfaults or is killed takes nothing else down;
- leaves a **record**, `record.json` in its folder, written last: `{"fingerprint", "status":
  "ok" | "failed", "reason"}`. The parent deletes the record before the run starts, so files of
  an earlier attempt never pass for the new run's. A run counts as finished only when its
  record says ok with the fingerprint the run would have now. The record keeps the inputs by
  name, so a stale run says why (`stale_reasons`): which key, which file.

What this retrains, and why: editing the code of a file a run executes retrains that run (a
comment, a docstring or formatting never does); editing a key retrains the runs whose result
the key can change; a new key retrains nothing as long as it sits at its `NEUTRAL_VALUES`
value, the one that computes what runs did before it existed. Left out, so never a reason to
retrain: the config checker and the sweep, table and report code, which decide what runs and
how results are shown, not what a run computes; the installed packages (torch, transformers),
which a run's record names only through the encoder's files.

`--parallel N` keeps N children going at once: on one GPU they share it, over several
(`gpu: [0, 1]` or CUDA_VISIBLE_DEVICES) they are spread round-robin, and on the CPU the cores
are divided among them. A fusion starts only when its sources have finished. Each run is seeded
by its own config, so N changes when a run happens, not what it computes.

At scale (1,000 runs on many nodes, `--shard`): records are per-run files, so shards never
write the same file except the summary, which each writes whole (atomically) from every record
it finds; `--report` rebuilds it at the end. What would change beyond that: a shared filesystem's
metadata load (one folder per run), a cache of fingerprints per node, and a queue instead of
static shards when runs differ much in length.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

import config
import fingerprint
import methods
from config_check import make_config
from files import METRICS, RECORD, read_json, run_dir, start_run, write_atomic

ROOT = Path(__file__).resolve().parent
# Keys added after records began to name their inputs, with the value that computes what runs
# did before the key existed: at that value a key is left out of the fingerprint, so adding an
# option retrains nothing. (A key's default may change later; this value may not.)
NEUTRAL_VALUES: dict[str, object] = {"dora": False, "lora_plus_ratio": 0.0, "tag_scheme": "auto"}

# ---------------------------------------------------------------------------------------------
# Planning


@dataclass
class Run:
    """One (experiment, seed) of a sweep."""
    cfg: config.Config  # its seed set
    fingerprint: str = ""
    inputs: dict = field(default_factory=dict)  # what the fingerprint digests, by name
    sources: list[tuple[str, int]] = field(default_factory=list)  # (experiment, seed) it fuses

    @property
    def key(self) -> tuple[str, int]:
        return self.cfg.name, self.cfg.seed

    @property
    def label(self) -> str:
        return f"{self.cfg.name} seed {self.cfg.seed}"


def run_inputs(cfg: config.Config, corpus_paths: dict, sources: list[str]) -> dict:
    """What a run's result depends on, by name: config values, code digests by file, corpus
    files, the encoder, and the fingerprints of the runs it is built from."""
    from model import resolve_model

    values = dataclasses.asdict(cfg)
    keys = [k for k in methods.run_keys(cfg, list(values)) if k not in config.BOOKKEEPING_KEYS
            and not (k in NEUTRAL_VALUES and values[k] == NEUTRAL_VALUES[k])]
    code = {name: fingerprint.code_digest(ROOT / name) for name in methods.code_files(cfg)}
    code[f"methods.py ({cfg.method})"] = fingerprint.digest(methods.computing(cfg.method))
    return {"config": {k: values[k] for k in keys}, "code": code,
            "corpus": {split: fingerprint.file_digest(path)
                       for split, path in sorted(corpus_paths.items())},
            "encoder": fingerprint.encoder_digest(cfg.model, resolve_model(cfg.model)),
            "sources": sources}


def stale_reasons(old: dict | None, new: dict) -> list[str]:
    """What differs between a record's inputs and a run's inputs now, one phrase each:
    `lr 0.001 -> 0.02`, `code of crf.py`, `corpus train`, `encoder`, `a source`."""
    if not old:
        return ["its record predates named inputs"]
    reasons = []
    before, after = old.get("config", {}), new["config"]
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            reasons.append(f"{key} {before.get(key, '(absent)')!r} -> "
                           f"{after.get(key, '(absent)')!r}")
    for group, what in (("code", "code of "), ("corpus", "corpus ")):
        changed = {k for k in set(old.get(group, {})) | set(new[group])
                   if old.get(group, {}).get(k) != new[group].get(k)}
        reasons += [f"{what}{k}" for k in sorted(changed)]
    if old.get("encoder") != new["encoder"]:
        reasons.append("encoder")
    if old.get("sources") != new["sources"]:
        reasons.append("a source run")
    return reasons


def plan(configs: list[config.Config], corpus_paths) -> list[Run]:
    """One run per (experiment, seed), seeds seed ... seed + repeats - 1, every fusion after
    its sources. `corpus_paths(cfg)` gives a run's split files (read and checked already)."""
    by_name = {c.name: c for c in configs}
    sourced = {a for c in configs for a in methods.sources_of(c) if a in by_name}
    ordered = [c for c in configs if c.name in sourced] + \
        [c for c in configs if c.name not in sourced]
    runs: dict[tuple[str, int], Run] = {}
    for cfg in ordered:
        for seed in range(cfg.seed, cfg.seed + cfg.repeats):
            run = Run(dataclasses.replace(cfg, seed=seed))
            source_prints = []
            for adapter in methods.sources_of(cfg):
                if adapter in by_name:
                    run.sources.append((adapter, seed))
                    source_prints.append(runs[adapter, seed].fingerprint)
                else:  # a run folder given by path: its weights and config, by content
                    folder = Path(adapter)
                    source_prints.append(fingerprint.digest(
                        [fingerprint.file_digest(folder / "weights.safetensors"),
                         fingerprint.file_digest(folder / "config.json")]))
            run.inputs = run_inputs(run.cfg, corpus_paths(run.cfg), source_prints)
            run.fingerprint = fingerprint.digest(run.inputs)
            runs[run.key] = run
    return list(runs.values())


def shard(runs: list[Run], index: int, count: int) -> list[Run]:
    """The `index`-th (1-based) of `count` disjoint slices of the runs. A fusion and its
    sources form one group that stays in one slice; groups go, largest first, to the slice
    with the fewest runs so far (ties: the lowest slice), so the slices are the same on every
    node and about equal."""
    group_of = {run.key: run.key for run in runs}

    def root(key):
        while group_of[key] != key:
            key = group_of[key]
        return key

    for run in runs:
        for source in run.sources:
            group_of[root(source)] = root(run.key)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(root(run.key), []).append(run)
    loads = [0] * count
    chosen: set[tuple[str, int]] = set()
    for members in sorted(groups.values(), key=lambda g: -len(g)):  # stable: plan order on ties
        target = loads.index(min(loads))
        loads[target] += len(members)
        if target == index - 1:
            chosen |= {r.key for r in members}
    return [run for run in runs if run.key in chosen]


# ---------------------------------------------------------------------------------------------
# The output folder: one sweep's


OWNER = ".sweep.json"  # in an output folder: which config's sweep fills it


def folder_owner(output_dir: Path, config_path: str | Path) -> str | None:
    """Why this sweep must not use `output_dir` (another config's sweep fills it), or None.
    Two sweeps in one folder would share run names and overwrite each other's summary."""
    owner = read_json(output_dir / OWNER)
    mine = str(Path(config_path).resolve())
    if owner is None or owner.get("config") == mine:
        return None
    return (f"{config_path}: output_dir {output_dir} holds the runs of another sweep "
            f"({owner.get('config')}); give this one its own (output_dir: ...), or remove "
            f"{output_dir / OWNER} to let it take the folder over")


def claim_folder(output_dir: Path, config_path: str | Path) -> None:
    """Mark `output_dir` as this config's (before its first run)."""
    if read_json(output_dir / OWNER) is None:
        write_atomic(output_dir / OWNER, json.dumps({"config": str(Path(config_path).resolve())}))


# ---------------------------------------------------------------------------------------------
# Records


def read_record(run: Run) -> dict | None:
    """The run's record if it belongs to this very run (same fingerprint), else None."""
    record = read_json(run_dir(run.cfg) / RECORD)
    if record is None or record.get("fingerprint") != run.fingerprint:
        return None
    if record.get("status") == "ok":
        metrics = read_json(run_dir(run.cfg) / METRICS)
        if metrics is None:
            return None
        record["metrics"] = metrics
    return record


def status(run: Run) -> tuple[str, list[str]]:
    """finished | failed | stale | new, and for a stale run why: what differs between the inputs
    its record names and the run's inputs now (a record of another config, code, corpus or
    encoder)."""
    record = read_json(run_dir(run.cfg) / RECORD)
    if record is None:
        return "new", []
    mine = read_record(run)
    if mine is None:
        return "stale", stale_reasons(record.get("inputs"), run.inputs) or ["unfinished"]
    return ("finished" if mine["status"] == "ok" else "failed"), []


def write_record(run: Run, status_: str, reason: str = "") -> None:
    write_atomic(run_dir(run.cfg) / RECORD, json.dumps(
        {"fingerprint": run.fingerprint, "status": status_, "reason": reason,
         "experiment": run.cfg.name, "seed": run.cfg.seed, "inputs": run.inputs}, indent=2))


# ---------------------------------------------------------------------------------------------
# Running: one spawned child per run


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this run's process when the sweep's process dies, however it dies,
    so that no orphan run goes on writing into a folder a new sweep has taken over."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the request was made
            os._exit(1)


def child(cfg_values: dict, run_fingerprint: str, inputs: dict, threads: int,
          log_path: str | None) -> None:
    """The body of a run's process: train, then write the record (ok, or failed with why)."""
    die_with_parent()
    if log_path:  # parallel runs write to their own log; the parent's terminal shows progress
        stream = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        sys.stdout = sys.stderr = stream
    import torch

    import train

    torch.set_num_threads(threads)
    cfg = make_config(cfg_values, f"run {cfg_values['name']}")
    run = Run(cfg, run_fingerprint, inputs)
    try:
        train.train(cfg)
    except KeyboardInterrupt:  # Ctrl-C stops the sweep: the run did not end, so no record
        os._exit(130)
    except BaseException as error:  # noqa: BLE001 - whatever it was, the record says so
        traceback.print_exc()
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        if isinstance(error, torch.OutOfMemoryError):
            reason = "out of memory: " + reason
        write_record(run, "failed", reason)
        sys.stdout.flush()
        os._exit(1)
    write_record(run, "ok")


def exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"the run's process exited with status {code} before writing its record"


def device_slots(cfg: config.Config, parallel: int) -> list[int]:
    """The CUDA device of each of the `parallel` slots (-1: CPU), round-robin over the
    configured list, or over CUDA_VISIBLE_DEVICES' devices when `gpu` is the default single
    device and several are visible."""
    import torch

    if isinstance(cfg.gpu, list):
        devices = cfg.gpu
    elif cfg.gpu < 0 or not torch.cuda.is_available():
        devices = [-1]
    elif cfg.gpu == 0 and torch.cuda.device_count() > 1 and os.environ.get("CUDA_VISIBLE_DEVICES"):
        devices = list(range(torch.cuda.device_count()))
    else:
        devices = [cfg.gpu]
    return [devices[i % len(devices)] for i in range(parallel)]


def cpu_threads(parallel: int) -> int:
    """The cores divided among the parallel runs (at least one each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // parallel)


def execute(runs: list[Run], parallel: int, on_finish, target=None) -> list[Run]:
    """Train the runs, at most `parallel` at once, each fusion after its sources; call
    `on_finish(run, record)` as each ends. Returns the runs that failed. `target` is the
    body of each run's process, `child` unless a test puts a crashing one in its place."""
    target = target or child
    context = multiprocessing.get_context("spawn")
    slots = device_slots(runs[0].cfg, parallel) if runs else []
    threads = cpu_threads(parallel)
    pending = list(runs)
    running: dict[int, tuple[Run, multiprocessing.Process]] = {}  # slot -> run
    done: dict[tuple[str, int], bool] = {}  # key -> finished ok
    failed = []
    unreported: list[tuple[Run, dict]] = []  # ended, on_finish not yet called

    def settle(run: Run, record: dict) -> None:
        done[run.key] = record["status"] == "ok"
        if not done[run.key]:
            failed.append(run)
        unreported.append((run, record))

    try:
        while pending or running or unreported:
            for run in list(pending):
                if len(running) == parallel:
                    break
                blocked = [s for s in run.sources if s in {r.key for r in pending + [
                    r for r, _ in running.values()]}]
                if blocked:
                    continue
                broken = [s for s in run.sources if not done.get(s, True)]
                pending.remove(run)
                if broken:
                    write_record(run, "failed", f"source {broken[0][0]} seed {broken[0][1]} "
                                                f"failed")
                    settle(run, read_json(run_dir(run.cfg) / RECORD))
                    continue
                slot = min(set(range(parallel)) - set(running))
                cfg = dataclasses.replace(run.cfg, gpu=slots[slot])
                folder = run_dir(cfg)
                folder.mkdir(parents=True, exist_ok=True)
                start_run(folder)  # nothing of an earlier attempt survives
                log_path = str(folder / "output.log") if parallel > 1 else None
                process = context.Process(
                    target=target, name=run.label,
                    args=(dataclasses.asdict(cfg), run.fingerprint, run.inputs, threads, log_path))
                process.start()
                running[slot] = (run, process)
            # Reported once the free slots are refilled: rebuilding the table (seconds, with
            # plots) then overlaps the next runs instead of holding them back.
            while unreported:
                on_finish(*unreported.pop(0))
            if not running:
                continue
            wait([p.sentinel for _, p in running.values()])
            for slot, (run, process) in list(running.items()):
                if process.is_alive():
                    continue
                process.join()
                del running[slot]
                record = read_record(run)
                if record is None:  # died before it could say why
                    write_record(run, "failed", exit_reason(process.exitcode))
                    record = read_json(run_dir(run.cfg) / RECORD)
                settle(run, record)
    except KeyboardInterrupt:
        for _, process in running.values():
            process.terminate()
        for _, process in running.values():
            process.join()
        raise
    return failed
