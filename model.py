"""The tagger and its encoder: what a run trains, apart from the loop that trains it.

The tagger works at word level: the encoder's hidden state of each word's first subword goes
through a linear head to per-word emissions, so the loss, an optional CRF and the evaluation
all see words, never subwords. The method (methods.py's table) decides how the encoder changes
and which of its weights train; `build_tagger` applies it. `cast_frozen` is the precision policy
of every method: frozen weights stored in the half dtype, trained ones in fp32.

Dimensions: B batch, T subword tokens, W words, H hidden, K tags.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from config import Config, ConfigError
from crf import CRF
from methods import METHODS
from runs.folders import SavedRun, read_safetensors, read_saved_run

# Where the tagger keeps its encoder, and so the prefix of the encoder's parameters in a run's
# weights.safetensors.
ENCODER_PREFIX = "encoder."


class Tagger(nn.Module):
    """Encoder → dropout → first-subword hidden state per word → linear head → emissions,
    scored by cross-entropy and argmax, or by an optional CRF (NLL and Viterbi). `regularizer`
    (the method's, if any): a penalty on the encoder that the training loss adds."""

    def __init__(self, encoder: nn.Module, num_tags: int, dropout: float, crf: CRF | None = None,
                 regularizer: Callable[[nn.Module], torch.Tensor] | None = None):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_tags)
        self.crf = crf
        self.regularizer = regularizer

    def forward(self, input_ids, attention_mask, word_index) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask
                              ).last_hidden_state  # (B, T, H)
        index = word_index.unsqueeze(-1).expand(-1, -1, hidden.size(-1))  # (B, W, H)
        words = hidden.gather(1, index)  # (B, W, H): each word's first subword
        return self.head(self.dropout(words))  # (B, W, K) emissions

    def loss(self, emissions, tags, word_mask, continues=None) -> torch.Tensor:
        """CRF: mean NLL per sentence; else mean cross-entropy over real words; plus the
        method's regularizer, if any. `continues` (B,) marks windows that continue a sentence,
        whose first tag may be I-X."""
        if self.crf is not None:  # collate's masks are valid by construction: no host sync
            loss = self.crf.nll(emissions, tags, word_mask, continues=continues,
                                check_values=False)
        else:
            # Padded words ignored by index, not removed by a boolean mask (that would sync
            # the host)
            targets = tags.masked_fill(~word_mask, -100)  # (B, W)
            loss = F.cross_entropy(emissions.flatten(0, 1).float(), targets.flatten(),
                                   ignore_index=-100)
        if self.regularizer is not None:
            loss = loss + self.regularizer(self.encoder)
        return loss

    def predict(self, emissions, word_mask, continues=None) -> torch.Tensor:
        """(B, W) tag ids; values at padded words are meaningless."""
        if self.crf is not None:
            return self.crf.decode(emissions, word_mask, continues=continues,
                                   check_values=False)[0]
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


def window_length(cfg: Config, encoder: nn.Module) -> int:
    """Subwords per window: `max_length`, within the positions the encoder has for tokens (all
    of them, less those a method takes before the tokens: a prefix's)."""
    method = METHODS[cfg.method]
    reserved = method.reserved_positions(cfg) if method.reserved_positions else 0
    return min(cfg.max_length, encoder.config.max_position_embeddings - reserved)


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


def build_tagger(cfg: Config, labels: list[str], encoder: nn.Module,
                 sources: Sequence[Path] = ()) -> tuple[Tagger, dict]:
    """Apply the method to `encoder` IN PLACE (the table's `apply`: adapters or fusion layers
    swapped in, the rest frozen) and wrap it in a tagger. `sources`: the run folders a fusion
    reads. Also returns what the method reports about itself (for fusion: what it fused, the
    SVD error)."""
    method = METHODS[cfg.method]
    report = {}
    if method.apply is not None:
        report = method.apply(encoder, cfg, source_runs(sources))
    if cfg.gradient_checkpointing:
        # transformers 5.24 renamed it; older 5.x (the GPU image's) has only the old name
        enable = getattr(encoder, "activation_checkpointing_enable", None) or \
            encoder.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    crf = CRF.for_labels(labels, cfg.crf_constraints, cfg.crf_algorithm) if cfg.crf else None
    return Tagger(encoder, len(labels), cfg.dropout, crf, method.regularizer), report


def source_runs(folders: Sequence[Path]) -> list[SavedRun]:
    """Finished runs read back for a fusion, their weights keyed by the encoder's own names."""
    runs = [read_saved_run(folder) for folder in folders]
    return [dataclasses.replace(run, weights={
        key[len(ENCODER_PREFIX):]: value for key, value in run.weights.items()
        if key.startswith(ENCODER_PREFIX)}) for run in runs]


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> None:
    """Store every frozen floating parameter in `dtype`; trainable ones stay as they are.

    A frozen weight needs no fp32 master copy, so `dtype=torch.bfloat16` halves the encoder's
    memory while what trains (adapters, vectors, biases) stays fp32. Run the model under
    `torch.autocast(device, dtype)` of that same dtype: linears then compute in it and LayerNorm
    in fp32 (CUDA), and trained parameters are cast for their matmuls only. Without autocast the
    encoder computes in `dtype` throughout. LayerNorms keep fp32 parameters: a few thousand
    numbers, and the CPU's layer_norm needs its weight and bias in one dtype when one of them
    trains (BitFit trains the bias). Buffers are left alone, and tied parameters come untied.
    Cast before building the optimizer.
    """
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            continue
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad and param.is_floating_point():
                module.register_parameter(name, nn.Parameter(param.detach().to(dtype), False))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changed: the parameters that require grad (frozen ones come from the base)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` (as `trained_state` returns it) into the model's trainable parameters,
    checking names and shapes; `source` names where it came from, for the error."""
    expected = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{n}: expected {tuple(expected[n].shape)}, found {tuple(state[n].shape)}"
             for n in expected if n in state and state[n].shape != expected[n].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{source}: does not fit this model; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(state[name])


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load a run's `weights.safetensors` into the model built for it."""
    state, _ = read_safetensors(Path(path))
    load_trained_state(model, state, str(path))
