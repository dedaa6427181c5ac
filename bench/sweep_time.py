"""Wall time of a whole sweep, and each run's split into setup, training and evaluation.

    python bench/sweep_time.py OUT_DIR CONFIG.yml [--parallel=N] [compare.py flags and overrides]

Runs `compare.py CONFIG.yml --output_dir=OUT_DIR ...` in a fresh process (nothing finished:
OUT_DIR must not exist), times it, and prints one line per run from its records plus the
totals. `setup` is the time inside a run before its first step (corpus, encoder, tokens,
windows, tagger); what the runs do not cover of the wall time (times the parallel runs) is
process start-up (imports), the checks before the first run and the table.

Examples (targets of the sweep issue, one H200):
    python bench/sweep_time.py /tmp/minilm configs/demo_cpu.yml --parallel=4 --gpu=0 \\
        --precision=fp16 --train_limit=0 --eval_limit=0
    python bench/random_bert.py /tmp/bert-base   # BioBERT-sized random encoder
    python bench/sweep_time.py /tmp/bc5cdr configs/bc5cdr.yml --parallel=6 --model=/tmp/bert-base
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    out, rest = Path(argv[0]), argv[1:]
    if out.exists():
        sys.exit(f"{out} exists: a sweep timing starts from nothing")
    started = time.perf_counter()
    status = subprocess.call([sys.executable, str(ROOT / "compare.py"), *rest,
                              f"--output_dir={out}"], cwd=ROOT)
    wall = time.perf_counter() - started
    runs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
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
    print(f"wall time {wall:.1f} s for {len(runs)} runs (exit status {status}); run time summed "
          f"over runs {sum(totals.values()):.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
