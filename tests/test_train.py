"""train.py: config checking, the tagger, the schedule, and whole runs on a tiny BERT."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_sentences, make_tiny_bert, write_corpus, write_iob
from safetensors.torch import load_file

import compare
import config
import train

# ------------------------------------------------------------------ configuration


def write_yaml(tmp_path, text: str):
    path = tmp_path / "x.yml"
    path.write_text(text)
    return path


def test_experiments_inherit_top_level_defaults(tmp_path):
    path = write_yaml(tmp_path, "lr: 5e-5\nepochs: 2\nexperiments:\n"
                                "  - {name: a}\n  - {name: b, lr: 1e-3, fp16: true}\n")
    a, b = config.experiment_configs(path)
    assert (a.name, a.lr, a.epochs, a.precision) == ("a", 5e-5, 2, "fp32")
    assert (b.name, b.lr, b.epochs, b.precision) == ("b", 1e-3, 2, "fp16")


@pytest.mark.parametrize("text, words", [
    ("experiments:\n  - {name: a, learning_rate: 1}\n", "unknown key 'learning_rate'"),
    ("epochs: three\n", "key 'epochs' expects int"),
    ("lr: fast\n", "key 'lr' expects float"),
    ("fp16: 1\n", "key 'fp16' expects bool"),
    ("precision: fp8\n", "key 'precision' must be one of"),
    ("lr_scheduler_type: step\n", "key 'lr_scheduler_type' must be one of"),
    ("method: magic\n", "key 'method' must be one of"),
    ("batch_size: 0\n", "key 'batch_size' must be >= 1"),
    ("experiments:\n  - {name: a}\n  - {name: a}\n", "repeated: ['a']"),
    ("experiments: {name: a}\n", "'experiments' must be a list"),
    ("- 1\n- 2\n", "mapping of keys"),
    ("a: [\n", "not valid YAML"),
    ("precision: bf16\nfp16: true\n", "contradicts"),
])
def test_config_errors_name_the_file_and_key(tmp_path, text, words):
    path = write_yaml(tmp_path, text)
    with pytest.raises(config.ConfigError) as error:
        config.experiment_configs(path)
    assert str(path) in str(error.value) and words in str(error.value)


def test_command_line_overrides_are_typed(tmp_path):
    path = write_yaml(tmp_path, "experiments:\n  - {name: a, lr: 1e-4}\n")
    [cfg] = config.experiment_configs(path, config.parse_overrides(["--lr=3e-4", "--epochs=7",
                                                                  "--gpu=-1"]))
    assert (cfg.lr, cfg.epochs, cfg.gpu) == (3e-4, 7, -1)
    with pytest.raises(config.ConfigError, match="expected --key=value"):
        config.parse_overrides(["--lr"])
    with pytest.raises(config.ConfigError, match="unknown key 'nope'"):
        config.experiment_configs(path, {"nope": 1})


def test_every_config_key_has_a_why_comment():
    source = Path(config.__file__).read_text().split("class Config:")[1].split("class ConfigError")[0]
    lines = source.splitlines()
    fields = [(line, previous) for line, previous in zip(lines[1:], lines)
              if line.startswith("    ") and ":" in line and "=" in line]
    assert len(fields) == len(config.Config.__dataclass_fields__)
    undocumented = [f for f, previous in fields if "#" not in f
                    and not previous.strip().startswith("#")
                    and f.split(":")[0].strip() not in ("batch_size", "epochs", "output_dir")]
    assert not undocumented


# ------------------------------------------------------------------ schedule and tagger


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_lr_factor_warms_up_then_follows_the_schedule(kind):
    total, warmup = 100, 10
    factors = [train.lr_factor(s, total, warmup, kind) for s in range(total)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    after = factors[warmup:]
    if kind == "constant":
        assert after == pytest.approx([1.0] * len(after))
    else:
        assert all(a >= b for a, b in itertools.pairwise(after))  # never increases
        middle = warmup + (total - warmup) // 2
        expected = 0.5 if kind == "linear" else 0.5 * (1 + math.cos(math.pi * 0.5))
        assert factors[middle] == pytest.approx(expected)


def test_tagger_emissions_come_from_each_words_first_subword():
    torch.manual_seed(0)
    tagger = train.Tagger(make_tiny_bert(), num_tags=5, dropout=0.0).eval()
    input_ids = torch.randint(5, 40, (2, 16))
    attention_mask = torch.ones(2, 16, dtype=torch.long)
    attention_mask[1, 9:] = 0
    word_index = torch.tensor([[1, 3, 4, 8], [1, 2, 6, 0]])
    emissions = tagger(input_ids, attention_mask, word_index)  # (B, W, K)
    hidden = tagger.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    for b in range(2):
        for w in range(4):
            torch.testing.assert_close(emissions[b, w], tagger.head(hidden[b, word_index[b, w]]))
    tags = torch.tensor([[0, 1, 2, 0], [3, 4, 0, -100]])
    mask = tags != -100
    manual = torch.nn.functional.cross_entropy(emissions[mask], tags[mask])
    torch.testing.assert_close(tagger.loss(emissions, tags, mask), manual)


def test_no_weight_decay_on_biases_and_layer_norms():
    tagger = train.Tagger(make_tiny_bert(), num_tags=3, dropout=0.0)
    decay, no_decay = train.param_groups(tagger, config.Config(weight_decay=0.1))
    names = {id(p): n for n, p in tagger.named_parameters()}
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert all(names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)]
               for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_model_by_package_and_missing_package():
    assert train.resolve_model("some/hub-id") == "some/hub-id"
    with pytest.raises(config.ConfigError, match="not installed"):
        train.resolve_model("package:no_such_package_here")


# ------------------------------------------------------------------ whole runs


def tiny_config(tmp_path, encoder, corpus, **overrides) -> config.Config:
    values = {"model": str(encoder), "dataset": str(corpus), "gpu": -1, "epochs": 2, "lr": 3e-3,
              "batch_size": 8, "output_dir": str(tmp_path / "out"), "warmup_ratio": 0.0,
              "dropout": 0.0, "lr_scheduler_type": "constant", "log_every": 2}
    return config.make_config({**values, **overrides}, "test")


def test_tiny_model_overfits_a_tiny_corpus(tmp_path, tiny_encoder):
    sentences = make_sentences(24, seed=5)
    for split in ("train", "devel", "test"):
        write_iob(tmp_path / "same" / f"{split}.tsv", sentences)
    metrics = train.train(tiny_config(tmp_path, tiny_encoder, tmp_path / "same", epochs=30))
    assert metrics["test"]["f1"] == 1.0
    assert set(metrics["test"]["per_type"]) == {"Chemical", "Disease"}


def test_same_seed_same_metrics_and_files(tmp_path, tiny_encoder, tiny_corpus):
    first = train.train(tiny_config(tmp_path / "a", tiny_encoder, tiny_corpus))
    second = train.train(tiny_config(tmp_path / "b", tiny_encoder, tiny_corpus))
    train.train(tiny_config(tmp_path / "c", tiny_encoder, tiny_corpus, seed=7))
    assert first["test"] == {**second["test"], "seconds": first["test"]["seconds"]}
    log_a = (tmp_path / "a/out/run/seed42/log.jsonl").read_text()
    assert log_a == (tmp_path / "b/out/run/seed42/log.jsonl").read_text()
    log_c = (tmp_path / "c/out/run/seed7/log.jsonl").read_text()
    assert log_a != log_c


def test_run_writes_config_metrics_log_predictions_and_weights(tmp_path, tiny_encoder,
                                                               tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, name="full-ft")
    metrics = train.train(cfg)
    folder = tmp_path / "out" / "full-ft" / "seed42"
    assert json.loads((folder / "config.json").read_text())["name"] == "full-ft"
    assert json.loads((folder / "labels.json").read_text())[0] == "O"
    assert json.loads((folder / "metrics.json").read_text())["test"]["f1"] == metrics["test"]["f1"]
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log if "devel_f1" in e] == [0, 1]
    assert any("loss" in e for e in log)
    blocks = (folder / "predictions.txt").read_text().strip().split("\n\n")
    gold = train.data.read_iob(tiny_corpus / "test.tsv")
    assert len(blocks) == len(gold)
    assert [line.split()[:2] for line in blocks[0].splitlines()] == \
        [[t, g] for t, g in zip(gold[0].tokens, gold[0].tags)]
    weights = load_file(folder / "weights.safetensors")
    assert "head.weight" in weights and any(k.startswith("encoder.") for k in weights)
    for key in ("train_seconds", "tokens_per_second", "test_eval_seconds", "peak_memory_mb",
                "trainable_params", "total_params", "padding_fraction"):
        assert metrics[key] > 0 or key == "padding_fraction"
    assert metrics["trainable_params"] == metrics["total_params"]  # full fine-tuning
    assert metrics["peak_memory_kind"] == "cpu_peak_rss"
    assert not list(folder.glob("*.tmp"))


def test_saved_weights_reload_and_bad_checkpoints_are_named(tmp_path, tiny_encoder,
                                                            tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus)
    train.train(cfg)
    path = train.run_dir(cfg) / "weights.safetensors"
    encoder, _ = train.load_encoder(str(tiny_encoder))
    fresh = train.build_tagger(cfg, ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"],
                               encoder)[0]
    train.load_trained_state(fresh, path)
    saved = load_file(path)
    assert torch.equal(fresh.head.weight, saved["head.weight"])
    other_encoder = train.load_encoder(str(tiny_encoder))[0]
    wrong = train.build_tagger(cfg, ["O", "B-X", "I-X"], other_encoder)[0]
    with pytest.raises(ValueError, match="head.weight: expected \\(3, 32\\), found \\(5, 32\\)"):
        train.load_trained_state(wrong, path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.safetensors: not a readable safetensors"):
        train.load_trained_state(fresh, garbage)


def test_long_sentences_are_windowed_and_every_word_scored(tmp_path, tiny_encoder):
    long = make_sentences(12, seed=9, min_words=40, max_words=60)
    folder = tmp_path / "long"
    for split in ("train", "devel", "test"):
        write_iob(folder / f"{split}.tsv", long)
    cfg = tiny_config(tmp_path, tiny_encoder, folder, max_length=32, epochs=1)
    metrics = train.train(cfg)
    assert metrics["train_windows"] > len(long)
    blocks = (train.run_dir(cfg) / "predictions.txt").read_text().strip().split("\n\n")
    assert [len(b.splitlines()) for b in blocks] == [len(tokens) for tokens, _ in long]


def test_cli_runs_one_experiment(tmp_path, tiny_encoder, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    path = write_yaml(tmp_path, f"model: {tiny_encoder}\ndataset: {corpus}\ngpu: -1\n"
                                f"epochs: 1\noutput_dir: {tmp_path / 'out'}\nexperiments:\n"
                                "  - {name: a}\n  - {name: b}\n")
    with pytest.raises(SystemExit, match="choose one with --experiment"):
        train.main([str(path)])
    train.main([str(path), "--experiment", "b", "--lr=1e-3"])
    assert json.loads((tmp_path / "out/b/seed42/config.json").read_text())["lr"] == 1e-3
    assert '"f1"' in capsys.readouterr().out


# ------------------------------------------------------------------ LoRA runs


def test_lora_run_trains_adapters_and_head_only(tmp_path, tiny_encoder, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, method="lora", rank=4,
                      targets=["query", "value"])
    metrics = train.train(cfg)
    hidden, layers, tags = 32, 2, 5
    adapters = layers * 2 * 4 * (hidden + hidden)  # r * (d_in + d_out) per wrapped linear
    assert metrics["trainable_params"] == adapters + hidden * tags + tags
    saved = load_file(train.run_dir(cfg) / "weights.safetensors")
    assert sorted({k.rsplit(".", 1)[-1] for k in saved}) == ["bias", "lora_A", "lora_B", "weight"]
    assert sum(v.numel() for v in saved.values()) == metrics["trainable_params"]


def test_lora_checkpoint_reproduces_predictions_bit_for_bit(tmp_path, tiny_encoder, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, method="lora", rank=4, epochs=3)
    train.train(cfg)
    labels = json.loads((train.run_dir(cfg) / "labels.json").read_text())
    encoder, tokenizer = train.load_encoder(str(tiny_encoder))
    model = train.build_tagger(cfg, labels, encoder)[0]
    train.load_trained_state(model, train.run_dir(cfg) / "weights.safetensors")
    corpus = train.data.load_corpus(str(tiny_corpus))
    windows = train.data.make_windows(
        train.data.tokenize_sentences(corpus.test, tokenizer, labels), 64,
        tokenizer.cls_token_id, tokenizer.sep_token_id)
    batcher = train.Batcher(tokenizer.pad_token_id, 64, 1, torch.device("cpu"), None)
    metrics, predicted = train.evaluate(model, corpus.test, windows, labels, 16, batcher)
    lines = (train.run_dir(cfg) / "predictions.txt").read_text().strip().split("\n\n")
    assert [[line.split()[2] for line in block.splitlines()] for block in lines] == predicted
    assert metrics["f1"] == json.loads((train.run_dir(cfg) / "metrics.json").read_text()
                                       )["test"]["f1"]


def test_lora_run_exports_an_adapter_peft_loads(tmp_path, tiny_encoder, tiny_corpus):
    from peft import PeftModel
    from transformers import AutoModel

    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, method="lora", rank=4, epochs=1)
    train.train(cfg)
    ours = train.build_tagger(cfg, ["O"] * 5, train.load_encoder(str(tiny_encoder))[0])[0]
    train.load_trained_state(ours, train.run_dir(cfg) / "weights.safetensors")
    theirs = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_encoder),
                                       train.run_dir(cfg) / "peft")
    input_ids = torch.randint(5, 40, (3, 12))
    with torch.no_grad():
        expected = ours.encoder(input_ids=input_ids).last_hidden_state
        found = theirs(input_ids=input_ids).last_hidden_state
    torch.testing.assert_close(found, expected)
    assert any(layer.lora_B.abs().sum() > 0 for layer in train.lora.lora_layers(ours).values())


def test_unknown_lora_target_lists_the_linears(tmp_path, tiny_encoder, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, method="lora", targets=["qkv"])
    with pytest.raises(ValueError, match="qkv match no nn.Linear.*query, key, value"):
        train.train(cfg)


# ------------------------------------------------------------------ CRF head


def test_crf_run_trains_its_scores_at_crf_lr_and_decodes_valid_bio(tmp_path, tiny_encoder,
                                                                    tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, method="lora", rank=2, crf=True,
                      crf_lr=0.05, epochs=2)
    metrics = train.train(cfg)
    K = 5
    plain = train.train(tiny_config(tmp_path / "plain", tiny_encoder, tiny_corpus,
                                    method="lora", rank=2, epochs=1))
    assert metrics["trainable_params"] == plain["trainable_params"] + K * K + 2 * K
    saved = load_file(train.run_dir(cfg) / "weights.safetensors")
    assert {"crf.start", "crf.end", "crf.transitions"} <= set(saved)
    tagger = train.build_tagger(cfg, ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"],
                                make_tiny_bert())[0]
    groups = train.param_groups(tagger, cfg)
    assert groups[-1]["lr"] == 0.05 and groups[-1]["params"] == list(tagger.crf.parameters())
    assert sum(len(g["params"]) for g in groups) == sum(
        1 for p in tagger.parameters() if p.requires_grad)
    for block in (train.run_dir(cfg) / "predictions.txt").read_text().strip().split("\n\n"):
        previous = "O"
        for line in block.splitlines():
            tag = line.split()[2]
            assert not tag.startswith("I-") or previous[2:] == tag[2:], block
            previous = tag


def test_readme_documents_every_config_key():
    readme = (Path(train.__file__).parent / "README.md").read_text()
    keys = list(config.Config.__dataclass_fields__) + [
        f"aug.{k}" for k in config.AugConfig.__dataclass_fields__]
    missing = [k for k in keys if f"| `{k}` |" not in readme]
    assert not missing


@pytest.mark.parametrize("name", ["demo_cpu", "bc5cdr", "ncbi_disease", "bc5cdr_minilm_cpu",
                                  "bc5cdr_aug_cpu"])
def test_shipped_configs_are_valid(name):
    configs = config.experiment_configs(Path(train.__file__).parent / "configs" / f"{name}.yml")
    assert configs and all(c.method in config.METHODS for c in configs)
    ordered = compare.order_sources_first(configs)  # fusion sources exist and fit
    assert sorted(c.name for c in ordered) == sorted(c.name for c in configs)
    if name == "bc5cdr":
        by_name = {c.name: c for c in configs}
        assert {"full", "lora-r8", "lora-r16", "lora-r32", "lora-r64", "lora-r16-crf",
                "lora-aug", "lora-r32-cosine"} <= set(by_name)
        seed_block = by_name["lora-r32-cosine"]
        assert (seed_block.rank, seed_block.lr, seed_block.lr_scheduler_type,
                seed_block.warmup_steps) == (32, 5e-5, "cosine", 300)
        assert by_name["full"].precision == "fp16"
