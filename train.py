"""One training run: config → tagger → a plain torch.amp loop → devel/test scores → files.

`train(cfg)` is the whole run and returns its metrics; `compare.py` runs it once per experiment
and seed, each in a process of its own. The model lives in model.py and inference (batches,
precision, windowed prediction) in inference.py; this file is the loop around them: optimiser
groups and schedule, evaluation, measurements, the run's files. `train_epoch` is one pass over
the training windows, forward, loss and step: the place to edit for an ablation of training.

Protocol: devel is scored after every epoch and the best devel epoch's weights are kept; test
is scored once, with those weights, and never used to choose anything.

Left out on purpose: gradient accumulation, multi-GPU data parallelism, early stopping (the
best devel epoch is kept instead), and any trainer framework.

Dimensions: B batch, T subword tokens, W words, H hidden, K tags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pickle
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import data
from augment import EntitySwapper
from config import CHOICES, Config, ConfigError
from corpora.iob import Sentence
from inference import Batcher, autocast_dtype, mixed_precision, predict_sentences
from methods import METHODS, sources_of
from model import (
    Tagger,
    build_tagger,
    cast_frozen,
    count_parameters,
    load_encoder,
    load_trained_state,
    resolve_model,
    trained_state,
    window_length,
)
from runs import scoring, tracking
from runs.config_files import config_help, experiment_configs, parse_overrides
from runs.folders import (
    METRICS,
    run_dir,
    save_weights_atomic,
    source_dirs,
    start_run,
    write_atomic,
    write_bytes_atomic,
    write_folder_atomic,
)

# ---------------------------------------------------------------------------------------------
# Optimisation


def param_groups(model: Tagger, cfg: Config, verbose: bool = False) -> list[dict]:
    """AdamW groups: no weight decay on biases and LayerNorm weights (the 1-d parameters); the
    groups a method asks for (LoRA+'s B factors) and the CRF's scores in groups of their own,
    the CRF's at crf_lr and without decay."""
    method = METHODS[cfg.method]
    extra = method.optimizer_groups(model, cfg) if method.optimizer_groups else []
    crf = list(model.crf.parameters()) if model.crf is not None else []
    taken = {id(p) for group in extra for p in group["params"]} | {id(p) for p in crf}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups = [{"name": "decayed (matrices)", "params": [p for p in rest if p.ndim >= 2],
               "weight_decay": cfg.weight_decay, "lr": cfg.lr},
              {"name": "not decayed (biases, LayerNorm)", "params": [p for p in rest if p.ndim < 2],
               "weight_decay": 0.0, "lr": cfg.lr}] + extra
    if crf:
        groups.append({"name": "CRF scores", "params": crf, "weight_decay": 0.0,
                       "lr": cfg.crf_lr})
    if verbose:
        for group in groups:
            print(f"  optimizer group {group['name']}: {len(group['params'])} tensors, "
                  f"{sum(p.numel() for p in group['params']):,} parameters, lr {group['lr']:g}, "
                  f"weight decay {group['weight_decay']:g}")
    return groups


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at `step`: linear warm-up, then the schedule."""
    if schedule not in CHOICES["lr_scheduler_type"]:
        raise ValueError(f"lr_scheduler_type must be one of {CHOICES['lr_scheduler_type']}, "
                         f"got {schedule!r}")
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * max(0.0, min(1.0, progress))))
    return 1.0  # constant


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's random choices (batch order, entity swaps). The large odd factor
    keeps (seed, epoch) pairs apart: seed 42 epoch 1 never equals seed 43 epoch 0."""
    return seed * 1_000_003 + epoch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(cfg: Config) -> torch.device:
    gpu = cfg.gpu[0]  # a sweep gives each run one device of the list
    if gpu >= 0 and torch.cuda.is_available():
        if gpu >= torch.cuda.device_count():
            raise ConfigError(f"gpu: {gpu}, but only {torch.cuda.device_count()} CUDA "
                              f"devices exist")
        return torch.device("cuda", gpu)
    return torch.device("cpu")


def device_notice(configs: list[Config]) -> str | None:
    """One line when experiments ask for CUDA on a machine without it (they run on the CPU,
    which `gpu: -1` would say on purpose), else None."""
    asked = sorted({", ".join(map(str, c.gpu)) for c in configs if c.gpu != [-1]})
    if asked and not torch.cuda.is_available():
        return (f"notice: gpu: {', '.join(asked)} asks for CUDA, which this machine lacks: "
                f"running on the CPU (gpu: -1 says so on purpose)")
    return None


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate(model: Tagger, split: list[Sentence], tokenized: list[data.TokenizedSentence],
             windows: list[data.Window], labels: list[str], batch_size: int, batcher: Batcher,
             amp: torch.dtype | None, scored_types: list[str] | None = None
             ) -> tuple[dict, list]:
    """Scores on a split, and the predicted tag strings per sentence. With `scored_types` (a
    test corpus of other types), predictions of any other type are set to O before scoring:
    that corpus does not annotate them, so they are neither right nor wrong there."""
    started = time.perf_counter()
    by_sentence = predict_sentences(model, tokenized, windows, batch_size, batcher, amp)
    predicted = [[labels[t] for t in sentence] for sentence in by_sentence]
    if scored_types is not None:
        kept = set(scored_types)
        predicted = [data.keep_types(tags, kept) for tags in predicted]
    metrics = scoring.score([s.tags for s in split], predicted)
    metrics["seconds"] = time.perf_counter() - started
    return metrics, predicted


# ---------------------------------------------------------------------------------------------
# Data for one run


def tokenized_splits(corpus: data.Corpus, tokenizer, cache: Path | None = None
                     ) -> dict[str, list]:
    """The three splits tokenised; read from `cache` when an earlier run of the sweep wrote it
    there, else tokenised (and written to `cache`). The caller names the cache file by what the
    tokens depend on (comparison/fingerprint.py's token_cache_key), so the loop never has to."""
    if cache is not None:
        try:
            return pickle.loads(cache.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            pass  # absent or unreadable: tokenise again
    splits = {"train": corpus.train, "devel": corpus.devel, "test": corpus.test}
    tokenized = {name: data.tokenize_sentences(sentences, tokenizer, corpus.labels)
                 for name, sentences in splits.items()}
    if cache is not None:
        write_bytes_atomic(cache, pickle.dumps(tokenized))
    return tokenized


# ---------------------------------------------------------------------------------------------
# Measurements and progress


def process_memory_mb(field: str) -> float | None:
    """A memory figure of this process from /proc/self/status, MB: `VmRSS` (resident now) or
    `VmHWM` (peak resident, this process image's own: reset by exec, so a sweep's spawned run
    does not inherit its parent's); None where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory and what it measures: CUDA allocations of this process, or its peak resident
    set on the CPU (ru_maxrss where /proc is absent)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    peak = process_memory_mb("VmHWM")
    return peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"


def memory_baseline_mb(device: torch.device) -> float:
    """What a run's own memory is counted from: on the CPU the resident set before the run loads
    anything, which is mostly torch and transformers (~0.5 GB, the same for every method); on
    CUDA 0, since max_memory_allocated counts the run's allocations only."""
    return (process_memory_mb("VmRSS") or 0.0) if device.type == "cpu" else 0.0


class Progress:
    """Training progress: a tqdm bar per epoch on a terminal (step/total, loss, tokens/s, ETA),
    else a plain line whenever a loss arrives. Losses arrive at logging steps, and in a log also
    whenever `EVERY_SECONDS` have passed without a line (each a host sync), so that someone
    watching a log file sees the run move whatever `log_every` is."""

    EVERY_SECONDS = 30.0

    def __init__(self, label: str, total_steps: int):
        self.label, self.total = label, total_steps
        self.terminal = sys.stderr.isatty()
        self.started = self.last_line = time.perf_counter()
        self.tokens = 0
        self.bar = None

    def due(self) -> bool:
        """Whether a line is wanted now, between logging steps."""
        return not self.terminal and time.perf_counter() - self.last_line >= self.EVERY_SECONDS

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch = f"epoch {epoch + 1}/{epochs}"
        if self.terminal:
            from tqdm import tqdm
            self.bar = tqdm(total=steps, desc=f"{self.label} {self.epoch}", leave=False,
                            unit="step", dynamic_ncols=True)

    def step(self, step: int, tokens: int, loss: float | None) -> None:
        """After `step` (counted over all epochs), which trained on `tokens` real tokens."""
        self.tokens += tokens
        elapsed = time.perf_counter() - self.started
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", tokens_s=f"{rate:.0f}")
        elif loss is not None:
            eta = elapsed / step * (self.total - step)
            print(f"{self.label} {self.epoch} step {step}/{self.total} loss {loss:.4f} "
                  f"{rate:.0f} tokens/s ETA {eta:.0f} s", flush=True)
            self.last_line = time.perf_counter()

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class DivergedError(RuntimeError):
    """The training loss became NaN or inf: the run stops instead of training on it."""


class LossGuard:
    """Watches the training loss for NaN and inf without a host sync per step: the first bad
    step and the last finite loss are kept on the device, and `check` (at the loop's logging
    steps and each epoch's end, which sync anyway) raises DivergedError naming them.

    The fp16 GradScaler already skips steps whose gradients overflow while the loss is finite;
    a loss that is itself not finite is divergence (or emissions that overflowed), and training
    on it would only spread NaN through the weights.
    """

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # step, -1: none
        self.last_finite = torch.full((), float("nan"), device=device)
        self.last_finite_step = torch.full((), -1, dtype=torch.long, device=device)

    def watch(self, loss: torch.Tensor, step: int) -> None:
        finite = torch.isfinite(loss.detach())
        bad_now = ~finite & (self.first_bad < 0)
        self.first_bad = torch.where(bad_now, step, self.first_bad)
        keep = finite & (self.first_bad < 0)
        self.last_finite = torch.where(keep, loss.detach().float(), self.last_finite)
        self.last_finite_step = torch.where(keep, step, self.last_finite_step)

    def check(self, epoch: int) -> None:
        first_bad = int(self.first_bad)
        if first_bad >= 0:
            raise DivergedError(
                f"training loss is not finite at step {first_bad + 1} (epoch {epoch + 1}); last "
                f"finite loss {float(self.last_finite):.4g} at step "
                f"{int(self.last_finite_step) + 1}: lower lr or use fp32/bf16")


# ---------------------------------------------------------------------------------------------
# The run


def train(cfg: Config, token_cache: Path | None = None) -> dict:
    """Train, keep the best devel epoch, score it on test once, write the run's files; the
    metrics. `token_cache`: a file to read the tokenised corpus from, or to write it to (a
    sweep's runs share one). The tracker and the log are closed however the run ends."""
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    start_run(out)  # a sweep's record of earlier weights must not survive this run
    write_atomic(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))
    with contextlib.ExitStack() as closing:
        tracker = tracking.open_tracker(cfg.tracker, cfg.tracker_project,
                                        f"{cfg.name}/seed{cfg.seed}", dataclasses.asdict(cfg),
                                        out / "tracker")  # fails fast
        closing.callback(tracker.close)
        log = closing.enter_context((out / "log.jsonl").open("w", encoding="utf-8"))
        return run(cfg, out, tracker, log, token_cache)


@dataclass
class Optimisation:
    """One optimisation step per batch: backward (scaled for fp16), gradient clipping, AdamW and
    the schedule."""
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # a no-op unless fp16
    params: list[torch.nn.Parameter]  # the trainable ones, whose gradients are clipped
    max_grad_norm: float  # 0: no clipping

    def step(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        if self.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)


def train_epoch(model: Tagger, windows: list[data.Window], batches: list[list[int]],
                batcher: Batcher, amp: torch.dtype | None, optimisation: Optimisation,
                guard: LossGuard, progress: Progress, epoch: int, step: int, log_every: int,
                on_log: Callable[[int, int, float], None]) -> tuple[float, int, int, int]:
    """One pass over the training `windows`, one optimisation step per batch of indices in
    `batches`: the forward under autocast, the loss, the step. `step` counts the steps of the
    earlier epochs. Every `log_every` steps (the loop's host syncs, with the progress line a log
    gets at least every 30 seconds) the loss is checked for NaN and handed to `on_log(epoch,
    step, loss)`. Returns the epoch's mean loss, the step count after it, and the real and
    padded tokens it trained on."""
    model.train()
    loss_sum = torch.zeros((), device=batcher.device)  # summed on the device: no sync per step
    real_tokens = padded_tokens = 0
    for indices in batches:
        chunk = [windows[i] for i in indices]
        batch = batcher(chunk)
        with mixed_precision(batcher.device, amp):
            emissions = model(batch["input_ids"], batch["attention_mask"],
                              batch["word_index"])  # (B, W, K)
            loss = model.loss(emissions, batch["tags"], batch["word_mask"],
                              batch.get("continues"))
        guard.watch(loss, step)
        optimisation.step(loss)
        loss_sum += loss.detach().float()
        step += 1
        tokens = sum(len(w.input_ids) for w in chunk)
        real_tokens += tokens
        padded_tokens += batch["input_ids"].numel()
        logged = None
        if step % log_every == 0:
            guard.check(epoch)
            logged = loss.item()
            on_log(epoch, step, logged)
        elif progress.due():
            logged = loss.item()
        progress.step(step, tokens, logged)
    if batcher.device.type == "cuda":
        torch.cuda.synchronize(batcher.device)
    guard.check(epoch)
    return loss_sum.item() / len(batches), step, real_tokens, padded_tokens


def run(cfg: Config, out: Path, tracker, log, token_cache: Path | None) -> dict:
    """The body of `train`: setup, the epochs, test, the files."""
    # Setup: corpus, encoder, windows, tagger
    started = time.perf_counter()
    label = f"[{cfg.name} seed {cfg.seed}]"
    device = pick_device(cfg)
    amp = autocast_dtype(cfg.precision, device)
    seed_everything(cfg.seed)
    memory_baseline = memory_baseline_mb(device)

    corpus = data.load_corpus(cfg)
    write_atomic(out / "labels.json", json.dumps(corpus.labels))
    encoder, tokenizer = load_encoder(cfg.model)
    max_length = window_length(cfg, encoder)
    specials = (tokenizer.cls_token_id, tokenizer.sep_token_id)
    tokenized = tokenized_splits(corpus, tokenizer, token_cache)
    windows = {split: data.make_windows(tokenized[split], max_length, *specials)
               for split in ("devel", "test")}
    swapper = None
    if cfg.aug is not None:
        swapper = EntitySwapper(corpus.train, tokenized["train"], tokenizer, corpus.labels,
                                cfg.aug.p, cfg.aug.copies)

    def training_windows(epoch: int) -> list[data.Window]:
        """The epoch's training windows: the split as it is, or with fresh entity swaps."""
        sentences = tokenized["train"] if swapper is None else \
            swapper.epoch(epoch_seed(cfg.seed, epoch))
        return data.make_windows(sentences, max_length, *specials)

    # Every epoch's windows up front: augmentation changes their number from epoch to epoch,
    # and the schedule needs the true total of steps.
    epoch_windows = [training_windows(0)] if swapper is None else \
        [training_windows(e) for e in range(cfg.epochs)]
    epoch_windows += epoch_windows[-1:] * (cfg.epochs - len(epoch_windows))
    batcher = Batcher(tokenizer.pad_token_id, max_length,
                      cfg.pad_multiple or (16 if device.type == "cuda" else 1), device)

    sources = source_dirs(out, cfg.seed, sources_of(cfg))
    model, method_report = build_tagger(cfg, corpus.labels, encoder, sources)
    model.to(device)
    if amp is not None:
        # A frozen weight needs no fp32 master copy: keep it in the autocast dtype (half memory).
        cast_frozen(model.encoder, amp)
    trainable, total = count_parameters(model)
    print(f"{label} {device}, {cfg.precision}, {cfg.method}, lr {cfg.lr:g}, trainable "
          f"parameters {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    if model.crf is not None:
        log_z, best_path = model.crf.algorithms(device.type == "cuda")
        print(f"{label} CRF (crf_algorithm: {cfg.crf_algorithm}): log Z by {log_z}, best path by "
              f"{best_path}")

    steps_per_epoch = [math.ceil(len(w) / cfg.batch_size) for w in epoch_windows]
    total_steps = sum(steps_per_epoch)
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    # fused: one kernel over all parameters; on the CPU 10x faster than the per-tensor loop
    optimizer = torch.optim.AdamW(param_groups(model, cfg, verbose=True), fused=True)
    optimisation = Optimisation(
        optimizer, torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total_steps, warmup, cfg.lr_scheduler_type)),
        torch.amp.GradScaler(device.type, enabled=amp is torch.float16),
        [p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
    progress = Progress(label, total_steps)
    guard = LossGuard(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    setup_seconds = time.perf_counter() - started

    def log_loss(epoch: int, step: int, loss: float) -> None:
        lr = optimisation.schedule.get_last_lr()[0]
        log.write(json.dumps({"step": step, "epoch": epoch, "loss": loss, "lr": lr}) + "\n")
        log.flush()
        tracker.log({"loss": loss, "lr": lr}, step)

    # Training: an epoch of steps, then devel; the best devel epoch's weights are kept
    best = {"f1": -1.0}
    devel_curve, epoch_losses = [], []
    train_seconds = devel_seconds = 0.0
    real_tokens = padded_tokens = step = 0
    for epoch, train_windows in enumerate(epoch_windows):
        lengths = [len(w.input_ids) for w in train_windows]
        batches = data.length_grouped_batches(lengths, cfg.batch_size,
                                              seed=epoch_seed(cfg.seed, epoch))
        progress.start_epoch(epoch, cfg.epochs, len(batches))
        epoch_started = time.perf_counter()
        mean_loss, step, real, padded = train_epoch(
            model, train_windows, batches, batcher, amp, optimisation, guard, progress, epoch,
            step, cfg.log_every, log_loss)
        train_seconds += time.perf_counter() - epoch_started
        progress.end_epoch()
        epoch_losses.append(mean_loss)
        real_tokens += real
        padded_tokens += padded

        devel, _ = evaluate(model, corpus.devel, tokenized["devel"], windows["devel"],
                            corpus.labels, cfg.eval_batch_size, batcher, amp)
        devel_seconds += devel["seconds"]
        devel_curve.append(devel["f1"])
        log.write(json.dumps({"epoch": epoch, "step": step, "mean_loss": mean_loss,
                              "devel_f1": devel["f1"], "devel_precision": devel["precision"],
                              "devel_recall": devel["recall"]}) + "\n")
        log.flush()
        tracker.log({"devel_f1": devel["f1"], "epoch_mean_loss": mean_loss}, step)
        print(f"{label} epoch {epoch + 1}/{cfg.epochs}: mean loss {mean_loss:.4f}, "
              f"devel F1 {devel['f1']:.4f}")
        if devel["f1"] > best["f1"]:
            best = {"f1": devel["f1"], "epoch": epoch, "metrics": devel,
                    "state": trained_state(model)}

    # Evaluation: test, once, with the best devel epoch's weights
    load_trained_state(model, best["state"], "the best devel epoch")
    test, predicted = evaluate(model, corpus.test, tokenized["test"], windows["test"],
                               corpus.labels, cfg.eval_batch_size, batcher, amp,
                               corpus.test_types if corpus.cross_corpus else None)
    peak, peak_measure = peak_memory_mb(device)
    model_types = data.entity_types_of(corpus.labels)
    metrics = {
        "name": cfg.name, "method": cfg.method, "seed": cfg.seed, "dataset": cfg.dataset,
        "model": cfg.model, "device": str(device), "lr": cfg.lr,
        "precision": "fp32" if amp is None else str(amp).removeprefix("torch."),
        "test": test, "devel": best["metrics"], "best_epoch": best["epoch"] + 1,
        # what test was: its corpus, its sentences and gold (the table pairs rows by them), and
        # with another corpus the types dropped from the predictions and those the model lacks
        "test_corpus": corpus.test_corpus, "test_set": data.sentences_digest(corpus.test),
        "dropped_types": sorted(set(model_types) - set(corpus.test_types))
        if corpus.cross_corpus else [],
        "missed_types": sorted(set(corpus.test_types) - set(model_types)),
        "devel_f1_per_epoch": devel_curve, "mean_loss_per_epoch": epoch_losses,
        "trainable_params": trainable, "total_params": total,
        "setup_seconds": setup_seconds, "train_seconds": train_seconds,
        "devel_eval_seconds": devel_seconds, "test_eval_seconds": test["seconds"],
        "train_tokens": real_tokens, "tokens_per_second": real_tokens / train_seconds,
        "padding_fraction": 1 - real_tokens / padded_tokens,
        "peak_memory_mb": peak, "peak_memory_measure": peak_measure,
        "memory_baseline_mb": memory_baseline,
        "train_windows": len(epoch_windows[0]), "steps": step,
        "steps_per_epoch": steps_per_epoch, **method_report,
    }
    tracker.summary({"test_f1": test["f1"], "devel_f1": best["f1"],
                     "best_epoch": best["epoch"] + 1})
    write_run_files(cfg, out, model, corpus, predicted, best["state"], metrics)
    print(f"{label} test F1 {test['f1']:.4f} (P {test['precision']:.4f}, "
          f"R {test['recall']:.4f}); {metrics['tokens_per_second']:.0f} tokens/s, "
          f"{setup_seconds:.0f} s setup, {train_seconds:.0f} s training, peak {peak:.0f} MB "
          f"({peak_measure})")
    return metrics


def predictions_text(split: list[Sentence], predicted: list[list[str]]) -> str:
    return "\n\n".join("\n".join(f"{token} {gold} {pred}" for token, gold, pred in
                                 zip(s.tokens, s.tags, p)) for s, p in zip(split, predicted)) + "\n"


def write_run_files(cfg: Config, out: Path, model: Tagger, corpus: data.Corpus,
                    predicted: list[list[str]], state: dict, metrics: dict) -> None:
    """Test predictions, the trained weights (and what the method exports: a PEFT copy of a
    LoRA adapter), and last `metrics.json`, whose presence says the run finished."""
    write_atomic(out / "predictions.txt", predictions_text(corpus.test, predicted))
    if cfg.save_weights:
        save_weights_atomic(out / "weights.safetensors", state,
                            {"config": dataclasses.asdict(cfg), "labels": corpus.labels})
        method = METHODS[cfg.method]
        if method.export is not None:  # e.g. a LoRA adapter again, in the folder PEFT loads
            write_folder_atomic(out / method.export_folder,
                                method.export(model.encoder, resolve_model(cfg.model)))
    write_atomic(out / METRICS, json.dumps(metrics, indent=2))


USAGE = """usage: python train.py CONFIG.yml [--experiment NAME] [--key=value ...]

Train one experiment of CONFIG.yml (the only one, or NAME) once, at its seed, and print its
test scores. --key=value overrides any config key (values read as YAML: --lr=3e-4).
"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0].startswith("--"):
        print(USAGE + "\n" + config_help())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    path, rest = argv[0], argv[1:]
    experiment = None
    if "--experiment" in rest:
        i = rest.index("--experiment")
        experiment = rest[i + 1] if i + 1 < len(rest) else None
        rest = rest[:i] + rest[i + 2:]
    try:
        configs = experiment_configs(path, parse_overrides(rest))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    if experiment is None and len(configs) > 1:
        print(f"{path} holds {len(configs)} experiments: choose one with --experiment NAME "
              f"({', '.join(c.name for c in configs)})", file=sys.stderr)
        return 2
    chosen = [c for c in configs if experiment in (None, c.name)]
    if not chosen:
        print(f"{path}: no experiment named {experiment!r} "
              f"(have: {', '.join(c.name for c in configs)})", file=sys.stderr)
        return 2
    notice = device_notice(chosen[:1])
    if notice:
        print(notice, file=sys.stderr)
    print(json.dumps(train(chosen[0])["test"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
