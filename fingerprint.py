"""Fingerprints: short digests of everything a run's result depends on.

A sweep counts a run as finished only when the record it left carries the fingerprint of the
run it would train now: the resolved config, the code that computes it, the corpus files, the
encoder and, for a fusion, its sources' fingerprints (sweep.py puts them together). Change any
of them and the run trains again; change nothing and it does not. The same digests key the cache
of tokenised corpora.

Code is digested as code, not text: `code_digest` parses a file and digests its syntax tree
without docstrings, so comments, docstrings and formatting change nothing, while any change to
what the code does (a name, a constant, an operator) changes the digest.

Files are hashed by content, so a copied or re-cloned corpus keeps its fingerprint. A file over
`WHOLE_FILE_LIMIT` (model weights) is digested by its size and its first and last 4 MiB: any
retraining changes those bytes, and hashing 440 MB of BioBERT for every sweep would not pay.
Left out: a hub model's weights, which are named by the hub id and the cached revision.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from pathlib import Path

WHOLE_FILE_LIMIT = 16 * 2**20
EDGE = 4 * 2**20


def digest(value) -> str:
    """A 16-hex-digit digest of any JSON-able value (keys sorted, so order never matters)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime key the cache only: a sweep hashes each file once, a touched file again
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_LIMIT:
            sha.update(f.read())
        else:
            sha.update(f.read(EDGE))
            f.seek(size - EDGE)
            sha.update(f.read(EDGE))
            sha.update(str(size).encode())
    return sha.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    stat = os.stat(path)
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def folder_digest(folder: str | Path) -> str:
    """Every file under `folder`, by relative path and content (hidden files skipped)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return digest({str(p.relative_to(folder)): file_digest(p) for p in files})


def corpus_digest(paths: dict[str, Path]) -> str:
    """The three split files of a corpus, by content."""
    return digest({split: file_digest(path) for split, path in sorted(paths.items())})


def encoder_digest(model: str, folder: str | Path | None) -> str:
    """A local encoder folder by content; a hub id by its name and cached revision, if any."""
    if folder is not None and Path(folder).is_dir():
        return folder_digest(folder)
    cache = Path(os.environ.get("HF_HUB_CACHE") or
                 Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    ref = cache / f"models--{model.replace('/', '--')}" / "refs" / "main"
    return digest({"hub": model, "revision": ref.read_text().strip() if ref.is_file() else None})


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """`tree` with the docstring of every module, class and function removed (in place)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.cache
def _tree_digest(source: str) -> str:
    # keyed by the text itself: a sweep parses each file once, an edited file again
    tree = _without_docstrings(ast.parse(source))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def code_digest(path: str | Path) -> str:
    """A Python file's code: its syntax tree without docstrings (comments never reach it)."""
    return _tree_digest(Path(path).read_text(encoding="utf-8"))
