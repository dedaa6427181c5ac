"""Running a tagger without training it: precision, batches on the device, windowed prediction.

The training loop (train.py) evaluates devel and test through these functions, and predict.py
tags new text through the same ones, so a finished run's predictions on new input are computed
exactly as its test predictions were.

Dimensions: B batch, T subword tokens, W words, K tags.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

import data
from model import Tagger


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. fp16 needs CUDA: on the CPU it falls back
    to fp32 (said in the log), so a GPU config still runs, slowly, on a laptop."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16" and device.type == "cuda":
        return torch.float16
    if precision == "fp16":
        print("precision fp16 needs CUDA; running fp32 on the CPU", file=sys.stderr)
    return None


def mixed_precision(device: torch.device, amp: torch.dtype | None) -> torch.autocast:
    """Autocast in `amp`, or a no-op for plain fp32."""
    return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)


@dataclass
class Batcher:
    """How windows become padded tensors on the device."""
    pad_id: int
    max_length: int
    multiple: int  # pad lengths up to a multiple of this
    device: torch.device

    def __call__(self, windows: list[data.Window]) -> dict[str, torch.Tensor]:
        batch = data.collate(windows, self.pad_id, self.max_length, self.multiple)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


@torch.inference_mode()
def predict_windows(model: Tagger, windows: list[data.Window], batch_size: int,
                    batcher: Batcher, amp: torch.dtype | None) -> list[list[int]]:
    """Predicted tag ids for the words of every window, in window order (eval mode: no
    dropout, so the same weights always give the same tags)."""
    model.eval()
    predictions: list[list[int]] = [[] for _ in windows]
    lengths = [len(w.input_ids) for w in windows]
    for indices in data.sorted_batches(lengths, batch_size):
        batch = batcher([windows[i] for i in indices])
        with mixed_precision(batcher.device, amp):
            emissions = model(batch["input_ids"], batch["attention_mask"], batch["word_index"])
        tags = model.predict(emissions, batch["word_mask"], batch.get("continues")).cpu()
        for row, i in enumerate(indices):  # tags: (B, W)
            predictions[i] = tags[row, :len(windows[i].word_starts)].tolist()
    return predictions


def predict_sentences(model: Tagger, sentences: list[data.TokenizedSentence],
                      windows: list[data.Window], batch_size: int, batcher: Batcher,
                      amp: torch.dtype | None) -> list[list[int]]:
    """Tag ids per word of every sentence, from the predictions of its windows (`windows` cut
    from `sentences` by data.make_windows)."""
    by_window = predict_windows(model, windows, batch_size, batcher, amp)
    return data.merge_window_predictions(windows, by_window, [len(s.pieces) for s in sentences])
