"""train.py: optimiser groups, the schedule, batches, evaluation, the command line, and whole
runs on a tiny BERT. The config has tests/test_config.py; the tagger, tests/test_model.py."""

from __future__ import annotations

import itertools
import json
import math
import os

import pytest
import torch
from conftest import make_sentences, make_tiny_bert, write_corpus, write_iob
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

import config
import data
import inference
import lora
import methods
import model
import train
from corpora import iob
from runs import config_files
from runs.folders import run_dir

# ------------------------------------------------------------------ optimisation


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


def test_epoch_seeds_differ_across_seeds_and_epochs():
    seeds = [train.epoch_seed(seed, epoch) for seed in range(40, 45) for epoch in range(20)]
    assert len(set(seeds)) == len(seeds)  # seed 42 epoch 1 is not seed 43 epoch 0
    assert train.epoch_seed(42, 0) == train.epoch_seed(42, 0)


def test_no_weight_decay_on_biases_and_layer_norms(capsys):
    tagger = model.Tagger(make_tiny_bert(), num_tags=3, dropout=0.0)
    decay, no_decay = train.param_groups(tagger, config.Config(weight_decay=0.1, lr=1e-3),
                                         verbose=True)
    names = {id(p): n for n, p in tagger.named_parameters()}
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert all(names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)]
               for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == no_decay["lr"] == 1e-3
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(tagger.parameters()))
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2  # nanoGPT's habit: say what goes into each group
    for group, line in zip((decay, no_decay), printed):
        assert group["name"] in line and f"{len(group['params'])} tensors" in line


def test_param_groups_leave_frozen_weights_out():
    cfg = config_files.make_config({"method": "lora", "rank": 2, "targets": ["query"]})
    tagger = model.build_tagger(cfg, ["O", "B-X", "I-X"], make_tiny_bert())[0]
    groups = train.param_groups(tagger, cfg)
    assert [g["name"] for g in groups] == ["decayed (matrices)",
                                           "not decayed (biases, LayerNorm)"]
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped})  # no tensor in two groups
    assert {id(p) for p in grouped} == {id(p) for p in tagger.parameters() if p.requires_grad}
    assert groups[0]["lr"] == methods.METHODS["lora"].default_lr


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_mixed_precision_autocasts_only_when_asked(amp):
    x = torch.randn(4, 8)
    with inference.mixed_precision(torch.device("cpu"), amp):
        y = x @ x.T
    assert y.dtype == (amp or torch.float32)


def test_batcher_pads_to_the_multiple_and_marks_continuing_windows():
    windows = [data.Window(input_ids=[2, 7, 8, 3], word_starts=[1, 2], tag_ids=[0, 1],
                           sentence=0, first_word=0, continues=False),
               data.Window(input_ids=[2, 9, 3], word_starts=[1], tag_ids=[2], sentence=0,
                           first_word=2, continues=True)]
    batch = inference.Batcher(pad_id=0, max_length=16, multiple=8, device=torch.device("cpu"))(
        windows)
    assert batch["input_ids"].shape == (2, 8) and batch["word_mask"].shape == (2, 8)
    assert batch["attention_mask"].sum(1).tolist() == [4, 3]
    assert batch["continues"].tolist() == [False, True]
    assert batch["tags"][0, :2].tolist() == [0, 1] and batch["tags"][1, 0] == 2


# ------------------------------------------------------------------ whole runs


def tiny_config(tmp_path, encoder, corpus, **overrides) -> config.Config:
    values = {"model": str(encoder), "dataset": str(corpus), "gpu": -1, "epochs": 2, "lr": 3e-3,
              "batch_size": 8, "output_dir": str(tmp_path / "out"), "warmup_ratio": 0.0,
              "dropout": 0.0, "lr_scheduler_type": "constant", "log_every": 2}
    return config_files.make_config({**values, **overrides}, "test")


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
    assert run_dir(tiny_config(tmp_path / "a", tiny_encoder, tiny_corpus)) == \
        tmp_path / "a/out/run/seed42"
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
    gold = iob.read_iob(tiny_corpus / "test.tsv")
    assert len(blocks) == len(gold)
    assert [line.split()[:2] for line in blocks[0].splitlines()] == \
        [[t, g] for t, g in zip(gold[0].tokens, gold[0].tags)]
    weights = load_file(folder / "weights.safetensors")
    assert "head.weight" in weights and any(k.startswith("encoder.") for k in weights)
    for key in ("train_seconds", "tokens_per_second", "test_eval_seconds", "peak_memory_mb",
                "trainable_params", "total_params", "padding_fraction"):
        assert metrics[key] > 0 or key == "padding_fraction"
    assert metrics["trainable_params"] == metrics["total_params"]  # full fine-tuning
    assert metrics["peak_memory_measure"] == "cpu_peak_rss"
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))


