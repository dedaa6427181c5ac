"""AdapterHub's adapter folder for a run of bottleneck adapters: what AdapterHub's `adapters` 1.3
writes with `save_adapter(folder, name, with_head=True)` and reads with

    from adapters import AutoAdapterModel
    model = AutoAdapterModel.from_pretrained(base_model)     # the run's encoder
    name = model.load_adapter(folder, load_as="ner", set_active=True)   # with_head=True

A run of `method: adapter` (adapters.py) is AdapterHub's own module: Pfeiffer is its
`SeqBnConfig()`, Houlsby its `DoubleSeqBnConfig()`, the parallel adapter its `ParBnConfig()`,
and a variant (`original_ln_before: false`, another `non_linearity` or `adapter_scaling`) the
same config with those fields changed, which computes what the run computed
(bench/adapterhub_check.py holds the modules equal on copied weights). The folder holds:

- `adapter_config.json`: `{"config": {...}, "hidden_size", "model_class": "BertAdapterModel",
  "model_name", "model_type": "bert", "name", "version": "adapters.1.3.0"}`, where "config"
  holds every field of AdapterHub's `BnConfig`: the kind's (positions, parallel or not, its
  own init) and the run's resolved values (reduction, original_ln_before, non_linearity,
  scaling), the rest at the value that computes what adapters.py does (`BN_CONFIG`);
- the adapters' weights under AdapterHub's names,
  `bert.encoder.layer.<i>.output.adapters.<name>.adapter_down.0.weight` (and `.bias`,
  `adapter_up.weight`, `adapter_up.bias`; Houlsby's also in `attention.output`), twice: as
  `pytorch_adapter.bin`, which `load_adapter` reads by default, and as `adapter.safetensors`,
  which it reads instead with `use_safetensors=True` (no pickle);
- the tagging head: `head_config.json`, a "tagging" head of one layer (dropout, then a linear
  H -> K) with the run's labels as `label2id` and the run's dropout as `dropout_prob`, and its
  weights `heads.<name>.1.weight` (K, H) and `.1.bias` (K,), again as `pytorch_model_head.bin`
  and `model_head.safetensors`. Loading the head makes it `model.active_head` and sets
  `model.config.id2label` from `label2id`, so `model.get_labels()` and a token-classification
  pipeline name the run's tags.

The head scores every subword, where the tagger reads it at each word's first subword only:
word-level tags are the head's best tag at each word's first subword (the words given with
`is_split_into_words=True`, the first subword of each where `word_ids()` changes), which is what
a pipeline's `aggregation_strategy="first"` does. At those subwords the scores are the tagger's
emissions.

`bottleneck_adapter` is the method table's `to_adapterhub` for `adapter` runs; `folder_files`
returns the folder's files as bytes, {file name: content}, for the caller to write whole or not
at all (runs/folders.py). Nothing here imports AdapterHub (its name clashes with adapters.py, and
it pins an older transformers): the format is the contract, and bench/adapterhub_export_check.py
loads the folder into AdapterHub itself.

Left out: encoders other than BERT (their model class and parameter prefix differ), AdapterHub's
AdapterFusion folder, its other methods (LoRA, prefix tuning, ...), and a model card.

Dimensions: H hidden, m bottleneck width, K tags.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence

import torch
from safetensors.torch import save
from torch import Tensor, nn

import adapters

VERSION = "adapters.1.3.0"  # the release whose folder this is
MODEL_CLASS = "BertAdapterModel"  # AutoAdapterModel's class for a BERT encoder
PREFIX = "bert."  # BertAdapterModel's base_model_prefix: the encoder's parameters sit below it
ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_SAFE = ("adapter_config.json", "pytorch_adapter.bin",
                                                 "adapter.safetensors")
HEAD_CONFIG, HEAD_WEIGHTS, HEAD_SAFE = ("head_config.json", "pytorch_model_head.bin",
                                        "model_head.safetensors")

# AdapterHub 1.3's BnConfig, every field (save_adapter writes them all), at the value that
# computes what adapters.py does: no LayerNorm or gating of the adapter's own, no adapter
# dropout, the residual and the layer's LayerNorm around it as BERT's block has them, no
# invertible or PHM layers, every layer. The fields a kind or a run sets are filled in by
# `bottleneck_config`.
BN_CONFIG = {
    "original_ln_after": True, "residual_before_ln": True, "adapter_residual_before_ln": False,
    "ln_before": False, "ln_after": False, "init_weights_seed": None, "use_gating": False,
    "inv_adapter": None, "inv_adapter_reduction_factor": None, "cross_adapter": False,
    "leave_out": [], "dropout": 0.0, "stochastic_depth": 0.0,
    # PHM (Compacter) layers are off; their settings are written as AdapterHub writes them
    "phm_layer": False, "phm_dim": 4, "factorized_phm_W": True, "shared_W_phm": False,
    "shared_phm_rule": True, "factorized_phm_rule": False, "phm_c_init": "normal",
    "phm_init_range": 0.0001, "learn_phm": True, "hypercomplex_nonlinearity": "glorot-uniform",
    "phm_rank": 1, "phm_bias": True,
}
# Our adapter's tensors (adapters.Bottleneck) -> AdapterHub's (its Adapter module: adapter_down
# is Sequential(Linear, activation), adapter_up a Linear)
PARTS = {"down.weight": "adapter_down.0.weight", "down.bias": "adapter_down.0.bias",
         "up.weight": "adapter_up.weight", "up.bias": "adapter_up.bias"}


def adapter_name(experiment: str) -> str:
    """The name the folder gives the adapter and its head (`load_as` renames them): the
    experiment's, with what a module name cannot hold (a dot, a slash) as `_`."""
    return re.sub(r"[^\w-]", "_", experiment)


