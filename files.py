"""Where a run's files live, and how every file is written: whole, or not at all.

A run's folder is `<output_dir>/<experiment>/seed<seed>/`. Writes go to a temporary file named
after this process, then `os.replace` it into place: a crash never leaves half a file, and two
processes writing the same file (sweep shards sharing an output folder) never mix their bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def run_dir(cfg) -> Path:
    return Path(cfg.output_dir) / cfg.name / f"seed{cfg.seed}"


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, text: str) -> None:
    temporary = _temporary(path)
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    temporary = _temporary(path)
    temporary.write_bytes(payload)
    os.replace(temporary, path)


def save_weights_atomic(path: Path, state: dict[str, torch.Tensor], metadata: dict) -> None:
    temporary = _temporary(path)
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(temporary),
              metadata={k: json.dumps(v) for k, v in metadata.items()})
    os.replace(temporary, path)


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing or unreadable."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