def test_long_sentences_are_windowed_and_every_word_scored(tmp_path, tiny_encoder):
    long = make_sentences(12, seed=9, min_words=40, max_words=60)
    folder = tmp_path / "long"
    for split in ("train", "devel", "test"):
        write_iob(folder / f"{split}.tsv", long)
    cfg = tiny_config(tmp_path, tiny_encoder, folder, max_length=32, epochs=1)
    metrics = train.train(cfg)
    assert metrics["train_windows"] > len(long)
    blocks = (run_dir(cfg) / "predictions.txt").read_text().strip().split("\n\n")
    assert [len(b.splitlines()) for b in blocks] == [len(tokens) for tokens, _ in long]


def test_cli_runs_one_experiment(tmp_path, tiny_encoder, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    path = tmp_path / "x.yml"
    path.write_text(f"model: {tiny_encoder}\ndataset: {corpus}\ngpu: -1\n"
                    f"epochs: 1\noutput_dir: {tmp_path / 'out'}\nexperiments:\n"
                    "  - {name: a}\n  - {name: b}\n")
    capsys.readouterr()
    assert train.main([str(path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "choose one with --experiment" in error[0] and "a, b" in error[0]
    assert train.main([str(path), "--experiment", "c"]) == 2
    assert "no experiment named 'c'" in capsys.readouterr().err
    assert train.main([str(path), "--experiment", "b", "--lr=1e-3"]) == 0
    assert json.loads((tmp_path / "out/b/seed42/config.json").read_text())["lr"] == 1e-3
    assert '"f1"' in capsys.readouterr().out
    assert not (tmp_path / "out/a").exists()


@pytest.mark.parametrize("text, args, words", [
    ("epochs: 1\nrank: 0\n", [], ":2: key 'rank' must be >= 1, found 0"),
    ("epochs: 1\n", ["--rank=0"], "command line --rank: key 'rank' must be >= 1, found 0"),
    ("epocs: 1\n", [], ":1: unknown key 'epocs'; did you mean 'epochs'?"),
    ("epochs: 1\n", ["--epocs=1"], ("command line --epocs: unknown key 'epocs'; did you mean "
                                    "'epochs'?")),
    ("epochs: 1\n", ["--lr"], "expected --key=value"),
    ("epochs: [\n", [], ":2: not valid YAML"),
])
def test_cli_bad_config_is_status_2_and_one_line(tmp_path, capsys, text, args, words):
    path = tmp_path / "x.yml"
    path.write_text(text)
    assert train.main([str(path), *args]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert words in line and captured.out == ""


def test_every_file_a_run_writes_follows_the_umask(tmp_path, tiny_encoder, tiny_corpus):
    """A colleague on a shared output folder reads what a run writes: every file gets the mode
    an ordinary new file gets, whoever wrote it (safetensors alone would write 0600)."""
    umask = os.umask(0o002)
    try:
        cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, epochs=1, method="lora")
        train.train(cfg)
    finally:
        os.umask(umask)
    files = [p for p in run_dir(cfg).rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"weights.safetensors", "adapter_model.safetensors",
                                       "metrics.json", "predictions.txt"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == \
        {p.name: oct(0o664) for p in files}


def test_cli_help_prints_usage_and_every_key(capsys):
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python train.py")
    for key in [*config.Config.__dataclass_fields__, *config.SweepSettings.__dataclass_fields__]:
        assert f"  {key} (default " in out, key
    assert train.main([]) == 2  # no config: usage, and a failure status


# ------------------------------------------------------------------ LoRA runs


def test_lora_run_trains_adapters_and_head_only(tmp_path, tiny_encoder, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, method="lora", rank=4,
                      targets=["query", "value"])
    metrics = train.train(cfg)
    hidden, layers, tags = 32, 2, 5
    adapters = layers * 2 * 4 * (hidden + hidden)  # r * (d_in + d_out) per wrapped linear
    assert metrics["trainable_params"] == adapters + hidden * tags + tags
    saved = load_file(run_dir(cfg) / "weights.safetensors")
    assert sorted({k.rsplit(".", 1)[-1] for k in saved}) == ["bias", "lora_A", "lora_B", "weight"]
    assert sum(v.numel() for v in saved.values()) == metrics["trainable_params"]


def test_lora_checkpoint_reproduces_predictions_bit_for_bit(tmp_path, tiny_encoder, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, method="lora", rank=4, epochs=3)
    train.train(cfg)
    labels = json.loads((run_dir(cfg) / "labels.json").read_text())
    encoder, tokenizer = model.load_encoder(str(tiny_encoder))
    tagger = model.build_tagger(cfg, labels, encoder)[0]
    model.load_weights_file(tagger, run_dir(cfg) / "weights.safetensors")
    corpus = data.load_corpus(config.Config(dataset=str(tiny_corpus)))
    tokenized = data.tokenize_sentences(corpus.test, tokenizer, labels)
    windows = data.make_windows(tokenized, 64, tokenizer.cls_token_id, tokenizer.sep_token_id)
    batcher = inference.Batcher(tokenizer.pad_token_id, 64, 1, torch.device("cpu"))
    metrics, predicted = train.evaluate(tagger, corpus.test, tokenized, windows, labels, 16,
                                        batcher, None)
    lines = (run_dir(cfg) / "predictions.txt").read_text().strip().split("\n\n")
    assert [[line.split()[2] for line in block.splitlines()] for block in lines] == predicted
    assert metrics["f1"] == json.loads((run_dir(cfg) / "metrics.json").read_text()
                                       )["test"]["f1"]
    assert 0 <= metrics["f1"] <= 1 and metrics["seconds"] > 0


def test_lora_run_exports_an_adapter_peft_loads(tmp_path, tiny_encoder, tiny_corpus):
    from peft import PeftModel
    from transformers import AutoModel

    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, method="lora", rank=4, epochs=1)
    train.train(cfg)
    ours = model.build_tagger(cfg, ["O"] * 5, model.load_encoder(str(tiny_encoder))[0])[0]
    model.load_weights_file(ours, run_dir(cfg) / "weights.safetensors")
    theirs = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_encoder),
                                       run_dir(cfg) / "peft")
    input_ids = torch.randint(5, 40, (3, 12))
    with torch.no_grad():
        expected = ours.encoder(input_ids=input_ids).last_hidden_state
        found = theirs(input_ids=input_ids).last_hidden_state
    torch.testing.assert_close(found, expected)
    assert any(layer.lora_B.abs().sum() > 0 for layer in lora.lora_layers(ours).values())


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
    saved = load_file(run_dir(cfg) / "weights.safetensors")
    assert {"crf.start", "crf.end", "crf.transitions"} <= set(saved)
    tagger = model.build_tagger(cfg, ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"],
                                make_tiny_bert())[0]
    groups = train.param_groups(tagger, cfg)
    assert groups[-1]["lr"] == 0.05 and groups[-1]["params"] == list(tagger.crf.parameters())
    assert groups[-1]["name"] == "CRF scores" and groups[-1]["weight_decay"] == 0.0
    assert len({g["name"] for g in groups}) == len(groups) == 3
    assert sum(len(g["params"]) for g in groups) == sum(
        1 for p in tagger.parameters() if p.requires_grad)
    for block in (run_dir(cfg) / "predictions.txt").read_text().strip().split("\n\n"):
        previous = "O"
        for line in block.splitlines():
            tag = line.split()[2]
            assert not tag.startswith("I-") or previous[2:] == tag[2:], block
            previous = tag


# ------------------------------------------------------------------ the protocol


def test_best_epoch_is_chosen_on_devel_and_test_is_scored_once_with_it(tmp_path, tiny_encoder,
                                                                        monkeypatch):
    """Scripted scores: devel peaks at epoch 2 while test would pick epoch 1 and the last epoch
    is epoch 3. Choosing on test, or keeping the last epoch, fails here."""
    corpus = write_corpus(tmp_path / "corpus", sizes=(40, 12, 9))  # devel 12, test 9 sentences
    devel_scores, test_scores = iter([0.2, 0.9, 0.5]), iter([0.95, 0.1, 0.3])
    seen = {"devel": [], "test": []}  # head weights at each scoring
    real_evaluate = train.evaluate

    def scripted(model_, split, *args):
        metrics, predicted = real_evaluate(model_, split, *args)
        name = "devel" if len(split) == 12 else "test"
        seen[name].append(model_.head.weight.detach().clone())
        metrics["f1"] = next(devel_scores if name == "devel" else test_scores)
        return metrics, predicted

    monkeypatch.setattr(train, "evaluate", scripted)
    metrics = train.train(tiny_config(tmp_path, tiny_encoder, corpus, epochs=3))
    assert metrics["best_epoch"] == 2 and metrics["devel"]["f1"] == 0.9
    assert metrics["devel_f1_per_epoch"] == [0.2, 0.9, 0.5]
    assert len(seen["devel"]) == 3 and len(seen["test"]) == 1
    assert metrics["test"]["f1"] == 0.95  # the one test score, taken after training
    torch.testing.assert_close(seen["test"][0], seen["devel"][1])  # epoch 2's weights
    assert not torch.equal(seen["test"][0], seen["devel"][2])


def test_evaluation_is_deterministic_with_dropout(tmp_path, tiny_encoder, tiny_corpus):
    """Dropout everywhere in the encoder and before the head: evaluation must switch it off."""
    encoder, tokenizer = model.load_encoder(str(tiny_encoder))
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    tagger = model.Tagger(encoder, num_tags=5, dropout=0.5).train()
    labels = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
    corpus = data.load_corpus(config.Config(dataset=str(tiny_corpus)))
    windows = data.make_windows(data.tokenize_sentences(corpus.test, tokenizer, labels), 64,
                                tokenizer.cls_token_id, tokenizer.sep_token_id)
    batcher = inference.Batcher(tokenizer.pad_token_id, 64, 1, torch.device("cpu"))
    batch = batcher(windows[:4])
    noisy = [tagger(batch["input_ids"], batch["attention_mask"], batch["word_index"])
             for _ in range(2)]
    assert not torch.equal(*noisy)  # dropout is really on in train mode
    first = inference.predict_windows(tagger, windows, 8, batcher, None)
    tagger.train()  # as the loop leaves it after an epoch
    assert inference.predict_windows(tagger, windows, 8, batcher, None) == first


@pytest.mark.parametrize("max_grad_norm", [1e-3, 0.0])
def test_gradients_are_clipped_before_every_step(tmp_path, tiny_encoder, tiny_corpus,
                                                 max_grad_norm):
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"]
                 if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads])).item())

    handle = register_optimizer_step_pre_hook(record)
    try:
        train.train(tiny_config(tmp_path, tiny_encoder, tiny_corpus, epochs=1,
                                max_grad_norm=max_grad_norm))
    finally:
        handle.remove()
    assert len(norms) == 5  # 40 sentences, batches of 8
    if max_grad_norm:
        assert max(norms) <= max_grad_norm * (1 + 1e-4)
    else:  # unclipped gradients are far larger: the check above can fail
        assert min(norms) > 1e-2


