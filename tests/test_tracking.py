"""tracking.py: the no-op default, the missing-package error, and both backends against small
fake modules that record their calls (neither package is needed, nothing touches the network)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest

from runs import tracking

CONFIG = {"name": "lora", "seed": 42, "targets": ["query", "value"], "aug": None}
FINAL = {"test": {"f1": 0.8, "precision": 0.75, "per_type": {"Chemical": {"f1": 0.9}}},
         "device": "cpu", "trainable_params": 1234, "save_weights": True}


def test_none_does_nothing_and_imports_nothing(tmp_path):
    code = ("import sys; from runs import tracking; from pathlib import Path\n"
            "t = tracking.open_tracker('none', 'p', 'r', {}, Path(sys.argv[1]))\n"
            "t.log({'loss': 1.0}, 1); t.summary({'f1': 1.0}); t.close()\n"
            "print(sorted(m for m in ('wandb', 'torch', 'torch.utils.tensorboard')"
            " if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code, str(tmp_path / "logs")],
                           capture_output=True, text=True, check=True,
                           cwd=Path(tracking.__file__).parent.parent).stdout.strip()
    assert found == "[]"
    assert not (tmp_path / "logs").exists()  # the no-op tracker writes nothing either


@pytest.mark.parametrize("kind, module, package", [
    ("tensorboard", "torch.utils.tensorboard", "tensorboard"), ("wandb", "wandb", "wandb")])
def test_missing_package_is_a_one_line_error_naming_it(tmp_path, monkeypatch, kind, module,
                                                       package):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(ImportError) as error:
        tracking.open_tracker(kind, "p", "lora/seed42", CONFIG, tmp_path)
    assert str(error.value) == (f"tracker: {kind} needs the '{package}' package "
                                f"(pip install {package})")


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown kind 'mlflow' \\(known: none, tensorboard"):
        tracking.open_tracker("mlflow", "p", "r", {}, Path("."))


# ------------------------------------------------------------------ fake backends


class FakeSummaryWriter:
    instances: ClassVar[list] = []

    def __init__(self, log_dir: str):
        self.log_dir, self.calls = log_dir, []
        FakeSummaryWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.calls.append(("scalar", tag, value, step))

    def add_text(self, tag, text, step):
        self.calls.append(("text", tag, text, step))

    def flush(self):
        self.calls.append(("flush",))

    def close(self):
        self.calls.append(("close",))


def test_tensorboard_logs_scalars_summary_and_config(tmp_path, monkeypatch):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    FakeSummaryWriter.instances.clear()
    tracker = tracking.open_tracker("tensorboard", "proj", "lora/seed42", CONFIG,
                                    tmp_path / "run")
    tracker.log({"train/loss": 1.5, "train/lr": 2e-3}, step=10)
    tracker.log({"devel/f1": 0.5}, step=20)
    tracker.summary(FINAL)
    tracker.close()
    [writer] = FakeSummaryWriter.instances
    assert writer.log_dir == str(tmp_path / "run") and (tmp_path / "run").is_dir()
    kind, tag, text, step = writer.calls[0]
    assert (kind, tag, step) == ("text", "config", 0) and '    "targets": [' in text
    assert writer.calls[1:] == [
        ("scalar", "train/loss", 1.5, 10), ("scalar", "train/lr", 2e-3, 10),
        ("scalar", "devel/f1", 0.5, 20),
        ("scalar", "final/test/f1", 0.8, 20), ("scalar", "final/test/precision", 0.75, 20),
        ("scalar", "final/test/per_type/Chemical/f1", 0.9, 20),
        ("scalar", "final/trainable_params", 1234.0, 20),  # strings and booleans left out
        ("flush",), ("close",)]


class FakeRun:
    def __init__(self):
        self.logged, self.summary, self.finished = [], {}, False

    def log(self, values, step):
        self.logged.append((values, step))

    def finish(self):
        self.finished = True


def test_wandb_passes_project_name_config_and_dir(tmp_path, monkeypatch):
    inits = []

    def init(**kwargs):
        inits.append(kwargs)
        return FakeRun()

    fake = types.ModuleType("wandb")
    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tracker = tracking.open_tracker("wandb", "ner-peft", "lora/seed42", CONFIG, tmp_path / "w")
    tracker.log({"train/loss": 1.5}, step=10)
    tracker.log({"devel/f1": 0.5}, step=20)
    tracker.summary(FINAL)
    tracker.close()
    # no mode= argument: WANDB_MODE=offline in the environment decides, as wandb documents
    assert inits == [{"project": "ner-peft", "name": "lora/seed42", "config": CONFIG,
                      "dir": str(tmp_path / "w")}]
    assert (tmp_path / "w").is_dir()
    run = tracker.run
    assert run.logged == [({"train/loss": 1.5}, 10), ({"devel/f1": 0.5}, 20)]
    assert run.summary == {"test/f1": 0.8, "test/precision": 0.75,
                           "test/per_type/Chemical/f1": 0.9, "device": "cpu",
                           "trainable_params": 1234, "save_weights": True}
    assert run.finished


def test_flatten():
    assert tracking.flatten({"a": {"b": {"c": 1}}, "d": 2, "e": {}}) == {"a/b/c": 1, "d": 2}
