"""Run a sweep's shards as a Slurm job array, through submitit (optional: pip install submitit).

    python -m comparison.slurm CONFIG.yml --shards=N [--partition=P] [--timeout_min=M]
        [--gpus_per_node=G] [--cpus_per_task=C] [--mem_gb=M] [--cluster=slurm|local|debug]
        [compare.py flags and --key=value overrides]

It drives compare.py as a command, never as a module: first `compare.py CONFIG.yml --dry-run`
checks the sweep (every problem one line, exit 2, nothing submitted) and shows the runs; then
one array task per shard runs `compare.py CONFIG.yml --shard=K/N ...` into the shared
output_dir, at most N at once; this process waits for them, and `compare.py --report` builds
the table from every record. Exit status 1 if a shard or a run failed, else 0. Killing this
process leaves the jobs running: rerun with `--report`, or rerun the whole command, which
trains only what has no record. `--cluster=local` runs the shards as local processes, to try it
without Slurm. Submission scripts and each task's log: <output_dir>/.slurm/.

The plain-sbatch equivalent, without submitit, is in README ("Clusters").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runs.config_files import experiment_configs, parse_overrides

COMPARE = Path(__file__).resolve().parent.parent / "compare.py"
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


def compare(path: str, args: list[str], capture: bool = False) -> subprocess.CompletedProcess:
    """`python compare.py PATH ARGS...` in this Python, from this working directory."""
    return subprocess.run([sys.executable, str(COMPARE), path, *args], capture_output=capture,
                          text=True, check=False)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0].startswith("--"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    path = argv[0]
    launch, rest, problems = split_launch_flags(argv[1:])
    checked = compare(path, ["--dry-run", *[a for a in rest if not a.startswith(
        ("--shard=", "--report"))]], capture=True)
    if checked.returncode:
        problems += checked.stderr.strip().splitlines()
    try:
        import submitit
    except ImportError:
        problems.append("slurm.py needs submitit: pip install submitit")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    print(checked.stdout, end="")

    shards = launch.pop("shards")
    # compare.py resolves the output folder the same way: the config's, or --output_dir=...
    overrides = parse_overrides([a for a in rest if a.startswith("--output_dir=")])
    folder = Path(experiment_configs(path, overrides)[0].output_dir) / ".slurm"
    executor = submitit.AutoExecutor(folder=folder, cluster=launch.pop("cluster", None))
    partition = launch.pop("partition", None)
    executor.update_parameters(name=f"sweep-{Path(path).stem}", slurm_partition=partition,
                               slurm_array_parallelism=shards, **launch)
    command = submitit.helpers.CommandFunction([sys.executable, str(COMPARE), path, *rest],
                                               cwd=os.getcwd())
    jobs = executor.map_array(command, [f"--shard={k}/{shards}" for k in range(1, shards + 1)])
    print(f"submitted {shards} shards ({executor.cluster}, job {jobs[0].job_id}...); logs in "
          f"{folder}", flush=True)
    failed = 0
    for k, job in enumerate(jobs, start=1):
        try:
            job.result()
        except Exception as error:  # noqa: BLE001 - a failed run, lost or crashed task: go on
            print(f"shard {k}/{shards} (job {job.job_id}) failed ({type(error).__name__}); "
                  f"its log: {job.paths.stderr}", file=sys.stderr)
            failed += 1
    report = compare(path, ["--report", *rest]).returncode
    return 1 if failed or report else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