def test_schedule_spans_every_epoch_of_augmented_windows(tmp_path, tiny_encoder):
    """Swaps change how many windows an epoch has; the linear schedule must still end at zero
    on the very last step, never earlier."""
    folder = tmp_path / "long"
    for split, n in (("train", 30), ("devel", 6), ("test", 6)):
        write_iob(folder / f"{split}.tsv", make_sentences(n, seed=len(split), min_words=8,
                                                          max_words=14))
    cfg = tiny_config(tmp_path, tiny_encoder, folder, epochs=4, max_length=12, log_every=1,
                      lr_scheduler_type="linear", aug={"p": 1.0, "copies": 1})
    metrics = train.train(cfg)
    assert len(set(metrics["steps_per_epoch"])) > 1  # the case this test is about
    assert metrics["steps"] == sum(metrics["steps_per_epoch"])
    log = [json.loads(line) for line in (run_dir(cfg) / "log.jsonl").read_text().splitlines()]
    rates = [entry["lr"] for entry in log if "lr" in entry]
    assert len(rates) == metrics["steps"]
    assert rates[-1] == 0.0 and min(rates[:-1]) > 0.0


def test_an_unknown_schedule_is_an_error_not_a_constant():
    with pytest.raises(ValueError, match="lr_scheduler_type must be one of .*'step'"):
        train.lr_factor(5, 100, 10, "step")


