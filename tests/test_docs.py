"""Every repository file that the README, the docs and the code cite must exist, and nothing may cite DESIGN.md.

Scanned: README.md, docs/*.md, and the *.py files of medsa_peft/, examples/, datasets_scripts/, benchmarks/ and
scripts/. A citation is one of:

- a path that starts with a top-level folder of the repository (`docs/data.md`, `examples/train.py`,
  `benchmarks/NOTES.md`, `medsa_peft/assets/sam-tiny-shapes`), read from the repository root;
- a bare markdown or Python file name (`NOTES.md`, `adapters.py`), which some file of that name in the
  repository must answer;
- the target of a relative markdown link in a .md file (`[data](data.md)`), read from that file's folder.

The design document of this project is docs/design.md; the planning file DESIGN.md outside the repository is
not part of it and must not be cited.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("medsa_peft", "examples", "datasets_scripts", "benchmarks", "scripts")
# Paths that begin with one of these folders are read as repository paths.
REPOSITORY_FOLDERS = ("medsa_peft", "examples", "datasets_scripts", "benchmarks", "scripts", "tests", "docs", ".ci")
SKIPPED_PARTS = {".git", "__pycache__", ".pytest_cache", ".benchmarks"}

_PATH_CHARS = r"[\w./-]"
# A repository path: a top-level folder, a slash, then path characters. Not inside a longer word or path
# (`nilearn/datasets/...`, `datasets_scripts/` are not `datasets/`, `scripts/`).
REPOSITORY_PATH = re.compile(
    rf"(?<![\w./~-])((?:{'|'.join(re.escape(folder) for folder in REPOSITORY_FOLDERS)})/{_PATH_CHARS}*)"
)
# A bare file name of a markdown or Python file, not part of a path.
BARE_NAME = re.compile(r"(?<![\w./~-])([A-Za-z0-9_-]+\.(?:md|py))(?![\w/-])")
# [text](target "title") in markdown.
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# Any spelling of DESIGN.md other than this project's own docs/design.md (all lower case).
DESIGN_FILE = re.compile(r"design\.md", re.IGNORECASE)


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in CODE_FOLDERS:
        files += sorted(
            path for path in (ROOT / folder).rglob("*.py") if not SKIPPED_PARTS.intersection(path.parts)
        )
    return [path for path in files if path.is_file()]


@lru_cache(maxsize=None)
def repository_names() -> frozenset[str]:
    """Names of every file and folder in the working tree (outside .git and caches)."""
    names = set()
    for path in ROOT.rglob("*"):
        if not SKIPPED_PARTS.intersection(path.relative_to(ROOT).parts):
            names.add(path.name)
    return frozenset(names)


def _clean(path: str) -> str:
    """A cited path without the punctuation of the sentence around it."""
    return path.rstrip(".,;:")


def citations(path: Path) -> Iterator[tuple[int, str, Path | None]]:
    """(line number, citation as written, where it must be) for every citation in `path`.

    The location is None for a bare file name, which any file of that name in the repository satisfies.
    """
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        for match in REPOSITORY_PATH.finditer(line):
            cited = _clean(match.group(1))
            yield number, cited, ROOT / cited
        for match in BARE_NAME.finditer(line):
            yield number, match.group(1), None
        if path.suffix == ".md":
            for match in MARKDOWN_LINK.finditer(line):
                target = match.group(1)
                if URL_SCHEME.match(target) or target.startswith("#"):
                    continue
                target = target.split("#", 1)[0]
                if target:
                    yield number, target, (path.parent / target)


def _where(path: Path, number: int) -> str:
    return f"{path.relative_to(ROOT)}:{number}"


def missing_citations() -> list[str]:
    problems = []
    for path in scanned_files():
        for number, cited, location in citations(path):
            if location is None:
                found = cited in repository_names()
            else:
                resolved = location.resolve()
                found = resolved.exists() and (resolved == ROOT or ROOT in resolved.parents)
            if not found:
                problems.append(f"{_where(path, number)}: {cited}")
    return problems


def design_citations() -> list[str]:
    problems = []
    for path in scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for match in DESIGN_FILE.finditer(line):
                if match.group(0) != "design.md":
                    problems.append(f"{_where(path, number)}: {match.group(0)}")
    return problems


def test_the_scan_sees_the_files_and_their_citations():
    files = {path.relative_to(ROOT).as_posix() for path in scanned_files()}
    assert {"README.md", "medsa_peft/tuner/layer.py", "examples/train.py", "docs/design.md"} <= files
    readme = {cited for _, cited, _ in citations(ROOT / "README.md")}
    assert "examples/train.py" in readme


def test_the_patterns_read_citations_as_intended(tmp_path):
    sample = tmp_path / "sample.md"
    sample.write_text(
        "See `docs/design.md`, (benchmarks/NOTES.md) and examples/train.py.\n"
        "Not these: nilearn/datasets/data/, huggingface.co/datasets/x, ~/data/BTCV, datasets_scripts_x\n"
        "A [link](../docs/data.md#splits), an [anchor](#top), a [site](https://example.org/a.md), NOTES.md.\n",
        encoding="utf-8",
    )
    found = [(number, cited) for number, cited, _ in citations(sample)]
    assert found == [
        (1, "docs/design.md"),
        (1, "benchmarks/NOTES.md"),
        (1, "examples/train.py"),
        (3, "NOTES.md"),
        (3, "../docs/data.md"),
    ]


@pytest.mark.parametrize("text", ["see DESIGN.md section 3", "Design.md", "(shared/DESIGN.md)"])
def test_design_file_pattern_catches_every_spelling_but_the_docs_page(text):
    assert [m.group(0) for m in DESIGN_FILE.finditer(text)] != ["design.md"]
    assert [m.group(0) for m in DESIGN_FILE.finditer("docs/design.md")] == ["design.md"]


def test_every_cited_repository_file_exists():
    problems = missing_citations()
    assert not problems, "cited files that are not in the repository:\n" + "\n".join(problems)


def test_nothing_cites_design_md():
    problems = design_citations()
    assert not problems, (
        "DESIGN.md is not part of the repository; cite docs/design.md instead:\n" + "\n".join(problems)
    )
