"""config.py: YAML files and command lines into checked Configs; grids; --help; sweep keys."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import config
import methods
from comparison import preflight
from runs import config_files

ROOT = Path(config.__file__).parent


def write_yaml(tmp_path, text: str, name: str = "x.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path, overrides=None) -> list[str]:
    """The lines of the ConfigError that `experiment_configs` raises for `path`."""
    with pytest.raises(config.ConfigError) as error:
        config_files.experiment_configs(path, overrides)
    return str(error.value).splitlines()


# ------------------------------------------------------------------ files and experiments


def test_experiments_inherit_top_level_defaults(tmp_path):
    path = write_yaml(tmp_path, "lr: 5e-5\nepochs: 2\nexperiments:\n"
                                "  - {name: a}\n  - {name: b, lr: 1e-3, fp16: true}\n")
    a, b = config_files.experiment_configs(path)
    assert (a.name, a.lr, a.epochs, a.precision) == ("a", 5e-5, 2, "fp32")
    assert (b.name, b.lr, b.epochs, b.precision) == ("b", 1e-3, 2, "fp16")


def test_a_file_without_experiments_is_one_experiment(tmp_path):
    [cfg] = config_files.experiment_configs(write_yaml(tmp_path, "epochs: 2\nrank: 4\n"))
    assert (cfg.name, cfg.epochs, cfg.rank) == ("run", 2, 4)


@pytest.mark.parametrize("text, line, words", [
    ("experiments:\n  - {name: a, learning_rate: 1}\n", 2, "unknown key 'learning_rate'"),
    ("epochs: three\n", 1, "key 'epochs' expects int"),
    ("seed: 1\nlr: fast\n", 2, "key 'lr' expects float"),
    ("fp16: 1\n", 1, "key 'fp16' expects bool"),
    ("precision: fp8\n", 1, "key 'precision' must be one of"),
    ("lr_scheduler_type: step\n", 1, "key 'lr_scheduler_type' must be one of"),
    ("method: magic\n", 1, "key 'method' must be one of"),
    ("tracker: mlflow\n", 1, "key 'tracker' must be one of"),
    ("fusion_mode: concat\n", 1, "key 'fusion_mode' must be one of"),
    ("batch_size: 0\n", 1, "key 'batch_size' must be >= 1"),
    ("experiments:\n  - {name: a}\n  - {name: b, method: lora, rank: 0}\n", 3,
     "key 'rank' must be >= 1"),
    ("dropout: 1.0\n", 1, "key 'dropout' must be in [0, 1)"),
    ("lora_dropout: -0.1\n", 1, "key 'lora_dropout' must be in [0, 1)"),
    ("warmup_ratio: 1\n", 1, "key 'warmup_ratio' must be in [0, 1)"),
    ("max_length: 4\n", 1, "key 'max_length' must be >= 8"),
    ("lr: -1e-3\n", 1, "key 'lr' must be >= 0"),
    ("targets: []\n", 1, "key 'targets' must be a non-empty list"),
    ("experiments:\n  - {name: a, method: fusion, adapters: [x, y],\n     fusion_weights: [1.0]}\n",
     3, "key 'fusion_weights' must be one weight per adapter (2)"),
    ("precision: bf16\nfp16: true\n", 2, "contradicts"),
    ("experiments:\n  - {name: a, method: adapter,\n     original_ln_before: true,\n"
     + "     adapter_kind: parallel}\n", 3,
     "key 'original_ln_before' must be false or null with adapter_kind: parallel"),
    ("method: adapter\nnon_linearity: elu\n", 2, "key 'non_linearity' must be one of"),
    ("method: fusion\nadapters: [x]\nfusion_dim: -1\n", 3, "key 'fusion_dim' must be >= 0"),
    ("aug: {p: 2}\n", 1, "aug needs 0 <= p <= 1"),
    ("aug: {q: 2}\n", 1, "unknown key 'aug.q'"),
])
def test_config_errors_name_the_file_line_and_key(tmp_path, text, line, words):
    path = write_yaml(tmp_path, text)
    [message] = problems(path)
    assert message.startswith(f"{path}:{line}: ") and words in message


@pytest.mark.parametrize("text, words", [
    ("experiments:\n  - {name: a}\n  - {name: a}\n", "repeated: ['a']"),
    ("experiments: {name: a}\n", "'experiments' must be a list"),
    ("experiments: [1, 2]\n", "'experiments' must be a list"),
    ("method: fusion\n", "key 'adapters' must be"),  # a key the file does not hold: no line
    ("- 1\n- 2\n", "mapping of keys"),
])
def test_file_level_errors_name_the_file(tmp_path, text, words):
    path = write_yaml(tmp_path, text)
    [message] = problems(path)
    assert message.startswith(str(path)) and words in message


def test_every_problem_of_every_experiment_is_reported_at_once(tmp_path):
    path = write_yaml(tmp_path, "epochs: 2\n"
                                "experiments:\n"
                                "  - name: a\n"
                                "    rank: -1\n"
                                "  - name: b\n"
                                "    method: lora\n"
                                "    dropout: 2\n"
                                "    max_length: 4\n"
                                "  - {name: c, batch_size: many}\n")
    lines = problems(path)
    assert len(lines) == 4, lines
    rank, dropout, max_length, batch = lines
    assert rank.startswith(f"{path}:4: ") and "experiments[0] (a)" in rank and "'rank'" in rank
    assert dropout.startswith(f"{path}:7: ") and "experiments[1] (b)" in dropout
    assert "'dropout'" in dropout and "[0, 1)" in dropout
    assert max_length.startswith(f"{path}:8: ") and "'max_length' must be >= 8" in max_length
    assert batch.startswith(f"{path}:9: ") and "experiments[2] (c)" in batch
    assert "'batch_size' expects int" in batch


def test_the_smallest_example_two_problems_two_lines(tmp_path):
    path = write_yaml(tmp_path, "experiments:\n  - {name: a, rank: -1}\n  - name: b\n"
                                "    dropout: 2\n")
    assert [line.split(" experiments")[0] for line in problems(path)] == \
        [f"{path}:2:", f"{path}:4:"]


def test_a_shared_top_level_problem_is_said_once_at_its_line(tmp_path):
    path = write_yaml(tmp_path, "seed: 1\nepochs: 0\nexperiments:\n  - {name: a}\n"
                                "  - {name: b}\n  - {name: c, epochs: 2}\n")
    [message] = problems(path)  # a and b inherit the bad value: one line, the top level's
    assert message == f"{path}:2: key 'epochs' must be >= 1, found 0"


@pytest.mark.parametrize("text, line", [("name: a\nrank: [\n", 3),
                                        ("name: a\nrank: 1\n  x: 2\n", 3),
                                        ("name: a\nlr: 1\nlr: {\n", 4)])
def test_a_yaml_syntax_error_names_file_and_line(tmp_path, text, line):
    path = write_yaml(tmp_path, text)
    [message] = problems(path)
    assert message.startswith(f"{path}:{line}: not valid YAML")


def test_an_unreadable_file_is_named(tmp_path):
    missing = tmp_path / "missing.yml"
    [message] = problems(missing)
    assert message.startswith(str(missing)) and "cannot read" in message
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"lr: \xff\xfe\n")
    [message] = problems(binary)
    assert message.startswith(str(binary)) and "UTF-8" in message


def test_command_line_overrides_are_typed_and_named_in_errors(tmp_path):
    path = write_yaml(tmp_path, "experiments:\n  - {name: a, lr: 1e-4}\n")
    overrides = config_files.parse_overrides(["--lr=3e-4", "--epochs=7", "--gpu=-1",
                                        "--targets=[query,value]", "--lora-dropout=0.1"])
    [cfg] = config_files.experiment_configs(path, overrides)
    assert (cfg.lr, cfg.epochs, cfg.gpu, cfg.targets, cfg.lora_dropout) == \
        (3e-4, 7, [-1], ["query", "value"], 0.1)
    with pytest.raises(config.ConfigError, match="expected --key=value"):
        config_files.parse_overrides(["--lr"])
    [message] = problems(path, {"nope": 1})
    assert message.startswith("command line --nope: ") and "unknown key 'nope'" in message
    [message] = problems(path, {"rank": 0})
    assert message.startswith("command line --rank: ") and "'rank' must be >= 1" in message


# ------------------------------------------------------------------ grids


def test_a_grid_expands_into_named_typed_experiments(tmp_path):
    path = write_yaml(tmp_path, "experiments:\n  - {name: base}\n"
                                "  - {name: lora, method: lora, grid: {lr: [1e-3, 5e-3]}}\n")
    base, low, high = config_files.experiment_configs(path)
    assert [c.name for c in (base, low, high)] == ["base", "lora[lr=0.001]", "lora[lr=0.005]"]
    assert (low.lr, high.lr) == (1e-3, 5e-3)
    assert isinstance(low.lr, float) and low.method == high.method == "lora"
    assert base.grid == {}


def test_a_grid_over_two_keys_is_their_product(tmp_path):
    path = write_yaml(tmp_path, "experiments:\n  - name: lora\n    method: lora\n"
                                "    grid: {lr: [1e-3, 5e-3], rank: [4, 8, 16]}\n")
    configs = config_files.experiment_configs(path)
    assert [(c.lr, c.rank) for c in configs] == [(lr, r) for lr in (1e-3, 5e-3)
                                                  for r in (4, 8, 16)]
    assert configs[0].name == "lora[lr=0.001,rank=4]"
    assert len({c.name for c in configs}) == 6


@pytest.mark.parametrize("grid, words", [
    ("{lrr: [1e-3]}", "unknown key 'lrr'"),
    ("{rank: [four]}", "'grid.rank' expects int"),
    ("{lr: []}", "grid"),
    ("[1, 2]", "grid"),
    ("{name: [a, b]}", "'name'"),
])
def test_a_bad_grid_is_an_error_naming_the_key(tmp_path, grid, words):
    path = write_yaml(tmp_path, f"experiments:\n  - {{name: a}}\n  - {{name: l, grid: {grid}}}\n")
    [message] = problems(path)
    assert message.startswith(f"{path}:3: ") and "experiments[1]" in message
    assert words in message


def test_a_grid_value_out_of_range_is_reported(tmp_path):
    path = write_yaml(tmp_path, "experiments:\n  - {name: l, method: lora, grid: {rank: [4, 0]}}\n")
    [message] = problems(path)
    assert message.startswith(f"{path}:2: ")  # the grid's line: rank is written nowhere else
    assert "l[rank=0]" in message and "'rank' must be >= 1" in message


def test_grid_names_must_not_collide_with_other_experiments(tmp_path):
    path = write_yaml(tmp_path, "experiments:\n  - {name: 'l[rank=4]'}\n"
                                "  - {name: l, method: lora, grid: {rank: [4, 8]}}\n")
    [message] = problems(path)
    assert "repeated: ['l[rank=4]']" in message


# ------------------------------------------------------------------ defaults and old names


@pytest.mark.parametrize("method", methods.METHODS)
def test_lr_defaults_per_method_and_an_explicit_lr_wins(tmp_path, method):
    adapters = ", adapters: [x]" if method == "fusion" else ""
    path = write_yaml(tmp_path, f"experiments:\n  - {{name: a, method: {method}{adapters}}}\n"
                                f"  - {{name: b, method: {method}{adapters}, lr: 3e-4}}\n")
    default, explicit = config_files.experiment_configs(path)
    assert default.lr == methods.METHODS[method].default_lr
    assert explicit.lr == 3e-4
    # the reason it exists: LoRA wants a higher rate than full fine-tuning
    assert methods.METHODS["lora"].default_lr > methods.METHODS["full"].default_lr
    assert config_files.make_config({"method": "lora"}).lr == methods.METHODS["lora"].default_lr


def test_the_old_fusion_key_is_read_as_fusion_mode(tmp_path, capsys):
    path = write_yaml(tmp_path, "experiments:\n  - {name: a, method: fusion, adapters: [x],\n"
                                "     fusion: attention}\n")
    [cfg] = config_files.experiment_configs(path)
    assert cfg.fusion_mode == "attention"
    assert not hasattr(cfg, "fusion")
    assert "'fusion' is now 'fusion_mode'" in capsys.readouterr().out


def test_the_old_and_new_fusion_keys_together_are_one_error(tmp_path):
    path = write_yaml(tmp_path, "experiments:\n  - {name: a, method: fusion, adapters: [x],"
                                " fusion: attention, fusion_mode: merge}\n")
    lines = problems(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:2: ") and "'fusion'" in lines[0]
    assert "fusion_mode" in lines[0]


@pytest.mark.parametrize("value, expected", [("0", [0]), ("-1", [-1]), ("[0, 1]", [0, 1]),
                                             ("[3]", [3])])
def test_gpu_is_a_device_index_or_a_list_and_read_as_a_list(tmp_path, value, expected):
    [cfg] = config_files.experiment_configs(write_yaml(tmp_path, f"gpu: {value}\n"))
    assert cfg.gpu == expected


@pytest.mark.parametrize("value", ["-2", "[-2]", "[0, -2]", "[]", "cuda", "[0, one]"])
def test_a_bad_gpu_is_rejected(tmp_path, value):
    path = write_yaml(tmp_path, f"gpu: {value}\n")
    [message] = problems(path)
    assert message.startswith(f"{path}:1: ") and "'gpu" in message


@pytest.mark.parametrize("values, expected", [
    ({"epochs": "x", "nope": 1, "rank": 0}, ["'epochs' expects int", "unknown key 'nope'",
                                             "'rank' must be >= 1"]),
    ({"rank": 0, "dropout": 2.0, "gpu": -3}, ["'rank' must be >= 1", "'dropout' must be in",
                                              "'gpu' must be"]),
])
def test_make_config_reports_every_problem_in_one_error(values, expected):
    """Unknown keys, wrong types and ranges together (a key of the wrong type keeps its
    default, so its range is not judged)."""
    with pytest.raises(config.ConfigError) as error:
        config_files.make_config(values, "here")
    lines = str(error.value).splitlines()
    assert len(lines) == len(expected), lines
    assert all(line.startswith("here: ") for line in lines)
    assert all(any(words in line for line in lines) for words in expected)


@pytest.mark.parametrize("values, expected", [
    ({"dataset": "bc5cdr", "dataset_config": "bc2gm"},
     ["key 'dataset_config' is read only for a hub dataset (dataset: hf:...), found 'bc2gm'"]),
    ({"test_dataset_revision": "main", "tokens_column": "words", "type_map": {"A": "B"}},
     ["key 'test_dataset_revision' is read only for a hub test corpus",
      "key 'tokens_column' is read only for a hub dataset (dataset or test_dataset: hf:...)",
      "key 'type_map' is read only for a test corpus (test_dataset), found {'A': 'B'}"]),
    ({"type_map": ["A"]}, ["key 'type_map' expects dict"]),
    ({"type_map": {"A": 1}}, ["key 'type_map.A' expects str"]),
])
def test_corpus_keys_the_corpora_never_read_are_errors(values, expected):
    with pytest.raises(config.ConfigError) as error:
        config_files.make_config(values, "here")
    lines = str(error.value).splitlines()
    assert len(lines) == len(expected) and all(w in line for w, line in zip(expected, lines)), lines


def test_corpus_keys_read_with_a_hub_dataset_or_a_test_corpus_are_fine():
    cfg = config_files.make_config({"dataset": "bc5cdr_disease", "test_dataset": "hf:bigbio/blurb",
                                    "test_dataset_config": "ncbi_disease",
                                    "entity_type": "Disease", "type_map": {"Disease": "Disease"}})
    assert cfg.type_map == {"Disease": "Disease"} and cfg.test_dataset_config == "ncbi_disease"


# ------------------------------------------------------------------ sweep keys


def test_sweep_settings_read_the_top_level_and_experiments_ignore_them(tmp_path):
    path = write_yaml(tmp_path, "baseline: lora\nbootstrap_resamples: 200\nbootstrap_seed: 3\n"
                                "experiments:\n  - {name: full}\n  - {name: lora, method: lora}\n")
    settings = config_files.sweep_settings(path)
    assert settings == config.SweepSettings(baseline=["lora"], bootstrap_resamples=200,
                                            bootstrap_seed=3)
    assert [c.name for c in config_files.experiment_configs(path)] == ["full", "lora"]
    assert config_files.sweep_settings(path, {"bootstrap_seed": 9}).bootstrap_seed == 9
    [cfg, _] = config_files.experiment_configs(path, {"bootstrap_seed": 9})  # not a run's key
    assert cfg.name == "full"
    assert config_files.sweep_settings(write_yaml(tmp_path, "lr: 1\n", "y.yml")) == \
        config.SweepSettings()


@pytest.mark.parametrize("text, line, words", [
    ("seed: 1\nbootstrap_resamples: 0\n", 2, "'bootstrap_resamples' must be >= 1"),
    ("bootstrap_seed: x\n", 1, "'bootstrap_seed' expects int"),
])
def test_bad_sweep_settings_name_file_line_and_key(tmp_path, text, line, words):
    path = write_yaml(tmp_path, text)
    with pytest.raises(config.ConfigError) as error:
        config_files.sweep_settings(path)
    assert str(error.value).startswith(f"{path}:{line}: ") and words in str(error.value)


# ------------------------------------------------------------------ documentation of the keys


def field_lines(cls) -> list[tuple[str, str, list[str]]]:
    """(field name, its line, the comment lines just above it) from `cls`'s source in
    config.py; `# ---` lines head a group and are no field's comment."""
    source = (ROOT / "config.py").read_text().split(f"class {cls.__name__}:\n", 1)[1]
    body = source.split("\n\n\n", 1)[0].splitlines()
    fields, above = [], []
    for line in body:
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("# ---"):
            above.append(stripped)
            continue
        if re.match(r"    \w+: ", line):
            fields.append((line.split(":")[0].strip(), line, above))
        above = []  # a heading, a docstring or a blank line ends a comment block
    return fields


