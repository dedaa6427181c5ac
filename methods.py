"""The method table: every way of fine-tuning the encoder, declared once.

Each `Method` says what a reader, the checker, the tagger, the sweep and the run files need to
know: its name, its own config keys and their choices, how it changes the encoder and what then
trains, its default learning rate, what a run of it exports (beside the run, and through
export.py as a plain BERT tagger, or why not, and as an AdapterHub adapter), and whether a
fusion can take it as a source.
Everything else asks this table: no caller tests a method's name.

A method's own keys (`keys`) mean nothing to the other methods: set in another method's block
they are an error, and only its own runs' fingerprints contain them. Top-level keys and
command-line overrides are defaults for every method that uses them. The CRF head and
entity-swap augmentation are not methods but options of any method (`crf: true`, `aug:`).

Adding a method: write its file (modules, `apply(encoder, cfg, sources) -> report`, a slow
reference and tests), add its keys to `config.Config` if it has any, and add one entry below,
saying whether and how export.py can make a plain BERT tagger of its runs (`to_plain`, or
`not_plain`: why not and what works instead) and an AdapterHub adapter (`to_adapterhub`).
The conformance suite (tests/test_methods.py) then runs it through every check. Adding an entry
retrains nothing else: a run's fingerprint holds the code of its own method's functions only
(comparison/fingerprint.py finds the files from the functions).

Dimensions in the parameter formulas: H hidden, I feed-forward width, L layers, V vocabulary,
P positions, r rank, N fusion sources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import adapters
import fusion
import ia3
import inject
import lora
import plain
import prefix
import selective
from formats import adapterhub, peft


@dataclass(frozen=True)
class Sizes:
    """The sizes of a BERT encoder that parameter formulas multiply."""
    hidden: int  # H
    intermediate: int  # I
    layers: int  # L
    vocab: int  # V
    positions: int  # P
    type_vocab: int  # token types (2 for BERT)

    @classmethod
    def of(cls, encoder_config) -> Sizes:
        c = encoder_config
        return cls(c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size,
                   c.max_position_embeddings, c.type_vocab_size)


@dataclass(frozen=True)
class Method:
    name: str
    trains: str  # what trains, in words (--help, README's method table)
    default_lr: float  # the peak learning rate when a block gives none (`lr: 0`)
    # how it changes the encoder, in place, freezing what stays frozen: apply(encoder, cfg,
    # sources) -> a report merged into the run's metrics; None: nothing changes, all trains
    apply: Callable | None
    # names of the encoder parameters it trains, as a regular expression (searched), or a
    # function of (cfg, Sizes) that gives it when it depends on the run's settings
    trainable: str | Callable[..., str]
    # its trainable encoder parameters, as a formula of (cfg, Sizes, source configs)
    count: Callable[..., int]
    keys: tuple[str, ...] = ()  # config keys of its own
    choices: dict[str, tuple] = field(default_factory=dict)  # of its keys with closed choices
    # extra files a finished run writes: export(encoder, base model path) -> {file name: bytes}
    export: Callable | None = None
    export_folder: str = ""  # the folder in the run folder that `export` writes
    # extra optimizer groups: groups(model, cfg) -> [{name, params, lr, weight_decay}]
    optimizer_groups: Callable | None = None
    source_kind: str | None = None  # what a run of it gives a fusion; None: cannot be a source
    sources_key: str | None = None  # the key naming the runs it is built from (a fusion's)
    # why its sources cannot be used, before anything trains: check_sources(cfg, [(source
    # kind, source config values), ...]) -> problems
    check_sources: Callable | None = None
    identity_at_init: bool = True  # the tagger computes what the bare encoder does at step 0
    # the encoder positions it takes before the tokens (a prefix's): windows hold fewer subwords
    reserved_positions: Callable[..., int] | None = None
    # the values of its keys whose default depends on its other keys (`lr: 0` aside):
    # resolve(cfg) -> {key: value}, which runs/config_files.make_config sets, so the config
    # saved with a run names them; a value the others rule out is a ValueError(key, message)
    resolve: Callable | None = None
    # a penalty the training loss adds: regularizer(encoder) -> scalar tensor
    regularizer: Callable | None = None
    # export.py's plain BertForTokenClassification: how a built tagger's encoder becomes a plain
    # BERT encoder computing the same function, to_plain(encoder, cfg), in place (plain.py: LoRA
    # merged, IA3 folded; `plain.unchanged` when it is one already). None: it never can
    to_plain: Callable | None = None
    # why a run of it cannot be exported so, and what works instead: not_plain(cfg) -> one
    # line, or "" for a run that can (a fusion: merge mode only); needed when to_plain is None
    not_plain: Callable | None = None
    # export.py's AdapterHub folder (formats/adapterhub.py): the built tagger's encoder as an
    # AdapterHub adapter called `name`, to_adapterhub(encoder, cfg, name) -> (its adapter
    # config, {AdapterHub's parameter name: tensor}). None: the method has no AdapterHub form
    to_adapterhub: Callable | None = None
    # settings the conformance suite runs it with: every preset a reader may choose
    variants: tuple[dict, ...] = ({},)

    def trainable_pattern(self, cfg, sizes: Sizes) -> str:
        """`trainable` for this run: the names of the encoder parameters that train."""
        return self.trainable(cfg, sizes) if callable(self.trainable) else self.trainable


def layer_count(sizes: Sizes) -> int:
    """One BERT layer: four attention linears, the feed-forward pair and two LayerNorms."""
    H, I = sizes.hidden, sizes.intermediate
    return 4 * (H * H + H) + (H * I + I) + (I * H + H) + 2 * 2 * H


def encoder_count(cfg, sizes: Sizes, sources: list[dict]) -> int:
    """Every weight of a BERT encoder without pooler: embeddings (word, position, type,
    LayerNorm), then L layers."""
    embeddings = (sizes.vocab + sizes.positions + sizes.type_vocab) * sizes.hidden + \
        2 * sizes.hidden
    return embeddings + sizes.layers * layer_count(sizes)


def partial_count(cfg, sizes: Sizes, sources: list[dict]) -> int:
    """k whole layers."""
    return cfg.train_layers * layer_count(sizes)


def partial_trainable(cfg, sizes: Sizes) -> str:
    """The parameters of the top `train_layers` layers: `encoder.layer.<L-k>.` ... `<L-1>.`."""
    top = range(sizes.layers - cfg.train_layers, sizes.layers)
    return rf"^encoder\.layer\.({'|'.join(map(str, top))})\."


def layernorm_count(cfg, sizes: Sizes, sources: list[dict]) -> int:
    """2 H (2 L + 1): the weight and bias of the embeddings' LayerNorm and of two per layer."""
    return 2 * sizes.hidden * (2 * sizes.layers + 1)


