"""The comparison: every experiment of a config × its seeds, and one table at the end.

    python compare.py configs/bc5cdr.yml [--parallel=N] [--only=A,B] [--shard=K/N]
                                         [--report] [--dry-run] [--debug] [--key=value ...]

First everything is checked: every experiment's config (runs/config_files.py), every corpus,
encoder and fusion source the sweep reads (comparison/preflight.py). Any problem is one line
(file:line or key, and what was expected), and the sweep stops with status 2 before anything
trains. Then comparison/sweep.py plans the runs, comparison/runner.py trains what is not finished
yet, each run in its own process, and comparison/report.py rebuilds the table from the runs'
records after every run, so a crash loses no finished run and never shows a stale one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from comparison import preflight, report, runner, sweep
from config import ConfigError
from runs import config_files
from runs.config_files import grid_groups

USAGE = """usage: python compare.py CONFIG.yml [options] [--key=value ...]

Run every experiment of CONFIG.yml, `repeats` seeds each, and write one table
(<output_dir>/summary.md, summary.csv, results.jsonl, pareto.png, curves.png).

options:
  --parallel=N   N runs at once: sharing one GPU, spread over `gpu: [..]` or
                 CUDA_VISIBLE_DEVICES, or dividing the CPU cores (default 1)
  --only=A,B     run only these experiments (a fusion brings its sources); the
                 table keeps every experiment's finished runs
  --shard=K/N    run the K-th (1..N) of N disjoint slices of the runs (a fusion
                 stays with its sources): one Slurm array task each
  --report       build the table from the records that exist; train nothing
  --dry-run      print the planned runs (device, finished or not); train nothing
  --debug        show a traceback for bad input instead of one line per problem
  --key=value    override a config key for every experiment (YAML value:
                 --lr=3e-4, --targets=[query,value], --baseline=full)
  -h, --help     this text and every config key
"""


def split_flags(argv: list[str]) -> tuple[dict, list[str]]:
    """compare.py's own flags (`--flag=value` or `--flag value`), and the config overrides."""
    flags, rest, i = {}, [], 0
    valued = ("--parallel", "--only", "--shard")
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in valued:
            if "=" in arg:
                flags[name] = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                flags[name] = argv[i + 1]
                i += 1
            else:
                raise ConfigError(f"command line: {name} needs a value")
        elif arg in ("--report", "--dry-run", "--debug"):
            flags[arg] = True
        else:
            rest.append(arg)
        i += 1
    return flags, rest


def prepare(argv: list[str]):
    """Everything checked and planned: (configs, settings, the runs to consider, flags)."""
    path, (flags, rest) = argv[0], split_flags(argv[1:])
    overrides = config_files.parse_overrides(rest)
    configs = config_files.experiment_configs(path, overrides)
    settings = config_files.sweep_settings(path, overrides)
    problems = []
    if len({c.output_dir for c in configs}) > 1:
        problems.append(f"{path}: output_dir must be the same for every experiment of a sweep")
    names = {c.name for c in configs}
    problems += [f"{path}: baseline {base!r} is not an experiment of this sweep"
                 for base in settings.baseline if base not in names | set(grid_groups(configs))]
    try:
        parallel = int(flags.get("--parallel", 1))
        assert parallel >= 1
    except (ValueError, AssertionError):
        problems.append(f"command line: --parallel expects an integer >= 1, found "
                        f"{flags['--parallel']!r}")
        parallel = 1
    shard = None
    if "--shard" in flags:
        try:
            index, count = (int(x) for x in flags["--shard"].split("/"))
            assert 1 <= index <= count
            shard = (index, count)
        except (ValueError, AssertionError):
            problems.append(f"command line: --shard expects K/N with 1 <= K <= N, found "
                            f"{flags['--shard']!r}")
    only = None
    if "--only" in flags:  # experiment names, or a grid's name for all its combinations
        groups = grid_groups(configs)
        asked = flags["--only"].split(",")
        unknown = [name for name in asked if name not in names and name not in groups]
        if unknown:
            problems.append(f"command line: --only names unknown experiments {unknown} (the "
                            f"experiments: {', '.join(sorted(names | set(groups)))})")
        only = [member for name in asked for member in groups.get(name, [name])]
    more, corpus_origins = preflight.check_inputs(configs)
    problems += more
    owner = sweep.folder_owner(Path(configs[0].output_dir), path)
    if owner:
        problems.append(owner)
    if problems:
        raise ConfigError("\n".join(problems))
    runs = sweep.plan(configs, corpus_origins)
    return configs, settings, runs, flags, parallel, shard, only