@pytest.mark.parametrize("cls", [config.Config, config.SweepSettings, config.AugConfig])
def test_every_config_key_has_a_why_comment(cls):
    fields = field_lines(cls)
    assert [name for name, _, _ in fields] == [f.name for f in dataclasses.fields(cls)]
    undocumented = [name for name, line, above in fields
                    if "  # " not in line and not above]
    assert not undocumented


def test_help_lists_every_key_with_its_default_and_comment():
    text = " ".join(config_files.config_help().split())  # wrapping may split a line anywhere
    for cls in (config.Config, config.SweepSettings):
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            match = re.search(re.escape(f"{f.name} (default {default!r}): ") + r"(\S+)", text)
            assert match, f.name  # and a comment follows
    assert "fusion_mode (default 'merge'): merge: weighted sum" in text
    assert "LoRA (method: lora) rank (default 16)" in text  # a group heading, then its keys
    assert text.index("sweep keys") > text.index("fusion_value (default True)")


def test_the_config_reference_documents_every_config_key():
    readme = (ROOT / "docs" / "config.md").read_text()
    keys = [f.name for f in dataclasses.fields(config.Config)] + \
        [f"aug.{f.name}" for f in dataclasses.fields(config.AugConfig)] + \
        [f.name for f in dataclasses.fields(config.SweepSettings)]
    missing = [k for k in keys if f"| `{k}` |" not in readme]
    assert not missing


