"""fusion.py: weight-space and output-space fusion of LoRA adapters, and fusion sweeps."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import make_sentences, make_tiny_bert, write_iob
from safetensors.torch import load_file, save_file

import compare
import fusion
import lora
import model
import train
from runs import config_files
from runs.folders import SavedRun


def random_adapter(name: str, rank: int, seed: int) -> fusion.SourceAdapter:
    """Random factors for the tiny BERT's attention linears (scale alpha / r with alpha = 8)."""
    generator = torch.Generator().manual_seed(seed)
    encoder = make_tiny_bert()
    modules = lora.inject_lora(encoder, ["attention"], rank=rank, alpha=8.0)
    return fusion.SourceAdapter(name, {
        m: (torch.randn(rank, 32, generator=generator) * 0.3,
            torch.randn(32, rank, generator=generator) * 0.3, 8.0 / rank) for m in modules})


def with_adapter(source: fusion.SourceAdapter):
    """The tiny BERT with `source` as a plain LoRA: what one adapter alone computes."""
    encoder = make_tiny_bert()
    lora.inject_lora(encoder, list(source.factors), rank=next(iter(source.factors.values()))[0]
                     .shape[0], alpha=8.0)
    with torch.no_grad():
        for name, layer in lora.lora_layers(encoder).items():
            layer.lora_A.copy_(source.factors[name][0])
            layer.lora_B.copy_(source.factors[name][1])
    return encoder.eval()


def fused(sources, mode, weights=None, rank=0, dim=0, value=True):
    encoder = make_tiny_bert()
    report = fusion.fuse(encoder, sources, mode, weights, rank, dim, value)
    return encoder.eval(), report


def hidden(encoder, seed=0):
    input_ids = torch.randint(5, 40, (3, 10), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return encoder(input_ids=input_ids).last_hidden_state  # (B, T, H)


CHEM, DISEASE = random_adapter("chem", 4, 1), random_adapter("disease", 2, 2)


def test_weights_one_zero_equal_the_first_adapter_alone():
    encoder, _ = fused([CHEM, DISEASE], "merge", [1.0, 0.0])
    torch.testing.assert_close(hidden(encoder), hidden(with_adapter(CHEM)))
    assert not torch.allclose(hidden(encoder), hidden(make_tiny_bert().eval()))


@pytest.mark.parametrize("weights", [[1.0, 1.0], [0.3, -1.2], [0.5, 0.5]])
def test_concatenated_factors_are_exactly_the_weighted_delta_sum(weights):
    encoder, _ = fused([CHEM, DISEASE], "merge", weights)
    base = make_tiny_bert()
    x = torch.randn(5, 32)
    for name, layer in zip(CHEM.factors, fusion.fusion_layers(encoder)):
        explicit = sum(w * s * B @ A for w, (A, B, s) in
                       zip(weights, (CHEM.factors[name], DISEASE.factors[name])))
        torch.testing.assert_close(layer.delta_weight(), explicit)
        linear = base.get_submodule(name)
        slow = F.linear(x, linear.weight + explicit, linear.bias)  # the slow twin
        torch.testing.assert_close(layer(x), slow)


def test_fusing_an_adapter_with_itself_at_halves_is_the_adapter():
    for mode, weights in (("merge", [0.5, 0.5]), ("attention", None)):
        encoder, _ = fused([CHEM, CHEM], mode, weights)
        torch.testing.assert_close(hidden(encoder), hidden(with_adapter(CHEM)))


def test_svd_at_full_rank_is_exact_and_lower_rank_meets_eckart_young():
    exact, report = fused([CHEM, DISEASE], "merge", [1.0, 1.0], rank=6)
    assert report["svd_relative_error_max"] < 1e-5
    torch.testing.assert_close(hidden(exact), hidden(fused([CHEM, DISEASE], "merge",
                                                           [1.0, 1.0])[0]))
    _, report = fused([CHEM, DISEASE], "merge", [1.0, 1.0], rank=3)
    errors = []
    for name in CHEM.factors:
        delta = sum(s * B @ A for A, B, s in (CHEM.factors[name], DISEASE.factors[name]))
        S = torch.linalg.svdvals(delta)
        errors.append(float(S[3:].square().sum().sqrt() / S.square().sum().sqrt()))
    assert report["svd_relative_error_max"] == pytest.approx(max(errors), rel=1e-4)
    assert report["svd_relative_error_max"] > 0.01


def test_merged_equals_unmerged_and_merge_is_idempotent():
    encoder, _ = fused([CHEM, DISEASE], "merge", [0.7, 1.3])
    before = hidden(encoder)
    weights = [layer.base.weight.clone() for layer in fusion.fusion_layers(encoder)]
    for layer in fusion.fusion_layers(encoder):
        layer.merge()
        once = layer.base.weight.clone()
        layer.merge()
        assert torch.equal(layer.base.weight, once) and layer.merged
    torch.testing.assert_close(hidden(encoder), before, atol=1e-4, rtol=1e-4)  # fp32 rounding
    for layer, weight in zip(fusion.fusion_layers(encoder), weights):
        layer.unmerge()
        layer.unmerge()
        torch.testing.assert_close(layer.base.weight, weight)
        assert not layer.merged
    torch.testing.assert_close(hidden(encoder), before)
    learned, _ = fused([CHEM, DISEASE], "merge")
    with pytest.raises(ValueError, match="merging needs fixed weights"):
        fusion.fusion_layers(learned)[0].merge()


@pytest.mark.parametrize("mode", ["merge", "attention"])
def test_fusion_parameters_get_gradients_and_adapters_do_not(mode):
    encoder, _ = fused([CHEM, DISEASE], mode)
    encoder.train()
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    expected = ("weights",) if mode == "merge" else tuple(
        f"fusion.{part}" for part in ("query.weight", "query.bias", "key.weight", "key.bias",
                                      "value.weight"))
    assert trainable and all(n.endswith(expected) for n in trainable)
    hidden_states = encoder(input_ids=torch.randint(5, 40, (2, 8))).last_hidden_state
    hidden_states.pow(2).sum().backward()
    grads = {n: p.grad for n, p in encoder.named_parameters() if p.requires_grad}
    firsts = ("weights",) if mode == "merge" else ("query.weight", "value.weight")
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items()
               if n.endswith(firsts))
    for layer in fusion.fusion_layers(encoder):  # adapters are buffers: never trained
        assert not isinstance(layer.A, torch.nn.Parameter) and not layer.A.requires_grad


