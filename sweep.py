"""The sweep engine: plan the runs, run each in a process of its own, and keep honest records.

A sweep is experiments × seeds. Each run:

- has a **fingerprint** of everything its result depends on (fingerprint.py): the resolved
  config, the corpus files, the encoder, and for a fusion its sources' fingerprints;
- runs in a **spawned child process**, so its peak memory is its own, and a run that raises,
  runs out of memory, segfaults or is killed takes nothing else down;
- leaves a **record**, `record.json` in its folder, written last: `{"fingerprint", "status":
  "ok" | "failed", "reason"}`. The parent deletes the record before the run starts, so files of
  an earlier attempt never pass for the new run's. A run counts as finished only when its
  record says ok with the fingerprint the run would have now.

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
from files import read_json, run_dir, write_atomic

RECORD = "record.json"

# ---------------------------------------------------------------------------------------------
# Planning


@dataclass
class Run:
    """One (experiment, seed) of a sweep."""
    cfg: config.Config  # its seed set
    fingerprint: str = ""
    sources: list[tuple[str, int]] = field(default_factory=list)  # (experiment, seed) it fuses

    @property
    def key(self) -> tuple[str, int]:
        return self.cfg.name, self.cfg.seed

    @property
    def label(self) -> str:
        return f"{self.cfg.name} seed {self.cfg.seed}"


def source_problem(source: config.Config, cfg: config.Config) -> str | None:
    """Why the sweep experiment `source` cannot feed the fusion experiment `cfg`, or None."""
    if source.method != "lora":
        return f"method is {source.method!r}, not 'lora'"
    if source.model != cfg.model:
        return f"model {source.model!r} differs from {cfg.model!r}"
    needed = set(range(cfg.seed, cfg.seed + cfg.repeats))
    have = set(range(source.seed, source.seed + source.repeats))
    if not needed <= have:
        return f"it runs seeds {sorted(have)}, the fusion needs {sorted(needed)}"
    return None


def fusion_problems(configs: list[config.Config]) -> list[str]:
    """Every fusion experiment's sources checked before anything trains: one line each."""
    import fusion

    by_name = {c.name: c for c in configs}
    problems = []
    for cfg in (c for c in configs if c.method == "fusion"):
        for name in cfg.adapters:
            if name in by_name:
                problem = source_problem(by_name[name], cfg)
                if problem:
                    problems.append(f"experiment {cfg.name!r}: source {name!r}: {problem}")
            elif Path(name).is_dir():
                try:
                    fusion.load_source_adapter(name)
                except ValueError as error:
                    problems.append(f"experiment {cfg.name!r}: {error}")
            else:
                problems.append(f"experiment {cfg.name!r}: adapter {name!r} is neither an "
                                f"experiment of this sweep ({', '.join(by_name)}) nor a run "
                                f"folder")
        targets = {tuple(by_name[n].targets) for n in cfg.adapters if n in by_name}
        if len(targets) > 1:
            problems.append(f"experiment {cfg.name!r}: its sources adapt different linears: "
                            f"{sorted(targets)}")
    return problems


def run_fingerprint(cfg: config.Config, corpus_paths: dict, sources: list[str]) -> str:
    """Config, corpus files, encoder, and the fingerprints of a fusion's sources."""
    from model import resolve_model

    return fingerprint.digest({
        "config": fingerprint.config_digest(cfg, config.BOOKKEEPING_KEYS),
        "corpus": fingerprint.corpus_digest(corpus_paths),
        "encoder": fingerprint.encoder_digest(cfg.model, resolve_model(cfg.model)),
        "sources": sources})


def plan(configs: list[config.Config], corpus_paths) -> list[Run]:
    """One run per (experiment, seed), seeds seed ... seed + repeats - 1, every fusion after
    its sources. `corpus_paths(cfg)` gives a run's split files (read and checked already)."""
    by_name = {c.name: c for c in configs}
    sourced = {a for c in configs if c.method == "fusion" for a in c.adapters if a in by_name}
    ordered = [c for c in configs if c.name in sourced] + \
        [c for c in configs if c.name not in sourced]
    runs: dict[tuple[str, int], Run] = {}
    for cfg in ordered:
        for seed in range(cfg.seed, cfg.seed + cfg.repeats):
            run = Run(dataclasses.replace(cfg, seed=seed))
            source_prints = []
            if cfg.method == "fusion":
                for adapter in cfg.adapters:
                    if adapter in by_name:
                        run.sources.append((adapter, seed))
                        source_prints.append(runs[adapter, seed].fingerprint)
                    else:  # a run folder given by path: its weights and config, by content
                        folder = Path(adapter)
                        source_prints.append(fingerprint.digest(
                            [fingerprint.file_digest(folder / "weights.safetensors"),
                             fingerprint.file_digest(folder / "config.json")]))
            run.fingerprint = run_fingerprint(run.cfg, corpus_paths(run.cfg), source_prints)
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
# Records


def read_record(run: Run) -> dict | None:
    """The run's record if it belongs to this very run (same fingerprint), else None."""
    record = read_json(run_dir(run.cfg) / RECORD)
    if record is None or record.get("fingerprint") != run.fingerprint:
        return None
    if record.get("status") == "ok":
        metrics = read_json(run_dir(run.cfg) / "metrics.json")
        if metrics is None:
            return None
        record["metrics"] = metrics
    return record


def status(run: Run) -> str:
    """finished | failed | stale (a record of another config, corpus or encoder) | new."""
    record = read_json(run_dir(run.cfg) / RECORD)
    if record is None:
        return "new"
    mine = read_record(run)
    if mine is None:
        return "stale"
    return "finished" if mine["status"] == "ok" else "failed"


def write_record(run: Run, status_: str, reason: str = "") -> None:
    write_atomic(run_dir(run.cfg) / RECORD, json.dumps(
        {"fingerprint": run.fingerprint, "status": status_, "reason": reason,
         "experiment": run.cfg.name, "seed": run.cfg.seed}, indent=2))


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


def child(cfg_values: dict, run_fingerprint_: str, threads: int, log_path: str | None) -> None:
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
    cfg = config.make_config(cfg_values, f"run {cfg_values['name']}")
    run = Run(cfg, run_fingerprint_)
    try:
        train.train(cfg)
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
                for stale in (RECORD, "metrics.json"):  # nothing of an earlier attempt survives
                    (folder / stale).unlink(missing_ok=True)
                log_path = str(folder / "output.log") if parallel > 1 else None
                process = context.Process(
                    target=target, name=run.label,
                    args=(dataclasses.asdict(cfg), run.fingerprint, threads, log_path))
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