# ------------------------------------------------------------------ the shipped configs


SHIPPED = sorted(p.stem for p in (ROOT / "configs").glob("*.yml"))


def test_the_known_configs_are_shipped():
    assert {"demo_cpu", "study_cpu", "bc5cdr", "ncbi_disease", "bc5cdr_minilm",
            "bc5cdr_aug_cpu"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_valid(name, capsys):
    path = ROOT / "configs" / f"{name}.yml"
    configs = config_files.experiment_configs(path)
    config_files.sweep_settings(path)
    assert "is now 'fusion_mode'" not in capsys.readouterr().out  # no old key names shipped
    assert configs and all(c.method in methods.METHODS for c in configs)
    assert preflight.fusion_problems(configs) == []  # fusion sources exist and fit
    if name == "bc5cdr":
        by_name = {c.name: c for c in configs}
        assert {"full[lr=5e-05]", "lora-r8[lr=0.0005]", "lora-r16[lr=0.001]",
                "lora-r32[lr=0.002]", "lora-r64[lr=0.004]", "lora-r16-crf[crf_lr=0.05]",
                "lora-aug", "lora-r32-cosine", "lora-chem", "lora-disease", "fusion-merge",
                "fusion-attention", "lora-r16-all-linear[lr=0.001]", "dora-r16[lr=0.001]",
                "lora-plus-r16[lr=0.0002]", "pfeiffer[lr=0.0003]", "houlsby[lr=0.0003]",
                "ia3[lr=0.003]", "bitfit[lr=0.0005]", "adapter-fusion"} <= set(by_name)
        assert config_files.sweep_settings(path).baseline == ["full"]  # the grid's devel choice
        seed_block = by_name["lora-r32-cosine"]
        assert (seed_block.rank, seed_block.lr, seed_block.lr_scheduler_type,
                seed_block.warmup_steps) == (32, 5e-5, "cosine", 300)
        assert by_name["full[lr=5e-05]"].precision == "fp16"
        # every LoRA rank and every other PEFT method has a learning-rate grid of 3 or more
        groups = config_files.grid_groups(configs)
        for block in ("lora-r8", "lora-r16", "lora-r32", "lora-r64", "lora-r16-all-linear",
                      "dora-r16", "lora-plus-r16", "pfeiffer", "houlsby", "parallel", "ia3",
                      "bitfit", "layernorm", "prefix", "partial"):
            assert len({by_name[m].lr for m in groups[block]}) >= 3, block
        assert by_name["lora-r16-crf[crf_lr=0.05]"].crf and by_name["lora-aug"].aug == \
            config.AugConfig(p=0.3, copies=1)
        assert by_name["fusion-merge"].fusion_mode == "merge"
        assert by_name["fusion-attention"].fusion_mode == "attention"
        assert by_name["fusion-merge"].adapters == ["lora-chem", "lora-disease"]
        assert (by_name["lora-chem"].dataset, by_name["lora-disease"].dataset) == \
            ("bc5cdr_chem", "bc5cdr_disease")
    if name == "peft_cpu":
        by_name = {c.name: c for c in configs}
        assert (by_name["full"].lr, by_name["lora-r16"].lr) == (4e-4, 4e-3)  # study_cpu's
        # the earlier PEFT study's devel choices for the methods it gridded; grids for the rest
        assert {name: by_name[name].lr for name in ("lora-r16-all-linear", "dora-r16",
                                                    "lora-plus-r16", "ia3", "bitfit")} == \
            {"lora-r16-all-linear": 2e-3, "dora-r16": 4e-3, "lora-plus-r16": 5e-4, "ia3": 1e-1,
             "bitfit": 1e-2}
        groups = config_files.grid_groups(configs)
        assert set(groups) == {"pfeiffer", "houlsby", "parallel", "prefix", "layernorm", "partial"}
        assert all(len({by_name[m].lr for m in members}) >= 3 for members in groups.values())
        assert {c.method for c in configs} == set(methods.METHODS) - {"fusion"}
        assert {(c.train_limit, c.eval_limit, c.epochs, c.repeats) for c in configs} == \
            {(1000, 500, 3, 3)}


# ------------------------------------------------------------------ keys of another method


def test_a_block_key_of_another_method_is_an_error_naming_both_methods(tmp_path):
    path = write_yaml(tmp_path, "experiments:\n  - {name: a, method: full, rank: 8}\n"
                                "  - {name: f, method: fusion, adapters: [a],\n"
                                "     grid: {targets: [[query]]}}\n")
    rank, targets = problems(path)
    assert rank.startswith(f"{path}:2: experiments[0] (a): key 'rank' belongs to method 'lora'")
    assert "not 'full'" in rank
    assert targets.startswith(f"{path}:4: ") and "'targets' belongs to method 'lora'" in targets
    assert "not 'fusion'" in targets


def test_top_level_and_command_line_keys_are_defaults_for_the_methods_that_use_them(tmp_path):
    path = write_yaml(tmp_path, "rank: 4\nexperiments:\n  - {name: full}\n"
                                "  - {name: lora, method: lora}\n")
    full, lora_run = config_files.experiment_configs(path, {"alpha": 8.0})
    assert (lora_run.rank, lora_run.alpha) == (4, 8.0)
    assert full.method == "full"  # no error: top-level keys are defaults


def test_the_seed_block_format_reads_as_written(tmp_path):
    path = write_yaml(tmp_path, "experiments:\n  - {name: lora-r32-cosine, method: lora, "
                                "rank: 32, lr: 5e-5, epochs: 5, lr_scheduler_type: cosine, "
                                "warmup_steps: 300}\n")
    [cfg] = config_files.experiment_configs(path)
    assert (cfg.method, cfg.rank, cfg.lr, cfg.epochs, cfg.lr_scheduler_type, cfg.warmup_steps) \
        == ("lora", 32, 5e-5, 5, "cosine", 300)


def test_help_lists_every_method_of_the_table():
    text = config_files.config_help()
    for method in methods.METHODS.values():
        assert f"  {method.name}: trains " in text
    assert "lr_scheduler_type (default 'linear'): how the learning rate decays after warm-up " \
           "(one of: linear, cosine, constant)" in " ".join(text.split())


# ------------------------------------------------------------------ one line per mistake, at its place


def test_a_misspelled_top_level_key_is_one_line_at_its_line_with_the_nearest_key(tmp_path):
    path = write_yaml(tmp_path, "model: m\nepocs: 2\nexperiments:\n" +
                      "".join(f"  - {{name: e{i}}}\n" for i in range(8)))
    assert problems(path) == [f"{path}:2: unknown key 'epocs'; did you mean 'epochs'?"]


def test_mistakes_at_the_top_and_in_a_block_are_reported_together(tmp_path):
    path = write_yaml(tmp_path, "epocs: 2\nexperiments:\n  - {name: full}\n"
                                "  - {name: lora, method: lora, rank: -3, reductoin: 4}\n")
    assert problems(path) == [
        f"{path}:1: unknown key 'epocs'; did you mean 'epochs'?",
        f"{path}:4: experiments[1] (lora): unknown key 'reductoin'; did you mean 'reduction'?",
        f"{path}:4: experiments[1] (lora): key 'rank' must be >= 1, found -3"]


def test_command_line_mistakes_are_one_line_each_blaming_the_command_line(tmp_path):
    path = write_yaml(tmp_path, "experiments:\n  - {name: full}\n  - {name: lora, method: lora}\n"
                                "  - {name: f, method: fusion, adapters: [lora]}\n")
    with pytest.raises(config.ConfigError) as error:
        config_files.experiment_configs(path, {"epocs": 2, "rank": -3})
    assert str(error.value).splitlines() == [
        "command line --epocs: unknown key 'epocs'; did you mean 'epochs'?",
        "command line --rank: key 'rank' must be >= 1, found -3"]


def test_a_misspelled_choice_or_nested_key_names_the_nearest_one(tmp_path):
    assert problems(write_yaml(tmp_path, "aug: {pp: 0.3}\n")) == \
        [f"{tmp_path / 'x.yml'}:1: unknown key 'aug.pp'; did you mean 'p'?"]
    [grid] = problems(write_yaml(tmp_path, "experiments:\n  - {name: a, grid: {lrr: [1]}}\n"))
    assert grid.endswith("grid: unknown key 'lrr'; did you mean 'lr'?")