def bottleneck_config(cfg) -> dict:
    """adapter_config.json's "config" for a `method: adapter` run: AdapterHub's BnConfig with
    the kind's placement and the run's options (resolved as adapters.py resolves them)."""
    options = adapters.kind_options(cfg.adapter_kind, cfg.original_ln_before, cfg.non_linearity,
                                    cfg.adapter_scaling)
    positions = adapters.POSITIONS[cfg.adapter_kind]
    parallel = adapters.reads(cfg.adapter_kind, options["original_ln_before"]) == "input"
    return {**BN_CONFIG,
            "mh_adapter": "attention.output" in positions,
            "output_adapter": "output" in positions,
            "is_parallel": parallel,
            # how AdapterHub would start the kind (ours starts up at zero): only training there
            # reads it
            "init_weights": "mam_adapter" if parallel else "bert",
            "reduction_factor": cfg.reduction,
            "original_ln_before": options["original_ln_before"],
            "non_linearity": options["non_linearity"],
            "scaling": float(options["adapter_scaling"])}  # AdapterHub takes a float only


def bottleneck_adapter(encoder: nn.Module, cfg, name: str) -> tuple[dict, dict[str, Tensor]]:
    """The method table's `to_adapterhub` for `adapter`: the run's adapter as AdapterHub's
    config and its tensors under AdapterHub's parameter names, for the adapter `name`:

        encoder.layer.0.output.adapter.down.weight (m, H)
        -> bert.encoder.layer.0.output.adapters.<name>.adapter_down.0.weight (m, H)
    """
    blocks = adapters.adapter_weights(encoder.state_dict())  # block -> {part: tensor}
    if not blocks:
        raise ValueError("the encoder holds no bottleneck adapters")
    tensors = {f"{PREFIX}{block}.adapters.{name}.{PARTS[part]}": tensor
               for block, parts in blocks.items() for part, tensor in parts.items()}
    return bottleneck_config(cfg), tensors


def config_file(config: dict, name: str, encoder_config, model_name: str) -> bytes:
    """A config file as AdapterHub's `build_full_config` and `save_weights_config` write it:
    the module's config under "config", what it was trained on, sorted keys, indent 2."""
    if encoder_config.model_type != "bert":
        raise ValueError(f"AdapterHub's folder is written for BERT encoders ({MODEL_CLASS}); "
                         f"this one is {encoder_config.model_type!r}")
    full = {"config": config, "hidden_size": encoder_config.hidden_size,
            "model_class": MODEL_CLASS, "model_name": model_name,
            "model_type": encoder_config.model_type, "name": name, "version": VERSION}
    return json.dumps(full, indent=2, sort_keys=True).encode()


def weight_files(tensors: dict[str, Tensor], pickled: str, safe: str) -> dict[str, bytes]:
    """The tensors (fp32 copies of their own, so no larger storage rides along) as torch.save
    writes them and as safetensors."""
    own = {key: t.detach().to("cpu", torch.float32).clone().contiguous()
           for key, t in tensors.items()}
    buffer = io.BytesIO()
    torch.save(own, buffer)
    return {pickled: buffer.getvalue(), safe: save(own, metadata={"format": "pt"})}


def folder_files(adapter: tuple[dict, dict[str, Tensor]], head: nn.Linear, labels: Sequence[str],
                 dropout: float, name: str, encoder_config, model_name: str) -> dict[str, bytes]:
    """The files of AdapterHub's folder for `adapter` (a method's `to_adapterhub`: its config
    and its tensors under AdapterHub's names) and the tagging `head` (H -> one score per label
    of `labels`) with `dropout` before it, both called `name`; `encoder_config` and
    `model_name` (the base model) say what it was trained on."""
    if head.out_features != len(labels):
        raise ValueError(f"the head scores {head.out_features} tags, the labels are "
                         f"{len(labels)}")
    config, tensors = adapter
    head_config = {"head_type": "tagging", "num_labels": len(labels), "layers": 1,
                   "activation_function": "tanh",  # AdapterHub's default; one layer has none
                   "dropout_prob": dropout,
                   "label2id": {label: i for i, label in enumerate(labels)}}
    # the head is Sequential(Dropout, Linear): the linear is its module "1"
    head_tensors = {f"heads.{name}.1.weight": head.weight, f"heads.{name}.1.bias": head.bias}
    return {ADAPTER_CONFIG: config_file(config, name, encoder_config, model_name),
            **weight_files(tensors, ADAPTER_WEIGHTS, ADAPTER_SAFE),
            HEAD_CONFIG: config_file(head_config, name, encoder_config, model_name),
            **weight_files(head_tensors, HEAD_WEIGHTS, HEAD_SAFE)}