def test_a_failed_run_closes_its_tracker_and_its_log(tmp_path, tiny_encoder, tiny_corpus,
                                                     monkeypatch):
    closed, logs = [], []

    class Recorder:
        def log(self, values, step):
            pass

        def summary(self, values):
            pass

        def close(self):
            closed.append(True)

    monkeypatch.setattr(train.tracking, "open_tracker", lambda *args: Recorder())
    real_run = train.run

    def failing_run(cfg, out, tracker, log, token_cache):
        logs.append(log)
        real_run(cfg, out, tracker, log, token_cache)
        raise RuntimeError("after training")

    monkeypatch.setattr(train, "run", failing_run)
    with pytest.raises(RuntimeError, match="after training"):
        train.train(tiny_config(tmp_path, tiny_encoder, tiny_corpus, epochs=1))
    assert closed == [True] and logs[0].closed
    with pytest.raises(ValueError, match="match no nn.Linear"):  # a failure inside the run
        train.train(tiny_config(tmp_path, tiny_encoder, tiny_corpus, method="lora",
                                targets=["nope"]))
    assert closed == [True, True]


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_loss_that_stops_being_finite_stops_the_run_naming_step_epoch_and_last_loss(
        tmp_path, tiny_encoder, tiny_corpus, monkeypatch, bad):
    calls, finite = [], []
    real_loss = model.Tagger.loss

    def injected(self, *args):
        loss = real_loss(self, *args)
        calls.append(None)
        if len(calls) == 7:  # the 2nd step of epoch 2 (5 steps an epoch)
            return loss * bad
        finite.append(loss.item())
        return loss

    monkeypatch.setattr(model.Tagger, "loss", injected)
    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, epochs=3, log_every=1000)
    with pytest.raises(train.DivergedError) as error:
        train.train(cfg)
    assert str(error.value).startswith(
        f"training loss is not finite at step 7 (epoch 2); last finite loss "
        f"{finite[5]:.4g} at step 6")
    assert len(calls) == 10  # found at the epoch's end: no third epoch trained on it
    assert not (run_dir(cfg) / "metrics.json").exists()