@torch.no_grad()
def randomise_fusion(attention: fusion.SourceAttention, seed: int = 0) -> None:
    """Query, biases and value away from their start (zero, zero, the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in attention.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        param.copy_(param + noise * (0.1 if name.startswith("value") else 1.0))


def slow_attention(attention: fusion.SourceAttention, q, deltas, dim: int):
    """One token's mix written out: scores <W_q q + b_q, W_k δ_i + b_k>, divided by sqrt(d)
    for dim d > 0 (AdapterHub's layout, dim 0: no division, biases), softmax, V Σ α_i δ_i."""
    def linear(module, x):
        return module.weight @ x + (module.bias if module.bias is not None else 0)

    scores = torch.stack([linear(attention.query, q) @ linear(attention.key, d) for d in deltas])
    mix = torch.softmax(scores / (dim ** 0.5 if dim else 1.0), 0)
    mixed = sum(w * d for w, d in zip(mix, deltas))
    return attention.value.weight @ mixed if attention.value is not None else mixed


@pytest.mark.parametrize("dim, value", [(0, True), (16, False), (8, True)])
def test_attention_mixing_is_a_per_token_softmax_matching_a_slow_loop(dim, value):
    encoder, _ = fused([CHEM, DISEASE], "attention", dim=dim, value=value)
    layer = fusion.fusion_layers(encoder)[0]
    assert (layer.fusion.query.bias is None) == (dim > 0)
    assert layer.fusion.query.weight.shape == (dim or 32, 32)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    randomise_fusion(layer.fusion)
    with torch.no_grad():
        fast = layer(x)
        alpha = layer.fusion.weights(x, layer.adapter_outputs(x))  # (B, T, N)
        torch.testing.assert_close(alpha.sum(-1), torch.ones(2, 5))
        assert alpha.std() > 0.01  # really mixes differently per token
        name = next(iter(CHEM.factors))
        for b in range(2):
            for t in range(5):
                token = x[b, t]
                deltas = [s * B @ (A @ token) for A, B, s in
                          (CHEM.factors[name], DISEASE.factors[name])]
                slow = layer.base(token) + slow_attention(layer.fusion, token, deltas, dim)
                torch.testing.assert_close(fast[b, t], slow)


def test_adapterhubs_layout_drops_scores_out_in_training_only():
    attention = fusion.SourceAttention(8, 8, dim=0, value=True, score_dropout=0.5)
    narrow = fusion.SourceAttention(8, 8, dim=4, value=False, score_dropout=0.5)
    randomise_fusion(attention)
    randomise_fusion(narrow)
    q, deltas = torch.randn(6, 8), torch.randn(6, 3, 8)
    with torch.no_grad():
        assert torch.equal(attention.eval()(q, deltas), attention(q, deltas))  # eval: no masks
        assert not torch.equal(attention.train()(q, deltas), attention.eval()(q, deltas))
        assert torch.equal(narrow.train()(q, deltas), narrow.eval()(q, deltas))


def test_value_regularizer_is_a_hundredth_of_the_squared_distance_to_the_identity():
    encoder, _ = fused([CHEM, DISEASE], "attention")
    assert fusion.value_regularizer(encoder) == 0  # V starts at the identity
    layers = fusion.fusion_layers(encoder)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer.fusion.value.weight[0, 1] = i + 1.0
    assert float(fusion.value_regularizer(encoder).detach()) == pytest.approx(
        0.01 * sum((i + 1.0) ** 2 for i in range(len(layers))))
    fusion.value_regularizer(encoder).backward()  # a gradient towards the identity
    assert layers[1].fusion.value.weight.grad[0, 1] == pytest.approx(0.01 * 2 * 2.0)
    narrow, _ = fused([CHEM, DISEASE], "attention", dim=16, value=False)
    assert fusion.value_regularizer(narrow) == 0


def test_attention_starts_as_the_average():
    encoder, _ = fused([CHEM, DISEASE], "attention")
    torch.testing.assert_close(hidden(encoder), hidden(fused([CHEM, DISEASE], "merge",
                                                             [0.5, 0.5])[0]))


@pytest.mark.parametrize("sources", [[CHEM, DISEASE], [CHEM, DISEASE, random_adapter("x", 3, 4)]])
def test_learned_merge_and_attention_start_from_the_same_function(sources):
    """At step 0 both learned modes compute base + the mean of the ΔW: per layer, on the same
    input, and through the whole encoder; fixed weights keep their given values."""
    merge, _ = fused(sources, "merge")
    attention, _ = fused(sources, "attention")
    n = len(sources)
    for layer in fusion.fusion_layers(merge):
        assert layer.learned and torch.equal(layer.weights.detach(), torch.full((n,), 1.0 / n))
    x = torch.randn(4, 7, 32, generator=torch.Generator().manual_seed(5))
    for m, a in zip(fusion.fusion_layers(merge), fusion.fusion_layers(attention), strict=True):
        with torch.no_grad():
            torch.testing.assert_close(m(x), a(x))
            assert (m(x) - m.base(x)).abs().max() > 0.1  # the adapters really contribute
    torch.testing.assert_close(hidden(merge), hidden(attention))
    assert not torch.allclose(hidden(merge), hidden(fused(sources, "merge", [1.0] * n)[0]),
                              atol=1e-3)  # the plain sum, where merge used to start, differs
    fixed, _ = fused(sources, "merge", [0.3, 1.7, -1.0][:n])
    assert fusion.fusion_layers(fixed)[0].weights.tolist() == pytest.approx([0.3, 1.7, -1.0][:n])


def test_incompatible_sources_are_named():
    cfg = config_files.make_config({"method": "fusion", "model": "tiny", "adapters": ["a", "b"],
                                    "fusion_mode": "attention"}, "test")

    def source(name, kind="lora", **values):
        return kind, {"name": name, "model": "tiny", "targets": ["query"], **values}

    assert fusion.sources_problems(cfg, [source("a"), source("b")]) == []
    found = fusion.sources_problems(cfg, [
        source("a", model="another-encoder"), source("b", dora=True, targets=["value"]),
        source("c", kind=None, method="full")])
    assert found == [
        "source 'a': model 'another-encoder' differs from 'tiny'",
        ("source 'b' is a DoRA adapter, which rescales its base weight and has no ΔW to fuse; "
         "fuse plain LoRA adapters"),
        "source 'c': method 'full' makes no adapter to fuse",
        "its sources adapt different linears: [('query',), ('value',)]"]
    with pytest.raises(ValueError, match="fusion_weights has 3 values for 2"):
        fused([CHEM, DISEASE], "merge", [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="needs fusion: merge with fixed weights"):
        fused([CHEM, DISEASE], "attention", rank=2)


# ------------------------------------------------------------------ reading a run's adapter


def save_lora_run(folder, rslora: bool):
    """A LoRA tagger with random adapters, saved as a run saves it (config.json and the trainable
    parameters in weights.safetensors, without training); returns the tagger."""
    cfg = config_files.make_config({"gpu": -1, "method": "lora", "rank": 4, "alpha": 8.0,
                              "rslora": rslora, "name": "chem", "model": "tiny"}, "test")
    tagger, _ = model.build_tagger(cfg, ["O", "B-X", "I-X"], make_tiny_bert())
    with torch.no_grad():
        for layer in lora.lora_layers(tagger.encoder).values():
            torch.nn.init.normal_(layer.lora_B)
    folder.mkdir()
    save_file(model.trained_state(tagger), str(folder / "weights.safetensors"))
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    return tagger


@pytest.mark.parametrize("rslora", [False, True])
def test_source_adapter_is_each_layers_update_in_the_run(tmp_path, rslora):
    """The factors read from a run's weights, with the scale its config gives, are the trained
    layers' ΔW = s B A: right keys (the tagger's encoder prefix) and right scale."""
    layers = lora.lora_layers(save_lora_run(tmp_path / "run", rslora).encoder)
    source = fusion.load_source(model.source_runs([tmp_path / "run"])[0])
    assert source.name == "chem"
    assert set(source.factors) == set(layers)  # safetensors sorts its keys
    for name, (A, B, s) in source.factors.items():
        assert s == pytest.approx(8.0 / (2.0 if rslora else 4.0))  # alpha / sqrt(r) or alpha / r
        torch.testing.assert_close(s * B @ A, layers[name].delta_weight())


def test_source_adapter_with_half_a_pair_is_named(tmp_path):
    save_lora_run(tmp_path / "run", rslora=False)
    path = tmp_path / "run" / "weights.safetensors"
    weights = load_file(str(path))
    del weights["encoder.encoder.layer.1.attention.self.value.lora_B"]
    save_file(weights, str(path))
    with pytest.raises(ValueError, match="run: weights.safetensors: encoder.layer.1.attention"
                                         ".self.value.lora_B is missing"):
        fusion.load_source(model.source_runs([tmp_path / "run"])[0])


# ------------------------------------------------------------------ fusion sweeps


def single_type(sentences, keep: str):
    return [(tokens, [t if t.endswith(keep) else "O" for t in tags]) for tokens, tags in sentences]


@pytest.fixture
def domain_corpora(tmp_path):
    """Three corpora over the same sentences: chemicals only, diseases only, both."""
    splits = {s: make_sentences(n, seed=i) for i, (s, n) in
              enumerate((("train", 40), ("devel", 12), ("test", 12)))}
    for name, keep in (("chem", "Chemical"), ("disease", "Disease"), ("both", "")):
        for split, sentences in splits.items():
            write_iob(tmp_path / name / f"{split}.tsv",
                      single_type(sentences, keep) if keep else sentences)
    return tmp_path


def sweep(tmp_path, encoder, experiments: str):
    path = tmp_path / "fusion.yml"
    path.write_text(f"model: {encoder}\ndata_dir: {tmp_path}\ndataset: both\ngpu: -1\n"
                    f"epochs: 2\nbatch_size: 8\nlr: 3e-3\nrank: 4\nrepeats: 1\n"
                    f"output_dir: {tmp_path / 'out'}\nexperiments:\n{experiments}")
    return path


def test_sweep_trains_sources_first_then_fuses(tmp_path, tiny_encoder, domain_corpora):
    path = sweep(tmp_path, tiny_encoder,
                 "  - {name: fused-fixed, method: fusion, adapters: [chem, disease],"
                 " fusion_weights: [1.0, 1.0]}\n"
                 "  - {name: fused-learned, method: fusion, adapters: [chem, disease]}\n"
                 "  - {name: fused-attention, method: fusion, fusion: attention,"
                 " adapters: [chem, disease]}\n"
                 "  - {name: fused-svd, method: fusion, adapters: [chem, disease],"
                 " fusion_weights: [1.0, 1.0], fusion_rank: 2}\n"
                 "  - {name: chem, method: lora, dataset: chem}\n"
                 "  - {name: disease, method: lora, dataset: disease}\n")
    assert compare.main([str(path)]) == 0
    results = [json.loads(line) for line in
               (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in results][:2] == ["chem", "disease"]
    by_name = {r["name"]: r for r in results}
    head = 32 * 5 + 5
    assert by_name["fused-fixed"]["trainable_params"] == head  # ΔW merged: only the head trains
    assert by_name["fused-learned"]["trainable_params"] == head + 2 * 8
    # per linear: query and key 32 x 32 with biases, value 32 x 32
    assert by_name["fused-attention"]["trainable_params"] == head + 8 * (3 * 32 * 32 + 2 * 32)
    assert 0 < by_name["fused-svd"]["svd_relative_error_max"] < 1
    assert set(by_name["fused-fixed"]["test"]["per_type"]) == {"Chemical", "Disease"}

    # Choosing one fusion brings its (already finished) sources along.
    assert compare.main([str(path), "--only=fused-learned"]) == 0


def test_missing_or_incompatible_source_fails_before_training(tmp_path, tiny_encoder,
                                                              domain_corpora, capsys):
    fusion_of = "  - {name: f, method: fusion, %s}\n"
    chem = "  - {name: chem, method: %s, dataset: chem%s}\n"
    disease = "  - {name: disease, method: lora, dataset: disease}\n"
    cases = [
        (fusion_of % "adapters: [chem, nowhere]" + chem % ("lora", ""), "'nowhere' is neither"),
        (fusion_of % "adapters: [chem]" + chem % ("full", ""),
         "method 'full' makes no adapter to fuse"),
        (fusion_of % "adapters: [chem], repeats: 2" + chem % ("lora", ""),
         "the fusion needs [42, 43]"),
        (fusion_of % "adapters: [chem, disease]" + chem % ("lora", ", targets: [query]")
         + disease, "adapt different linears"),
    ]
    for experiments, words in cases:  # a config error: exit status 2, the reason on stderr
        assert compare.main([str(sweep(tmp_path, tiny_encoder, experiments))]) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


def test_fusion_of_saved_run_folders(tmp_path, tiny_encoder, domain_corpora):
    assert compare.main([str(sweep(tmp_path, tiny_encoder,
                                   "  - {name: chem, method: lora, dataset: chem}\n"))]) == 0
    folder = tmp_path / "out" / "chem" / "seed42"
    source = fusion.load_source(model.source_runs([folder])[0])
    assert source.name == "chem" and len(source.factors) == 8
    cfg = config_files.make_config({"model": str(tiny_encoder), "data_dir": str(tmp_path),
                             "dataset": "both", "gpu": -1, "epochs": 1, "method": "fusion",
                             "adapters": [str(folder), str(folder)], "fusion_weights": [0.5, 0.5],
                             "output_dir": str(tmp_path / "out2")}, "test")
    assert train.train(cfg)["fused_linears"] == 8
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: expected a finished run folder"):
        model.source_runs([tmp_path / "empty"])


# ------------------------------------------------------------------ bottleneck adapters


def random_bottlenecks(name: str, seed: int, kind: str = "pfeiffer",
                       **options) -> fusion.SourceBottlenecks:
    """Adapters of `kind` of width 4 with random weights for the tiny BERT."""
    import adapters

    torch.manual_seed(seed)
    encoder = make_tiny_bert()
    adapters.inject_adapters(encoder, kind, reduction=8, **options)
    with torch.no_grad():
        for param in encoder.parameters():
            if param.requires_grad:
                param.normal_(0, 0.3)
    state = {n: p.detach().clone() for n, p in encoder.named_parameters() if p.requires_grad}
    resolved = adapters.kind_options(kind, options.get("original_ln_before"),
                                     options.get("non_linearity", ""), options.get("scaling", 0))
    return fusion.SourceBottlenecks(name, adapters.adapter_weights(state),
                                    {"adapter_kind": kind, **resolved})


BOTTLENECKS = [random_bottlenecks("chem", 1), random_bottlenecks("disease", 2)]


def bottleneck_fused(sources=BOTTLENECKS, dim=0, value=True):
    encoder = make_tiny_bert()
    fusion.fuse_bottlenecks(encoder, sources, dim, value)
    return encoder.eval()


# (kind, options of both sources, what they and the query read, written out)
BOTTLENECK_KINDS = [("pfeiffer", {}, "LN(h + r)"), ("houlsby", {}, "h"), ("parallel", {}, "r"),
                    ("pfeiffer", {"original_ln_before": False, "scaling": 2.0}, "h")]


@pytest.mark.parametrize("dim, value", [(0, True), (8, False)])
@pytest.mark.parametrize("kind, options, read", BOTTLENECK_KINDS)
def test_bottleneck_fusion_mixes_per_token_as_a_slow_loop_does(kind, options, read, dim, value):
    sources = [random_bottlenecks("chem", 1, kind, **options),
               random_bottlenecks("disease", 2, kind, **options)]
    encoder = bottleneck_fused(sources, dim, value)
    block = fusion.fusion_layers(encoder)[-1]  # a feed-forward output block
    activation = {"pfeiffer": torch.relu, "houlsby": torch.nn.functional.silu,
                  "parallel": torch.relu}[kind]
    scale = options.get("scaling", 4.0 if kind == "parallel" else 1.0)
    randomise_fusion(block.fusion)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 64, generator=generator)  # (B, T, I): the feed-forward's inner output
    r = torch.randn(2, 3, 32, generator=generator)  # (B, T, H): the block's input
    with torch.no_grad():
        fast = block(x, r)
        for b in range(2):
            for t in range(3):
                h = block.dense.weight @ x[b, t] + block.dense.bias  # (H,)
                a = {"h": h, "r": r[b, t], "LN(h + r)": block.LayerNorm(h + r[b, t])}[read]
                deltas = [scale * (a_.up.weight @ activation(a_.down.weight @ a + a_.down.bias)
                                   + a_.up.bias) for a_ in block.sources]
                slow = block.LayerNorm(h + r[b, t] + slow_attention(block.fusion, a, deltas, dim))
                torch.testing.assert_close(fast[b, t], slow)


def test_bottleneck_fusion_starts_as_the_average_of_the_adapters():
    encoder = bottleneck_fused()
    for block in fusion.fusion_layers(encoder):
        x, r = torch.randn(4, 64), torch.randn(4, 32)
        with torch.no_grad():
            h = block.dense(x)
            a = block.LayerNorm(h + r)  # pfeiffer sources read after the layer's LayerNorm
            mean = sum(source(a) for source in block.sources) / 2
            torch.testing.assert_close(block(x, r), block.LayerNorm(h + r + mean))
    assert {n for n, p in encoder.named_parameters() if p.requires_grad} == {
        f"encoder.layer.{i}.output.fusion.{part}" for i in (0, 1)
        for part in ("query.weight", "query.bias", "key.weight", "key.bias", "value.weight")}


def test_bottleneck_sources_must_read_alike_and_name_their_options():
    cfg = config_files.make_config({"method": "fusion", "model": "tiny", "adapters": ["a", "b"],
                                    "fusion_mode": "attention"}, "test")

    def source(name, **values):
        return "adapter", {"name": name, "model": "tiny", "adapter_kind": "pfeiffer",
                           "original_ln_before": True, "non_linearity": "relu",
                           "adapter_scaling": 1.0, **values}

    assert fusion.sources_problems(cfg, [source("a"), source("b", non_linearity="gelu")]) == []
    assert fusion.sources_problems(cfg, [source("a"), source("b", original_ln_before=False)]) \
        == ["its sources adapt different linears: [('pfeiffer', False), ('pfeiffer', True)]"]
    old = source("old")[1]
    del old["non_linearity"], old["adapter_scaling"]
    assert fusion.sources_problems(cfg, [("adapter", old)]) == [
        ("source 'old': its config names no non_linearity, adapter_scaling (a run from before "
         "adapters took AdapterHub's options); train it again")]


def test_lora_and_bottleneck_sources_together_are_refused_by_apply(tmp_path):
    cfg = config_files.make_config({"method": "fusion", "model": "tiny", "adapters": ["a", "b"],
                                    "fusion_mode": "attention"}, "test")
    runs = [SavedRun(tmp_path / "a", {"name": "a", "model": "tiny", "targets": ["query"]},
                     {f"{m}.{part}": t for m, (a, b, _) in CHEM.factors.items()
                      for part, t in (("lora_A", a), ("lora_B", b))}),
            SavedRun(tmp_path / "b", {"name": "b", "model": "tiny", "adapter_kind": "pfeiffer",
                                      "original_ln_before": True, "non_linearity": "relu",
                                      "adapter_scaling": 1.0},
                     {f"{m}.adapter.{part}": t for m, parts in BOTTLENECKS[0].adapters.items()
                      for part, t in parts.items()})]
    with pytest.raises(ValueError, match="its sources mix kinds of adapters"):
        fusion.apply(make_tiny_bert(), cfg, runs)


def test_sweep_fuses_bottleneck_adapters_and_predict_reproduces_it(tmp_path, tiny_encoder,
                                                                    domain_corpora):
    import predict

    path = sweep(tmp_path, tiny_encoder,
                 "  - {name: chem, method: adapter, dataset: chem}\n"
                 "  - {name: disease, method: adapter, dataset: disease}\n"
                 "  - {name: fused, method: fusion, fusion_mode: attention,"
                 " adapters: [chem, disease]}\n")
    assert compare.main([str(path)]) == 0
    folder = tmp_path / "out" / "fused" / "seed42"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["fused_linears"] == 2  # one Pfeiffer position per layer
    assert metrics["trainable_params"] == 32 * 5 + 5 + 2 * (3 * 32 * 32 + 2 * 32)
    blocks = [[line.split() for line in block.splitlines()]
              for block in (folder / "predictions.txt").read_text().strip().split("\n\n")]
    tagger = predict.load_run(folder)
    assert tagger.tag([[f[0] for f in b] for b in blocks]) == [[f[2] for f in b] for b in blocks]


SOURCE_CASES = [  # (experiments, the one error line)
    (["  - {name: chem, method: adapter, dataset: chem}",
      "  - {name: f, method: fusion, fusion_mode: merge, adapters: [chem]}"],
     "fusion_mode: merge adds the sources' ΔW, and a bottleneck adapter has none"),
    (["  - {name: chem, method: adapter, dataset: chem}",
      "  - {name: disease, method: lora, dataset: disease}",
      "  - {name: f, method: fusion, fusion_mode: attention, adapters: [chem, disease]}"],
     "its sources mix kinds of adapters (adapter and lora)"),
    (["  - {name: chem, method: lora, dora: true, dataset: chem}",
      "  - {name: f, method: fusion, adapters: [chem]}"],
     "source 'chem' is a DoRA adapter"),
    (["  - {name: chem, method: adapter, dataset: chem}",
      "  - {name: disease, method: adapter, adapter_kind: houlsby, dataset: disease}",
      "  - {name: f, method: fusion, fusion_mode: attention, adapters: [chem, disease]}"],
     "its sources adapt different linears"),
    (["  - {name: chem, method: bitfit, dataset: chem}",
      "  - {name: f, method: fusion, fusion_mode: attention, adapters: [chem]}"],
     "method 'bitfit' makes no adapter to fuse"),
]


@pytest.mark.parametrize("experiments, words", SOURCE_CASES)
def test_sources_a_fusion_cannot_take_fail_before_training(tmp_path, tiny_encoder,
                                                           domain_corpora, capsys,
                                                           experiments, words):
    path = sweep(tmp_path, tiny_encoder, "".join(line + "\n" for line in experiments))
    assert compare.main([str(path)]) == 2
    error = capsys.readouterr().err
    assert words in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