def prefix_count(cfg, sizes: Sizes, sources: list[dict]) -> int:
    """L 2 P H, or with a projection of width w the (P, H) embedding and the MLP (prefix.py)."""
    return prefix.prefix_count(sizes.layers, sizes.hidden, cfg.prefix_length,
                               cfg.prefix_projection)


def lora_count(cfg, sizes: Sizes, sources: list[dict]) -> int:
    """L x r (d_in + d_out) per targeted linear of a layer, plus d_out per linear for DoRA's
    magnitudes."""
    shapes = inject.targeted_shapes(cfg.targets, sizes.hidden, sizes.intermediate)
    return sizes.layers * sum(cfg.rank * (d_in + d_out) + (d_out if cfg.dora else 0)
                              for d_in, d_out in shapes)


def adapter_count(cfg, sizes: Sizes, sources: list[dict]) -> int:
    """L x (2 H m + m + H) per adapter position of a layer, m = H / reduction: one position for
    pfeiffer and parallel, two for houlsby."""
    H, m = sizes.hidden, adapters.adapter_width(sizes.hidden, cfg.reduction)
    return sizes.layers * len(adapters.POSITIONS[cfg.adapter_kind]) * (2 * H * m + m + H)


def ia3_count(cfg, sizes: Sizes, sources: list[dict]) -> int:
    """L x (2 H + I): a key, a value and a feed-forward vector per layer."""
    return sizes.layers * (2 * sizes.hidden + sizes.intermediate)


def bitfit_count(cfg, sizes: Sizes, sources: list[dict]) -> int:
    """L x (7 H + I) + H: per layer the query, key, value, attention output, two LayerNorm and
    feed-forward output biases (H each) and the intermediate bias (I); the embeddings'
    LayerNorm bias."""
    return sizes.layers * (7 * sizes.hidden + sizes.intermediate) + sizes.hidden


