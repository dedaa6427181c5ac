"""README.md and docs/: every link leads somewhere, and every command names scripts, modules,
configs and flags that exist, so that it still runs as written after code moves."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest

import compare
import config
from comparison import slurm

ROOT = Path(compare.__file__).parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
KEYS = {f.name for cls in (config.Config, config.SweepSettings) for f in dataclasses.fields(cls)}
# Each command's own flags; `--key=value` may also override any config key.
FLAGS = {
    "compare.py": set(re.findall(r"(--[a-z-]+)", compare.USAGE)),
    "train.py": {"--experiment", "--help"},
    "predict.py": {"--format", "--output-format", "--output", "--gpu", "--help"},
    "export.py": {"--format", "--help"},
}
FLAGS["comparison.slurm"] = {f"--{flag}" for flag in slurm.LAUNCH_FLAGS} | FLAGS["compare.py"]


def commands(page: Path) -> list[list[str]]:
    """The `python ...` command lines of a page's shell blocks, continuation lines joined and
    comments cut."""
    found = []
    blocks = re.findall(r"```(\w*)\n(.*?)```", page.read_text(), flags=re.DOTALL)
    for language, block in blocks:  # every fenced block, so that none is paired wrongly
        if language not in ("bash", "sh"):
            continue
        text, pending = block.replace("\\\n", " "), ""
        for line in text.splitlines():
            line = pending + line.split(" #", 1)[0].strip()
            try:  # a quoted argument may run over several lines (python -c "...")
                words = shlex.split(line, comments=True) if "python" in line else []
            except ValueError:
                pending = line + "\n"
                continue
            pending = ""
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # environment assignments: NER_DATA_DIR=... python ...
            if words[:1] in (["python"], ["python3"]):
                found.append(words)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_leads_to_a_file_and_heading_that_exist(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#([\w-]+))?\)", page.read_text()):
        path, anchor = target
        if path.startswith(("http://", "https://")):
            continue
        resolved = (page.parent / path).resolve()
        assert resolved.exists(), f"{page.name}: {path}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", resolved.read_text(), flags=re.MULTILINE)
            slugs = {re.sub(r"[^\w -]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{page.name}: {path}#{anchor}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_names_what_exists(page):
    for words in commands(page):
        if words[1] == "-m":
            script, rest = words[2], words[3:]
            if not (ROOT / script.split(".")[0]).is_dir():
                continue  # a module of another project (venv, pytest)
            assert (ROOT / Path(*script.split("."))).with_suffix(".py").is_file(), script
        else:
            script, rest = words[1], words[2:]
            if not (ROOT / script).is_file():
                continue  # a script of another project (wandb, tensorboard) or a pip command
        for word in rest:
            if word.startswith("configs/"):
                assert (ROOT / word).is_file(), f"{page.name}: {' '.join(words)}"
            if word.startswith("--"):
                flag = word.split("=", 1)[0]
                known = FLAGS.get(script, set()) | {f"--{key}" for key in KEYS}
                if script in FLAGS:
                    assert flag in known, f"{page.name}: {flag} in {' '.join(words)}"
