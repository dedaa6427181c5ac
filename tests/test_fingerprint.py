"""fingerprint.py: file, folder and code digests; code is digested as code, not as text."""

from __future__ import annotations

import pytest

from comparison import fingerprint

CODE = '''"""A module docstring."""

NEG = -1e4  # a comment


def score(x):
    """A docstring."""
    return x + NEG
'''


def digest_of(tmp_path, text: str) -> str:
    path = tmp_path / "module.py"
    path.write_text(text)
    return fingerprint.code_digest(path)


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("# a comment", "# another comment"),
    lambda s: s.replace('"""A docstring."""', '"""Another docstring,\n    on two lines."""'),
    lambda s: s.replace('"""A module docstring."""\n', ""),
    lambda s: s.replace("x + NEG", "(x +   NEG)"),
    lambda s: s + "\n\n# a trailing comment\n",
])
def test_comments_docstrings_and_formatting_do_not_count(tmp_path, edit):
    assert digest_of(tmp_path, edit(CODE)) == digest_of(tmp_path, CODE)


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("-1e4", "-1e3"),
    lambda s: s.replace("x + NEG", "x - NEG"),
    lambda s: s.replace("def score(x)", "def score(y)").replace("return x", "return y"),
    lambda s: s + "\nEXTRA = 1\n",
])
def test_any_change_to_what_the_code_does_counts(tmp_path, edit):
    assert digest_of(tmp_path, edit(CODE)) != digest_of(tmp_path, CODE)


def test_file_digests_follow_content_not_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.tsv").write_text("w\tO\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.tsv").write_text("w\tO\n")
    assert fingerprint.folder_digest(tmp_path / "a") == fingerprint.folder_digest(tmp_path / "b")
    (tmp_path / "b" / "x.tsv").write_text("w\tB-X\n")
    assert fingerprint.folder_digest(tmp_path / "a") != fingerprint.folder_digest(tmp_path / "b")
