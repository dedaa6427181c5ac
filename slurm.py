"""Run a sweep's shards as a Slurm job array, through submitit (optional: pip install submitit).

    python slurm.py CONFIG.yml --shards=N [--partition=P] [--timeout_min=M] [--gpus_per_node=G]
                    [--cpus_per_task=C] [--mem_gb=M] [--cluster=slurm|local|debug]
                    [compare.py flags and --key=value overrides]

The sweep is checked first, as compare.py checks it (every problem one line, exit 2, nothing
submitted). Then one array task per shard runs `compare.py CONFIG.yml --shard=K/N ...` into
the shared output_dir, at most N at once; this process waits for them and builds the table from
every record (`--report`). Exit status 1 if a shard or a run failed, else 0. Killing this
process leaves the jobs running: rerun with `--report`, or rerun the whole command, which
trains only what has no record. `--cluster=local` runs the shards as local processes, to try it
without Slurm. Submission scripts and each task's log: <output_dir>/.slurm/.

The plain-sbatch equivalent, without submitit, is in README ("Clusters").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import compare
import config

ROOT = Path(__file__).resolve().parent
# Launcher flags and the type submitit wants for each (the rest goes to compare.py).
LAUNCH_FLAGS = {"shards": int, "partition": str, "timeout_min": int, "gpus_per_node": int,
                "cpus_per_task": int, "mem_gb": int, "cluster": str}


def split_launch_flags(args: list[str]) -> tuple[dict, list[str], list[str]]:
    """(launcher settings, compare.py's arguments, problems)."""
    launch, rest, problems = {}, [], []
    for arg in args:
        key, _, value = arg.removeprefix("--").partition("=")
        if not (arg.startswith("--") and key in LAUNCH_FLAGS):
            rest.append(arg)
            continue
        try:
            launch[key] = LAUNCH_FLAGS[key](value)
        except ValueError:
            problems.append(f"command line: --{key} expects {LAUNCH_FLAGS[key].__name__}, "
                            f"found {value!r}")
    if not any(arg.startswith("--shards=") for arg in args):
        problems.append("command line: --shards=N is required")
    elif launch.get("shards", 1) < 1:
        problems.append(f"command line: --shards expects N >= 1, found {launch['shards']}")
    if any(arg.startswith(("--shard=", "--report")) for arg in rest):
        problems.append("command line: slurm.py makes the shards and the report itself; drop "
                        "--shard and --report")
    return launch, rest, problems


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0].startswith("--"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    path = argv[0]
    launch, rest, problems = split_launch_flags(argv[1:])
    try:
        configs = compare.prepare([path, *rest])[0]
    except config.ConfigError as error:
        problems.append(str(error))
    try:
        import submitit
    except ImportError:
        problems.append("slurm.py needs submitit: pip install submitit")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2

    shards = launch.pop("shards")
    folder = Path(configs[0].output_dir) / ".slurm"
    executor = submitit.AutoExecutor(folder=folder, cluster=launch.pop("cluster", None))
    partition = launch.pop("partition", None)
    executor.update_parameters(name=f"sweep-{Path(path).stem}", slurm_partition=partition,
                               slurm_array_parallelism=shards, **launch)
    # The tasks import compare.py from here, whatever their working directory: they inherit
    # the environment as it is at submission.
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), before]))
    try:
        jobs = executor.map_array(compare.main, [[path, f"--shard={k}/{shards}", *rest]
                                                 for k in range(1, shards + 1)])
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
    print(f"submitted {shards} shards ({executor.cluster}, job {jobs[0].job_id}...); logs in "
          f"{folder}", flush=True)
    statuses = []
    for k, job in enumerate(jobs, start=1):
        try:
            statuses.append(job.result())
        except Exception as error:  # noqa: BLE001 - a lost or crashed task: say which, go on
            print(f"shard {k}/{shards} (job {job.job_id}) failed ({type(error).__name__}); "
                  f"its log: {job.paths.stderr}", file=sys.stderr)
            statuses.append(1)
    report = compare.main([path, "--report", *rest])
    return 1 if any(statuses) or report else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
