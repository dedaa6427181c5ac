"""Wrapping the named nn.Linear layers of an encoder: which linears a target names, and the swap.

Every method that changes an encoder's linears (LoRA and DoRA in lora.py, bottleneck adapters in
adapters.py, IA3 in ia3.py, fusion in fusion.py) goes through here, without editing the
encoder's source: `linear_names` picks the linears, `wrap_linears` swaps each for what a factory
builds around it.

A target is a module name or a dotted suffix of one, PEFT's `target_modules` rule: `query` names
every `...attention.self.query`, and `output.dense` both the attention's output projection and
the feed-forward output. Two presets name BERT's linears by role:

    attention   query, key, value, attention.output.dense (today's default)
    all-linear  the four above, intermediate.dense and output.dense: every linear of a layer

Left out: regular-expression targets, per-layer selections (`layers_to_transform`), and module
names of encoders other than BERT's family (BERT, RoBERTa, MiniLM and BioBERT share them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

# All four linears of BERT's self-attention: W_q, W_k, W_v and the output projection W_o. Hu et al.
# default to W_q and W_v; their fixed-budget ablation (Sec. 7.1) did as well or better with all
# four. all-linear adds the feed-forward block (QLoRA, Dettmers et al. 2023, Sec. 4).
TARGET_PRESETS = {
    "attention": ("query", "key", "value", "attention.output.dense"),
    "all-linear": ("query", "key", "value", "attention.output.dense", "intermediate.dense",
                   "output.dense"),
}


def expand_targets(targets: Sequence[str]) -> list[str]:
    """Presets replaced by the names they stand for, in order, each name once.

    ["attention", "intermediate.dense"] -> ["query", "key", "value", "attention.output.dense",
                                            "intermediate.dense"]
    """
    names = [name for t in targets for name in TARGET_PRESETS.get(t, (t,))]
    return list(dict.fromkeys(names))


def matches(name: str, target: str) -> bool:
    """PEFT's rule: the dotted name equals the target or ends with '.' + it."""
    return name == target or name.endswith("." + target)


def layer_suffix(name: str) -> str:
    """The name after the last layer index: `encoder.layer.1.attention.self.query` ->
    `attention.self.query`; a name without an index is its own suffix."""
    parts = name.split(".")
    last_index = max((i for i, p in enumerate(parts[:-1]) if p.isdigit()), default=-1)
    return ".".join(parts[last_index + 1 :])


def linear_suffixes(names: list[str]) -> list[str]:
    """The shortest target for each linear of a layer, to list in an error message.

    Linears are grouped by their layer suffix; a group's target is the shortest dotted suffix
    that matches exactly its members, else the whole layer suffix. With BERT's layers 0 and 1:

        ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.output.dense",
         "encoder.layer.0.output.dense", "encoder.layer.1.attention.self.query",
         "encoder.layer.1.attention.output.dense", "encoder.layer.1.output.dense"]
        -> ["query", "attention.output.dense", "output.dense"]

    (`dense` would match all four denses and `output.dense` also the attention's.)
    """
    targets = []
    for suffix in dict.fromkeys(layer_suffix(n) for n in names):
        members = {n for n in names if layer_suffix(n) == suffix}
        parts = suffix.split(".")
        shorter = (".".join(parts[-i:]) for i in range(1, len(parts)))
        exact = (t for t in shorter if {n for n in names if matches(n, t)} == members)
        targets.append(next(exact, suffix))
    return targets


def linear_names(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """The names of the nn.Linear modules that `targets` (names, suffixes or presets) match, in
    model order. A target that matches none is a ValueError listing the linears there are."""
    if isinstance(targets, str) or not targets:
        raise ValueError(f"targets must be a non-empty sequence of module names, got {targets!r}")
    names = expand_targets(targets)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    unmatched = [t for t in names if not any(matches(n, t) for n in linears)]
    if unmatched:
        raise ValueError(
            f"target(s) {', '.join(unmatched)} match no nn.Linear; the model's linears are: "
            f"{', '.join(linear_suffixes(linears))} (or a preset: {', '.join(TARGET_PRESETS)})"
        )
    return [n for n in linears if any(matches(n, t) for t in names)]


def wrap_linears(model: nn.Module, names: Sequence[str],
                 factory: Callable[[str, nn.Linear], nn.Module]) -> None:
    """Replace each named nn.Linear by `factory(name, linear)`, which wraps it (in place)."""
    for name in names:
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name} is a {type(linear).__name__}, not an nn.Linear; was it "
                            f"wrapped already?")
        model.set_submodule(name, factory(name, linear), strict=True)


def layer_linear_shapes(hidden: int, intermediate: int) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each linear of a BERT layer, by layer suffix: what a parameter formula
    multiplies (methods.py)."""
    return {"attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (hidden, intermediate), "output.dense": (intermediate, hidden)}


def targeted_shapes(targets: Sequence[str], hidden: int, intermediate: int
                    ) -> list[tuple[int, int]]:
    """(d_in, d_out) of each linear of one BERT layer that `targets` match."""
    names = expand_targets(targets)
    return [shape for suffix, shape in layer_linear_shapes(hidden, intermediate).items()
            if any(matches(suffix, t) for t in names)]
