"""The documentation stays true: every code block in docs/ and the README marked ``python runnable`` runs, every
command of ours in a shell block exists with every flag it uses (checked against its ``--help``), every
``make`` target exists, and every link to a file points at one."""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from search.settings import REPO_ROOT

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
README_LIMIT = 12 * 1024


def blocks(path: Path, info: str) -> list[str]:
    return [code for kind, code in FENCE.findall(path.read_text(encoding="utf-8")) if kind.strip() == info]


def commands(code: str) -> list[list[str]]:
    """The shell block's command lines, continuations joined, comments and background marks dropped."""
    joined = code.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip().rstrip("&").strip()
        if line and not line.startswith("#"):
            found.append(shlex.split(line))
    return found


def program(words: list[str]) -> tuple[str, ...] | None:
    """Which of our programs a command line runs: ("search", SUBCOMMAND), ("app",), ("make", TARGET),
    ("benchmark", SCRIPT), or None for someone else's (vllm, sqlite3, …)."""
    if "-m" in words and words[words.index("-m") + 1] == "search":
        return ("search", words[words.index("-m") + 2])
    if any(word.endswith("app.py") for word in words):
        return ("app",)
    if words[0] == "make":
        return ("make", next(word for word in words[1:] if "=" not in word))
    if any(word.startswith("benchmarks/") for word in words):
        return ("benchmark", next(word for word in words if word.startswith("benchmarks/")))
    return None


@functools.cache
def help_text(which: tuple[str, ...]) -> str:
    argv = ["-m", "search", which[1]] if which[0] == "search" else ["app.py"]
    result = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def shell_lines() -> list[tuple[str, list[str]]]:
    return [(f"{path.name}: {' '.join(words)[:60]}", words) for path in DOCUMENTS
            for code in blocks(path, "sh") for words in commands(code) if program(words) is not None]


@pytest.mark.parametrize(("name", "words"), shell_lines(), ids=[name for name, _ in shell_lines()])
def test_every_command_of_ours_exists_with_its_flags(name: str, words: list[str]) -> None:
    which = program(words)
    assert which is not None
    if which[0] == "make":
        assert re.search(rf"^{re.escape(which[1])}:", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE), name
        return
    if which[0] == "benchmark":
        assert (REPO_ROOT / which[1]).is_file(), name
        return
    flags = {word.split("=", 1)[0] for word in words if word.startswith("--")}
    usage = help_text(which)
    assert all(offers(usage, flag) for flag in flags), (name, [flag for flag in flags if not offers(usage, flag)])


def offers(usage: str, flag: str) -> bool:
    """Whether ``usage`` lists ``flag`` itself (not only a longer flag that starts with it: ``--run`` in
    ``--run-out``)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", usage) is not None


def test_a_flag_is_found_whole() -> None:
    usage = "usage: rerank-run [--run-out VALUE] [--no-evidence] [--top-k VALUE]\n  --budget VALUE  tokens"
    assert offers(usage, "--run-out") and offers(usage, "--top-k") and offers(usage, "--budget")
    assert not offers(usage, "--run") and not offers(usage, "--evidence") and not offers(usage, "--top")


def test_every_runnable_python_block_runs(index_dir: Path, tmp_path: Path, demo_model: Path) -> None:
    runnable = [(path, code) for path in DOCUMENTS for code in blocks(path, "python runnable")]
    assert runnable, "no block is marked runnable"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "EXPLAINABLE_SEARCH_INDEX_DIR": str(index_dir),
                   "EXPLAINABLE_SEARCH_JUDGMENT_CACHE_PATH": str(tmp_path / "judgments.sqlite3")}
    for path, code in runnable:
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=environment, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"{path.name}:\n{result.stderr[-3000:]}"
        assert result.stdout.strip(), path.name


def test_links_point_at_files_and_the_readme_stays_short() -> None:
    for path in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#]+)\)", path.read_text(encoding="utf-8")):
            if not target.startswith("http"):
                assert (path.parent / target).exists(), f"{path.name}: {target}"
    assert len((REPO_ROOT / "README.md").read_bytes()) <= README_LIMIT
    assert {path.name for path in DOCUMENTS} >= {"architecture.md", "api.md", "annotating.md", "batch.md",
                                                 "benchmarks.md"}