def test_asking_for_cuda_without_it_is_said_once(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    configs = [config.Config(gpu=[0]), config.Config(gpu=[0]), config.Config(gpu=[-1])]
    notice = train.device_notice(configs)
    assert notice == ("notice: gpu: 0 asks for CUDA, which this machine lacks: running on the "
                      "CPU (gpu: -1 says so on purpose)")
    assert train.device_notice([config.Config(gpu=[-1])]) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.device_notice(configs) is None


def test_a_log_gets_a_progress_line_every_so_often_whatever_log_every_is(
        tmp_path, tiny_encoder, tiny_corpus, monkeypatch, capsys):
    monkeypatch.setattr(train.Progress, "EVERY_SECONDS", 0.0)  # "every 30 s", as if slow
    cfg = tiny_config(tmp_path, tiny_encoder, tiny_corpus, epochs=1, log_every=1000)
    metrics = train.train(cfg)
    lines = [line for line in capsys.readouterr().out.splitlines() if " step " in line]
    assert len(lines) == metrics["steps"]  # a line after every step, each with its loss
    assert all("loss" in line and "tokens/s" in line for line in lines)
    logged = [json.loads(line) for line in (run_dir(cfg) / "log.jsonl").read_text().splitlines()]
    assert not [entry for entry in logged if "loss" in entry]  # the log file keeps log_every
