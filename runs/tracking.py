"""Optional live experiment tracking of a run: TensorBoard or Weights & Biases; off by default.

`open_tracker(kind, project, run_name, config, log_dir)` returns a tracker with three calls:
`log(values, step)` for scalars during training (loss, learning rate, devel F1),
`summary(values)` once with the final metrics, and `close()`. `kind: none` returns a tracker
that does nothing, and neither package is imported unless its kind is chosen, so neither is a
requirement of the project.

- tensorboard: `torch.utils.tensorboard.SummaryWriter` writes event files into `log_dir`; view
  them with `tensorboard --logdir <output_dir>` (one run per folder).
- wandb: `wandb.init(project, name, config, dir=log_dir)`. Offline, set `WANDB_MODE=offline`:
  wandb then writes the run under `<log_dir>/wandb/` and `wandb sync` uploads it later.

Left out: tracking artefacts (weights, predictions; the run folder holds them), system metrics,
and retrying a tracker that fails mid-run.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Protocol

from config import CHOICES

KINDS = CHOICES["tracker"]
# The package each kind needs (neither is a requirement of the project).
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...

    def summary(self, values: dict) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    """`tracker: none`: every call does nothing."""

    def log(self, values: dict[str, float], step: int) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def close(self) -> None:
        pass


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested metrics as one level of `/`-joined keys: {"test": {"f1": 0.8}} -> {"test/f1": 0.8}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TensorBoardTracker:
    """Scalars to TensorBoard event files; the config as a text panel."""

    def __init__(self, writer, config: dict):
        self.writer = writer
        self.last_step = 0
        # TensorBoard's text panel renders Markdown: indent four spaces for a code block
        text = json.dumps(config, indent=2, default=str)
        writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, float(value), step)
        self.last_step = max(self.last_step, step)

    def summary(self, values: dict) -> None:
        """Final metrics as `final/<key>` scalars at the last step (numbers only). TensorBoard
        has no run summary; its hparams panel would need a flat, scalar-only config."""
        for key, value in flatten(values).items():
            if is_number(value):
                self.writer.add_scalar(f"final/{key}", float(value), self.last_step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run: `log` with explicit steps, `summary` into the run's summary."""

    def __init__(self, run):
        self.run = run

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log({key: float(value) for key, value in values.items()}, step=step)

    def summary(self, values: dict) -> None:
        self.run.summary.update(flatten(values))

    def close(self) -> None:
        self.run.finish()


def import_backend(module: str, kind: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"tracker: {kind} needs the {package!r} package "
                          f"(pip install {package})") from error


def open_tracker(kind: str, project: str, run_name: str, config: dict, log_dir: Path) -> Tracker:
    """A tracker of `kind` (none | tensorboard | wandb) for one run; call `close()` when the run
    ends, also when it fails. A missing package is a one-line ImportError naming it."""
    if kind == "none":
        return NullTracker()
    if kind not in KINDS:
        raise ValueError(f"tracker: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    if kind == "tensorboard":
        tensorboard = import_backend("torch.utils.tensorboard", kind, PACKAGES[kind])
        return TensorBoardTracker(tensorboard.SummaryWriter(log_dir=str(log_dir)), config)
    wandb = import_backend("wandb", kind, PACKAGES[kind])
    # No `mode=` here: wandb reads WANDB_MODE (offline, disabled) from the environment itself.
    return WandbTracker(wandb.init(project=project, name=run_name, config=config,
                                   dir=str(log_dir)))
