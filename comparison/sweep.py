"""The sweep: plan the runs of a comparison and keep honest records of them.

A sweep is experiments × seeds. Each run:

- has a **fingerprint** of everything its result depends on (fingerprint.py: its config keys,
  the code it executes, its corpus and encoder, and for a fusion its sources' fingerprints);
- leaves a **record**, `record.json` in its folder, written last by its process (runner.py):
  `{"fingerprint", "status": "ok" | "failed", "reason", "inputs"}`. The runner deletes the record
  before the run starts, so files of an earlier attempt never pass for the new run's. A run
  counts as finished only when its record says ok with the fingerprint the run would have now.
  The record keeps the inputs by name, so a stale run says why (fingerprint.stale_reasons).

A sweep owns its output folder (`.sweep.json`): two sweeps in one folder would share run names
and overwrite each other's summary.

At scale (1,000 runs on many nodes, `--shard`): records are per-run files, so shards never
write the same file except the summary, which each writes whole (atomically) from every record
it finds; `--report` rebuilds it at the end. What would change beyond that: a shared filesystem's
metadata load (one folder per run), a cache of fingerprints per node, and a queue instead of
static shards when runs differ much in length.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import config
import methods
from comparison import fingerprint
from runs.folders import METRICS, RECORD, read_json, run_dir, write_atomic

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



def plan(configs: list[config.Config], corpus_origins) -> list[Run]:
    """One run per (experiment, seed), seeds seed ... seed + repeats - 1, every fusion after
    its sources. `corpus_origins(cfg)` gives what a run's splits are read from (read and
    checked already: preflight.check_inputs)."""
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
            run.inputs = fingerprint.run_inputs(run.cfg, corpus_origins(run.cfg),
                                                source_prints)
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
        return "stale", fingerprint.stale_reasons(record.get("inputs"), run.inputs) or \
            ["unfinished"]
    return ("finished" if mine["status"] == "ok" else "failed"), []


def write_record(run: Run, status_: str, reason: str = "") -> None:
    write_atomic(run_dir(run.cfg) / RECORD, json.dumps(
        {"fingerprint": run.fingerprint, "status": status_, "reason": reason,
         "experiment": run.cfg.name, "seed": run.cfg.seed, "inputs": run.inputs}, indent=2))