def fusion_count(cfg, sizes: Sizes, sources: list[dict]) -> int:
    """Over the linears the sources adapt (d_in, d_out), or their bottleneck adapters' positions
    (H, H): merge learns N weights per linear (none when fixed); attention learns a query
    (d_in x d) and a key (d_out x d), with d = d_out and a bias each for fusion_dim 0, and a
    value (d_out x d_out) with fusion_value."""
    if METHODS[sources[0]["method"]].source_kind == "adapter":
        H = sizes.hidden
        shapes = sizes.layers * len(adapters.POSITIONS[sources[0]["adapter_kind"]]) * [(H, H)]
    else:
        shapes = sizes.layers * inject.targeted_shapes(sources[0]["targets"], sizes.hidden,
                                                       sizes.intermediate)
    if cfg.fusion_mode == "attention":
        biases = 2 if cfg.fusion_dim == 0 else 0
        return sum((d_in + d_out + biases) * (cfg.fusion_dim or d_out)
                   + (d_out * d_out if cfg.fusion_value else 0) for d_in, d_out in shapes)
    return 0 if cfg.fusion_weights else len(cfg.adapters) * len(shapes)


METHODS = {method.name: method for method in (
    Method(
        name="full", trains="every encoder weight and the head",
        # the devel choice of configs/study_cpu.yml (MiniLM, 1,000 BC5CDR sentences, 3 epochs)
        default_lr=4e-4, apply=None, trainable=".", count=encoder_count,
        to_plain=plain.unchanged),
    Method(
        name="lora", trains="low-rank adapters on the target linears, and the head",
        # study_cpu.yml's devel choice: LoRA trains new weights from zero and wants ten times
        # full fine-tuning's rate (at 5e-4 it was 0.48 test F1 below full fine-tuning, at 4e-3
        # 0.15 below, and 8e-3 diverged)
        default_lr=4e-3, apply=lora.apply, trainable=r"\.lora_(A|B|magnitude)$",
        count=lora_count,
        keys=("rank", "alpha", "lora_dropout", "targets", "rslora", "dora", "lora_plus_ratio"),
        export=peft.lora_files, export_folder="peft",
        optimizer_groups=lora.optimizer_groups, source_kind="lora", to_plain=plain.merge_lora,
        variants=({}, {"targets": ["all-linear"]}, {"dora": True},
                  {"dora": True, "targets": ["all-linear"], "lora_dropout": 0.1},
                  {"lora_plus_ratio": 16.0}, {"targets": ["query", "value"], "rslora": True})),
    Method(
        name="adapter", trains="bottleneck adapters after (or beside) the attention and/or "
                               "feed-forward blocks, and the head",
        # configs/peft_cpu.yml's devel choice for Pfeiffer and Houlsby (3e-2 diverged; the
        # parallel adapter, scaled by 4, chose 3e-3); the usual 1e-4 to 1e-3 (Houlsby et al.)
        # undertrains at 96 steps
        default_lr=1e-2, apply=adapters.apply, trainable=r"\.adapter\.(down|up)\.(weight|bias)$",
        count=adapter_count,
        keys=("adapter_kind", "reduction", "original_ln_before", "non_linearity",
              "adapter_scaling"),
        choices={"adapter_kind": adapters.KINDS, "non_linearity": adapters.NON_LINEARITIES},
        source_kind="adapter", resolve=adapters.resolve, not_plain=plain.adapter_refusal,
        to_adapterhub=adapterhub.bottleneck_adapter,
        # AdapterHub's SeqBnConfig, DoubleSeqBnConfig and ParBnConfig, then this project's
        # earlier variants (the adapter reads h, relu)
        variants=({"adapter_kind": "pfeiffer"}, {"adapter_kind": "houlsby", "reduction": 8},
                  {"adapter_kind": "parallel"},
                  {"adapter_kind": "pfeiffer", "original_ln_before": False,
                   "non_linearity": "relu"},
                  {"adapter_kind": "houlsby", "non_linearity": "relu", "adapter_scaling": 2.0})),
    Method(
        name="ia3", trains="vectors rescaling keys, values and feed-forward activations, and "
                           "the head",
        # configs/peft_cpu.yml's devel choice: vectors that start at 1 move slowly, and at 96
        # steps want far more than its paper's 3e-3 (3e-1 was worse)
        default_lr=1e-1, apply=ia3.apply, trainable=r"\.ia3_scale$", count=ia3_count,
        export=peft.ia3_files, export_folder="peft", to_plain=plain.fold_ia3),
    Method(
        name="bitfit", trains="every bias of the encoder (LayerNorm's too), and the head",
        # configs/peft_cpu.yml's devel choice (Ben Zaken et al. search 1e-4 to 1e-3 for
        # BERT-base at many steps)
        default_lr=1e-2, apply=selective.bitfit, trainable=r"\.bias$", count=bitfit_count,
        to_plain=plain.unchanged),
    Method(
        name="layernorm", trains="every LayerNorm weight and bias of the encoder, and the head",
        # configs/peft_cpu.yml's devel choice (1e-1 was worse)
        default_lr=3e-2, apply=selective.layernorm, trainable=r"(^|\.)LayerNorm\.",
        count=layernorm_count, to_plain=plain.unchanged),
    Method(
        name="partial", trains="the top train_layers encoder layers whole, and the head",
        # configs/peft_cpu.yml's devel choice for the top 2 of 6 layers (3e-3 was worse): with
        # fewer weights training than full fine-tuning, a higher rate than its 4e-4
        default_lr=1e-3, apply=selective.partial, trainable=partial_trainable,
        count=partial_count, keys=("train_layers",), to_plain=plain.unchanged,
        variants=({"train_layers": 1}, {"train_layers": 2})),
    Method(
        name="prefix", trains="key and value prefixes at every layer's self-attention (deep "
                              "prefix tuning, P-Tuning v2), and the head",
        # configs/peft_cpu.yml's devel choice (3e-1 was worse), above the 5e-3 to 3e-2 that
        # P-Tuning v2 tags with at thousands of steps
        default_lr=1e-1, apply=prefix.apply, trainable=r"\.prefixes\.", count=prefix_count,
        keys=("prefix_length", "prefix_projection"),
        identity_at_init=False,  # the prefixes start as N(0, 1) draws, as P-Tuning v2's
        reserved_positions=lambda cfg: cfg.prefix_length,  # tokens sit after the prefix
        not_plain=plain.prefix_refusal,
        variants=({}, {"prefix_projection": 16})),
    Method(
        name="fusion", trains="the fusion's weights or attention over frozen source adapters, "
                              "and a new head",
        # not gridded: the rate its LoRA sources trained at in study_cpu.yml
        default_lr=2e-3, apply=fusion.apply,
        # a learned merge's weights, attention fusion's query, key and value
        trainable=r"\.weights$|\.fusion\.(query|key|value)\.(weight|bias)$",
        count=fusion_count,
        keys=("adapters", "fusion_mode", "fusion_weights", "fusion_rank", "fusion_dim",
              "fusion_value"),
        choices={"fusion_mode": fusion.MODES}, sources_key="adapters",
        check_sources=fusion.sources_problems,
        to_plain=plain.merge_fusion, not_plain=plain.fusion_refusal,
        identity_at_init=False,  # it starts from the base plus the average of its sources
        regularizer=fusion.value_regularizer,
        variants=({"fusion_mode": "merge", "adapters": ["lora-a", "lora-b"]},
                  {"fusion_mode": "attention", "adapters": ["lora-a", "lora-b"]},
                  {"fusion_mode": "merge", "adapters": ["lora-a", "lora-b"],
                   "fusion_weights": [0.5, 0.5]},
                  {"fusion_mode": "attention", "adapters": ["adapter-a", "adapter-b"]},
                  {"fusion_mode": "attention", "adapters": ["adapter-a", "adapter-b"],
                   "fusion_dim": 16, "fusion_value": False},
                  {"fusion_mode": "attention", "adapters": ["lora-a", "lora-b"],
                   "fusion_dim": 8, "fusion_value": True},
                  {"fusion_mode": "attention", "adapters": ["parallel-a", "parallel-b"]})),
)}

# key -> the method that owns it
KEY_OWNERS = {key: method.name for method in METHODS.values() for key in method.keys}
# key -> its closed choices, for the keys methods own (config.CHOICES has the others)
METHOD_CHOICES = {key: values for method in METHODS.values()
                  for key, values in method.choices.items()}


def sources_of(cfg) -> list[str]:
    """The runs `cfg` is built from (a fusion's adapters): experiment names or run folders."""
    key = METHODS[cfg.method].sources_key
    return list(getattr(cfg, key)) if key else []
