"""Wall time of a whole sweep, and each run's split into setup, training and evaluation.

    python bench/sweep_time.py OUT_DIR CONFIG.yml [--limit=SECONDS] [--parallel=N]
                               [compare.py flags and overrides]

Runs `compare.py CONFIG.yml --output_dir=OUT_DIR ...` in a fresh process (nothing finished:
OUT_DIR must not exist), times it, and prints one line per run from its records plus the
totals. `--limit` stops the sweep (its whole process group) after that many seconds and reports
how many of the planned runs had finished by then: on a lent GPU with minutes of device time,
a sweep that would miss its target still gives a measured figure. `setup` is the time inside a
run before its first step (corpus, encoder, tokens, windows, tagger); what the runs do not
cover of the wall time (times the parallel runs) is process start-up (imports), the checks
before the first run and the table.

Examples (targets of the sweep issue, one H200; bench/sweep_targets.sh runs both):
    python bench/sweep_time.py /tmp/minilm configs/demo_cpu.yml --parallel=4 --gpu=0 \\
        --precision=fp16 --train_limit=0 --eval_limit=0
    python bench/random_bert.py /tmp/bert-base   # BioBERT-sized random encoder
    python bench/sweep_time.py /tmp/bc5cdr configs/bc5cdr.yml --parallel=6 --model=/tmp/bert-base
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def planned_runs(args: list[str]) -> int | None:
    """How many runs the sweep plans, from `compare.py --dry-run`'s last line."""
    dry = subprocess.run([sys.executable, str(ROOT / "compare.py"), *args, "--dry-run"],
                         check=False, cwd=ROOT, capture_output=True, text=True)
    found = re.search(r"(\d+) of (\d+) runs to train", dry.stdout)
    return int(found.group(2)) if found else None


def run_sweep(args: list[str], limit: float | None) -> tuple[int | None, float]:
    """Run compare.py; its exit status (None: stopped at the limit) and wall seconds."""
    started = time.perf_counter()
    sweep = subprocess.Popen([sys.executable, str(ROOT / "compare.py"), *args], cwd=ROOT,
                             start_new_session=True)  # its own process group, runs included
    try:
        status = sweep.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
        status = None
    return status, time.perf_counter() - started


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    out, rest = Path(argv[0]), argv[1:]
    limit = None
    for arg in [a for a in rest if a.startswith("--limit=")]:
        limit = float(arg.split("=", 1)[1])
        rest.remove(arg)
    if out.exists():
        sys.exit(f"{out} exists: a sweep timing starts from nothing")
    args = [*rest, f"--output_dir={out}"]
    planned = planned_runs(args)
    status, wall = run_sweep(args, limit)
    results = out / "results.jsonl"
    runs = [json.loads(line) for line in results.read_text().splitlines()] \
        if results.exists() else []
    parts = ("setup_seconds", "train_seconds", "devel_eval_seconds", "test_eval_seconds")
    print(f"\n{'run':40} {'setup':>7} {'train':>7} {'devel':>7} {'test':>7} {'tokens/s':>9}")
    totals = dict.fromkeys(parts, 0.0)
    for run in runs:
        if run["status"] != "ok":
            print(f"{run['name'] + ' seed ' + str(run['seed']):40} failed: {run['reason']}")
            continue
        for part in parts:
            totals[part] += run[part]
        print(f"{run['name'] + ' seed ' + str(run['seed']):40} "
              + " ".join(f"{run[p]:7.1f}" for p in parts) + f" {run['tokens_per_second']:9.0f}")
    print(f"{'sum over runs':40} " + " ".join(f"{totals[p]:7.1f}" for p in parts))
    ended = f"exit status {status}" if status is not None else f"stopped at the {limit:g} s limit"
    print(f"wall time {wall:.1f} s, {len(runs)} of {planned or '?'} planned runs finished "
          f"({ended}); run time summed over runs {sum(totals.values()):.1f} s")
    return 1 if status is None else status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
