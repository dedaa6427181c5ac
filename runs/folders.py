"""Run folders, and how every file is written (whole, or not at all) and read back.

A run's folder is `<output_dir>/<experiment>/seed<seed>/`; the experiments of one sweep sit side
by side, so a fusion finds a source experiment's run at its own seed next to its own folder
(`source_dirs`). A run folder holds `config.json`, `labels.json`, `log.jsonl`, `predictions.txt`,
`weights.safetensors`, what its method exports (`peft/`), `metrics.json` (written last by the
run) and, in a sweep, `record.json` (written by the sweep's runner after the run).

Writes go to a temporary file (or folder) named after this process, then `os.replace` it into
place: a crash never leaves half a file, and two processes writing the same file (sweep shards
sharing an output folder) never mix their bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

RECORD = "record.json"  # the sweep's word on a run: fingerprint, status, reason
METRICS = "metrics.json"  # the run's own last file: its presence says the run finished


def run_dir(cfg) -> Path:
    return Path(cfg.output_dir) / cfg.name / f"seed{cfg.seed}"


def source_dirs(run: Path, seed: int, adapters: Sequence[str]) -> list[Path]:
    """The run folders a fusion run at `run` (a folder, as `run_dir` gives) reads: each of
    `adapters` is a run folder as given, or an experiment of the same sweep at this seed,
    beside the run's own experiment."""
    return [Path(a) if Path(a).is_dir() else run.parent.parent / a / f"seed{seed}"
            for a in adapters]


def start_run(folder: Path) -> None:
    """Remove what says an earlier attempt finished (its metrics and the sweep's record), before
    a run writes anything else into `folder`: a half-written run never passes for a whole one."""
    for name in (RECORD, METRICS):
        (folder / name).unlink(missing_ok=True)


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _publish(temporary: Path, path: Path) -> None:
    """Rename the finished `temporary` to `path`, with the mode an ordinary new file gets (0666
    less the umask): a library that writes its own files (safetensors: 0600) would otherwise
    keep colleagues on a shared output folder from reading them."""
    umask = os.umask(0o022)  # read by setting it, and set straight back
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)


def write_atomic(path: Path, text: str) -> None:
    temporary = _temporary(path)
    temporary.write_text(text, encoding="utf-8")
    _publish(temporary, path)


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    temporary = _temporary(path)
    temporary.write_bytes(payload)
    _publish(temporary, path)


def save_weights_atomic(path: Path, state: dict[str, torch.Tensor], metadata: dict) -> None:
    temporary = _temporary(path)
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(temporary),
              metadata={k: json.dumps(v) for k, v in metadata.items()})
    _publish(temporary, path)


def write_folder_atomic(folder: Path, files: dict[str, bytes]) -> None:
    """A folder of `files` ({name: content}) in place of `folder`, whole or not at all: written
    beside it under a temporary name, then renamed. A folder already there is replaced (it is
    renamed aside first, since a rename cannot replace a folder that holds files)."""
    temporary = _temporary(folder)
    shutil.rmtree(temporary, ignore_errors=True)  # left by a crash of a process of this id
    temporary.mkdir()
    for name, payload in files.items():
        write_bytes_atomic(temporary / name, payload)
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(temporary, folder)
    if old.exists():
        shutil.rmtree(old)


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing or unreadable: for files whose
    absence is a state (no record yet), not an error."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def load_json(path: Path):
    """The JSON value in `path`; a missing or unreadable file is a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from error


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file; a missing or unreadable file is a
    ValueError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            return {name: f.get_tensor(name) for name in names}, f.metadata() or {}
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


@dataclass
class SavedRun:
    """A finished run read back by another (a fusion reads its sources): its folder, resolved
    config and trained weights by parameter name."""
    folder: Path
    config: dict
    weights: dict[str, torch.Tensor]


def read_saved_run(folder: Path) -> SavedRun:
    """`config.json` and `weights.safetensors` of a run folder; a ValueError naming the folder
    and what was expected when either is missing or unreadable."""
    folder = Path(folder)
    try:
        config = load_json(folder / "config.json")
        weights, _ = read_safetensors(folder / "weights.safetensors")
    except ValueError as error:
        raise ValueError(f"{folder}: expected a finished run folder holding config.json and "
                         f"weights.safetensors ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{folder / 'config.json'}: expected a JSON object")  # noqa: TRY004
    return SavedRun(folder, config, weights)
