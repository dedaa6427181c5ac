"""Running a sweep's runs: each in a spawned process of its own, up to N at once.

A run's process trains it (train.py) and writes its record (sweep.py): ok, or failed with why.
Spawned, so its peak memory is its own, and a run that raises, runs out of memory, segfaults or
is killed takes nothing else down; the parent records such a death itself. Ctrl-C stops the
sweep: the runs in flight are stopped and leave no record.

`--parallel N` keeps N children going at once: on one GPU they share it, over several
(`gpu: [0, 1]` or CUDA_VISIBLE_DEVICES) they are spread round-robin, and on the CPU the cores
are divided among them. A fusion starts only when its sources have finished. Each run is seeded
by its own config, so N changes when a run happens, not what it computes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
import traceback
from multiprocessing.connection import wait
from pathlib import Path

import config
from comparison.fingerprint import token_cache_key
from comparison.sweep import Run, read_record, write_record
from runs.config_files import make_config
from runs.folders import RECORD, read_json, run_dir, start_run


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
    # The sweep's runs of one corpus and encoder share its tokens: the first tokenises them.
    cache = Path(cfg.output_dir) / ".cache" / f"tokens-{token_cache_key(cfg, inputs)}.pickle"
    try:
        train.train(cfg, token_cache=cache)
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
    """The CUDA device of each of the `parallel` slots (-1: CPU), round-robin over `gpu`'s
    devices. One device: the CPU for -1 or without CUDA, and for the default 0 every device of
    CUDA_VISIBLE_DEVICES when it names several."""
    import torch

    devices = cfg.gpu
    if len(devices) == 1:
        if devices[0] < 0 or not torch.cuda.is_available():
            devices = [-1]
        elif devices == [0] and torch.cuda.device_count() > 1 and \
                os.environ.get("CUDA_VISIBLE_DEVICES"):
            devices = list(range(torch.cuda.device_count()))
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
                cfg = dataclasses.replace(run.cfg, gpu=[slots[slot]])
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