def dry_run_status(status: str, reasons: list[str]) -> str:
    """`stale (lr 0.001 -> 0.02; code of crf.py)`: a stale run says why, at most three
    reasons."""
    if not reasons:
        return status
    more = f"; +{len(reasons) - 3} more" if len(reasons) > 3 else ""
    return f"{status} ({'; '.join(reasons[:3])}{more})"


def chosen_runs(runs: list[sweep.Run], only, shard) -> list[sweep.Run]:
    if shard:
        runs = sweep.shard(runs, *shard)
    if only:
        wanted = set(only)
        wanted |= {s for r in runs if r.cfg.name in wanted for s, _ in r.sources}
        runs = [r for r in runs if r.cfg.name in wanted]
    return runs


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0].startswith("--"):
        print(USAGE + "\n" + config_files.config_help())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        configs, settings, runs, flags, parallel, shard, only = prepare(argv)
    except ConfigError as error:
        if "--debug" in argv:
            raise
        print(str(error), file=sys.stderr)
        return 2
    from train import device_notice  # imports torch: only once the input is known good

    notice = device_notice(configs)
    if notice and not flags.get("--report"):
        print(notice, file=sys.stderr)
    mine = chosen_runs(runs, only, shard)
    statuses = {run.key: sweep.status(run) for run in mine}  # key -> (status, why stale)
    if flags.get("--dry-run"):
        slots = runner.device_slots(configs[0], parallel)
        print(report.text_table(["experiment", "seed", "device", "status"], [
            [r.cfg.name, str(r.cfg.seed), "cpu" if slots[i % parallel] < 0 else
             f"cuda:{slots[i % parallel]}", dry_run_status(*statuses[r.key])]
            for i, r in enumerate(mine)]))
        to_train = sum(status != "finished" for status, _ in statuses.values())
        print(f"{to_train} of {len(mine)} runs to train")
        return 0
    if not flags.get("--report"):
        todo = [r for r in mine if statuses[r.key][0] != "finished"]
        for run in mine:
            if statuses[run.key][0] == "finished":
                print(f"[{run.label}] already finished")
        bar = None
        if parallel > 1 and sys.stderr.isatty():
            from tqdm import tqdm
            bar = tqdm(total=len(todo), desc="runs", unit="run")

        def on_finish(run: sweep.Run, record: dict) -> None:
            what = (f"test F1 {record['metrics']['test']['f1']:.4f}" if record["status"] == "ok"
                    else f"FAILED: {record['reason']}")
            (bar.write if bar else print)(f"[{run.label}] finished: {what}")
            if bar:
                bar.update(1)
            report.write_summary(configs, runs, settings)

        sweep.claim_folder(Path(configs[0].output_dir), argv[0])
        try:
            failed = runner.execute(todo, parallel, on_finish)
        except KeyboardInterrupt:  # the runs in flight are stopped and leave no record
            print(f"\ninterrupted: the finished runs stay in {configs[0].output_dir}; the same "
                  f"command trains the rest", file=sys.stderr)
            return 130
        if bar:
            bar.close()
    else:
        failed = []
    rows, written = report.write_summary(configs, runs, settings)
    print("\nSummary\n" + report.ascii_table(rows))
    print(f"written: {written[0]}, {', '.join(path.name for path in written[1:])}")
    if failed:
        print(f"failed runs: {', '.join(r.label for r in failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
