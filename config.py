"""The typed configuration of a run: every key, its default and why.

A config file's top-level keys are the defaults of every experiment; `experiments:` is a list
of blocks that override them. How files, grids and command lines fill a `Config`, and how it is
checked, is runs/config_files.py; which keys belong to which fine-tuning method, and their
choices, is methods.py.

Every key of `Config` has a default and a why-comment (the comment lines above it and the one
beside it): `--help` prints them from this file's source, so the two never disagree. A key of
closed choices lists them once: here in `CHOICES`, in the method table for a method's own keys,
or in crf.py for `crf_algorithm`; the checker and `--help` read all three
(runs/config_files.ALL_CHOICES), and the code that acts on a key reads the same list.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The allowed values of each string key with closed choices that no method owns. A method's own
# keys list theirs in the method table (methods.py), as `method` itself does with the table's
# names; the CRF's algorithms are crf.py's.
CHOICES = {
    "precision": ("fp32", "fp16", "bf16"),
    "lr_scheduler_type": ("linear", "cosine", "constant"),
    "tracker": ("none", "tensorboard", "wandb"),
    "tag_scheme": ("auto", "bio", "iob1", "iobes"),
}


@dataclass
class AugConfig:
    p: float = 0.3  # chance that each mention is swapped for another of its type
    copies: int = 1  # swapped variants added per training sentence; 0: swap in place


@dataclass
class Config:
    name: str = "run"  # experiment name: outputs go to <output_dir>/<name>/seed<seed>/
    # how the encoder is fine-tuned: a name of the method table (methods.py, README's table),
    # e.g. full (every weight), lora (adapters only), fusion (frozen source adapters combined)
    method: str = "full"
    model: str = "dmis-lab/biobert-base-cased-v1.2"  # hub id, local folder, or package:<module>
    # the corpus (docs/corpora.md): a name under data_dir or a known one (downloaded), a folder
    # with {train,devel,test}.tsv, or hf:<hub id or local folder> read with 🤗 Datasets
    dataset: str = "bc5cdr"
    data_dir: str = ""  # folder of corpora; empty: $NER_DATA_DIR, else download known corpora
    allow_unseen_tags: bool = False  # devel/test tags absent from train: error unless true
    # the corpus files' tagging scheme, converted to BIO as they are read; auto: detected per
    # file (IOBES by its E-/S- tags, IOB1 by entities that start with I-), and said in the log
    tag_scheme: str = "auto"
    # keep only these entity types (the others become O) in every split; empty: all. A BigBio
    # corpus drops the other types before it resolves overlaps, so they hide no mention
    entity_types: list[str] = dataclasses.field(default_factory=list)
    # --- Hub datasets (dataset: hf:...)
    dataset_config: str = ""  # the hub config (bc2gm of bigbio/blurb); empty: its only one
    # a commit, tag or branch of the hub dataset; empty: main. The run's fingerprint holds the
    # commit the cache resolved either way, so an update on the hub retrains
    dataset_revision: str = ""
    tokens_column: str = "tokens"  # the column of each row's words
    # the column of each row's tags, one per word: ClassLabel integers (read through the
    # feature's names) or strings, in any tagging scheme
    tags_column: str = "ner_tags"
    # the type of tags that have none (O, B, I, as in bigbio/blurb); empty: each row's `type`
    # column gives it
    entity_type: str = ""
    # --- Evaluation on another corpus
    # score test on this corpus's test split (any dataset form) instead; training and the devel
    # choice still use `dataset`. Predicted types it does not annotate are dropped before
    # scoring, its types the model lacks count as missed, and the table says both
    test_dataset: str = ""
    test_dataset_config: str = ""  # the hub config of test_dataset
    test_dataset_revision: str = ""  # a commit, tag or branch of test_dataset
    # rename test_dataset's entity types to the model's before scoring, {TestType: ModelType}:
    # {Disease: DiseaseOrPhenotype}
    type_map: dict[str, str] = dataclasses.field(default_factory=dict)
    # --- The run
    train_limit: int = 0  # use only the first N training sentences (0 = all): demos, smoke runs
    eval_limit: int = 0  # use only the first N devel and test sentences (0 = all)
    max_length: int = 128  # subwords per window; longer sentences are split, never truncated
    pad_multiple: int = 0  # pad batches to a multiple of this; 0: 16 on CUDA, 1 (none) on CPU
    batch_size: int = 32  # training windows per step
    eval_batch_size: int = 128  # evaluation keeps no activations, so it affords larger batches
    epochs: int = 3  # passes over the training split; the best devel epoch is kept
    lr: float = 0.0  # peak learning rate of the encoder and head; 0: the method's default
    weight_decay: float = 0.01  # AdamW decay, never on biases and LayerNorm weights
    lr_scheduler_type: str = "linear"  # how the learning rate decays after warm-up
    warmup_steps: int = 0  # linear warm-up steps; overrides warmup_ratio when > 0
    warmup_ratio: float = 0.1  # warm-up as a share of all steps, when warmup_steps is 0
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    dropout: float = 0.1  # before the tagging head
    # fp16 needs CUDA (with GradScaler; fp32 on the CPU), bf16 runs on CUDA or CPU; frozen
    # weights are then stored in the half dtype
    precision: str = "fp32"
    fp16: bool = False  # shorthand for precision: fp16
    # CUDA device index, -1 for the CPU (used anyway when CUDA is absent), or a list of
    # indices that compare.py --parallel spreads runs over; read as a list (`gpu: 0` is [0])
    gpu: list[int] = dataclasses.field(default_factory=lambda: [0])
    seed: int = 42  # seeds python, numpy and torch; runs use seed, seed+1, ... (repeats)
    repeats: int = 3  # runs per experiment in compare.py, each with its own seed
    # where runs and the sweep's table go, one folder per sweep; a config file that names
    # none writes to outputs/<its file name> (configs/bc5cdr.yml: outputs/bc5cdr)
    output_dir: str = "outputs"
    log_every: int = 50  # steps between loss lines in the training log
    save_weights: bool = True  # write the trained weights (what the method trains) per run
    aug: AugConfig | None = None  # entity-swap augmentation of the training split, per epoch
    # expand this block into one experiment per combination of these values, e.g.
    # {lr: [5e-4, 1e-3]}; the table marks the combination with the best mean devel F1
    grid: dict[str, list] = dataclasses.field(default_factory=dict)
    tracker: str = "none"  # log loss, lr and devel F1 live, to TensorBoard or W&B
    tracker_project: str = "ner-peft"  # tracker project; runs are named <name>/seed<seed>
    gradient_checkpointing: bool = False  # recompute encoder layers in backward: less memory
    # --- LoRA (method: lora)
    rank: int = 16  # r of every adapter
    alpha: float = 32.0  # scale = alpha / rank, alpha fixed across ranks as in Hu et al.
    lora_dropout: float = 0.0  # dropout on the adapter's input; 0 runs no mask kernel
    # the linears that get adapters: names, dotted suffixes (`output.dense` matches both
    # output projections), or the presets `attention` (query, key, value, attention output) and
    # `all-linear` (those and the feed-forward pair); presets are expanded into names
    targets: list[str] = dataclasses.field(default_factory=lambda: ["attention"])
    rslora: bool = False  # scale = alpha / sqrt(rank), which keeps large ranks learning
    # DoRA (Liu et al. 2024): W0 + s B A split into a per-row direction and a trained magnitude
    dora: bool = False
    # LoRA+ (Hayou et al. 2024): B's learning rate is this times A's, in its own optimizer
    # group; 0 or 1: plain LoRA
    lora_plus_ratio: float = 0.0
    # --- Bottleneck adapters (method: adapter), as AdapterHub's `adapters` defines them
    # pfeiffer: one adapter after each layer's feed-forward block (AdapterHub's SeqBnConfig);
    # houlsby: also one after attention (DoubleSeqBnConfig); parallel: one beside each
    # feed-forward block, reading its input (He et al.'s scaled parallel adapter, ParBnConfig)
    adapter_kind: str = "pfeiffer"
    reduction: int = 16  # bottleneck width = hidden size / reduction (24 for MiniLM)
    # the adapter reads LN(h + r), the sub-layer's output after the layer's own residual and
    # LayerNorm, rather than h (AdapterHub's name); null: the kind's own, true for pfeiffer,
    # false for houlsby; parallel reads the block's input, so true is an error there
    original_ln_before: bool | None = None
    # the bottleneck's activation; empty: the kind's own, AdapterHub's (relu for pfeiffer and
    # parallel, swish for houlsby)
    non_linearity: str = ""
    # the adapter's output times this (AdapterHub's `scaling`); 0: the kind's own, 4 for
    # parallel (He et al.), else 1
    adapter_scaling: float = 0.0
    # --- Deep prefix tuning (method: prefix)
    prefix_length: int = 16  # P trained key/value pairs at every layer (P-Tuning v2's for NER)
    # 0: the prefixes are the trained parameters themselves (P-Tuning v2); > 0: an MLP of this
    # width computes them from one shared embedding (Li & Liang's reparameterisation)
    prefix_projection: int = 0
    # --- Partial fine-tuning (method: partial)
    # the top k encoder layers train whole; the embeddings and the layers below stay frozen
    train_layers: int = 2
    # --- CRF head (any method)
    crf: bool = False  # a linear-chain CRF on the word emissions: NLL training, Viterbi decoding
    # learning rate of the CRF's transition, start and end scores: a CRF at an encoder's
    # learning rate barely moves its transitions (chosen on devel, README)
    crf_lr: float = 5e-2
    crf_constraints: bool = True  # forbid invalid BIO transitions in training and decoding
    # how log Z and the best path are computed (crf.py): loop is the readable recursion, scaled
    # the exp-space sum (CPU), scan the parallel tree (GPU); auto: scan on CUDA, else scaled
    # for log Z and loop for decoding. All agree up to float rounding; the run log says which
    crf_algorithm: str = "auto"
    # --- Fusion of adapters (method: fusion)
    # the adapters to fuse, all LoRA or all bottleneck: experiments of the same sweep (same
    # seed) or run folders
    adapters: list[str] = dataclasses.field(default_factory=list)
    # merge: weighted sum of ΔW (weight space); attention: per-token mix of outputs. Both start
    # from the same function, the average of the adapters (fusion.py)
    fusion_mode: str = "merge"
    # fixed fusion weights, one per adapter (then merged into the base); empty: learned
    fusion_weights: list[float] = dataclasses.field(default_factory=list)
    fusion_rank: int = 0  # merge, fixed weights: SVD-truncate each fused ΔW to this rank (0: no)
    # attention: width of the query and key projections; 0: AdapterHub's AdapterFusion (H x H
    # query and key with biases, unscaled scores dropped out in training); d > 0: the narrow
    # variant (H -> d without biases, scores / sqrt(d)) this project ran first, with 16
    fusion_dim: int = 0
    # attention: a value matrix over the mixed outputs, starting at the identity and kept near
    # it by 0.01 ||I - V||^2 in the loss (AdapterHub's dynamic AdapterFusion); false: none
    fusion_value: bool = True


@dataclass
class SweepSettings:
    """Top-level keys of a sweep file that belong to the comparison, not to any one run."""
    # the experiment every other is compared with (ΔF1, paired bootstrap); empty: the first one.
    # A gridded experiment's name means its combination with the best mean devel F1. A list
    # names one per test set (a sweep over several corpora): each row is compared with the one
    # scored on its test sentences
    baseline: list[str] = dataclasses.field(default_factory=list)
    bootstrap_resamples: int = 1000  # paired bootstrap resamples of the test sentences
    bootstrap_seed: int = 0  # seed of the bootstrap's resampling: the same table every time


SWEEP_KEYS = tuple(f.name for f in dataclasses.fields(SweepSettings))


class ConfigError(ValueError):
    """One line per problem: where (file:line or the command line), which key, what was
    expected."""
