"""Two Space-like installs, this checkout and an older commit, reranking the same candidates with a random-weight
model of rank1-0.5b's shape: whole processes, back to back, as a CPU Space would run them.

    .venv/bin/python benchmarks/space_install.py [--before 05f5383] [--runs 2] [--candidates 8] [--budget 64]

Each install is what Spaces does (tests/test_spaces.py): a new virtual environment with requirements.txt and the
front matter's Gradio, torch held to this suite's CPU build. Each run is ``python -m search rerank`` over the
sample corpus's top candidates with the engine the install picks by itself (transformers: no vLLM on a CPU Space),
timed from the process's start to its end; a first run per install builds the corpus's indexes and is not counted,
as a Space builds them at its first start. The installs alternate run by run, so both see the same machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from real_shape import build_shape

from search.settings import REPO_ROOT

QUERY = "which planets have no moons"
IGNORED = shutil.ignore_patterns(".git", ".venv", "test-artifacts", "__pycache__", "*.egg-info", "build",
                                 ".pytest_cache", ".ruff_cache", "results", ".gpu-wheels")


def install(source: Path, into: Path) -> Path:
    """A Space-like virtual environment for the checkout at ``source``; returns its python."""
    sdk = yaml.safe_load((source / "README.md").read_text(encoding="utf-8").split("---")[1])["sdk_version"]
    (into / "constraints.txt").write_text(f"torch=={torch.__version__}\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "venv", str(into / "venv")], check=True)
    python = into / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", "requirements.txt", f"gradio=={sdk}",
                    "-c", str(into / "constraints.txt")], cwd=source, check=True,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return python


def rerank(python: Path, source: Path, model: Path, scratch: Path, candidates: int, budget: int) -> tuple[float, str]:
    """One whole process: seconds, and the engine it says it ran."""
    env = {**{name: value for name, value in os.environ.items() if not name.startswith(("EXPLAINABLE_", "VIRTUAL"))},
           "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(scratch / "cache"), "XDG_DATA_HOME": str(scratch / "data")}
    began = time.perf_counter()
    result = subprocess.run([str(python), "-m", "search", "rerank", "--model", str(model), "--budget", str(budget),
                             "--top-k", str(candidates), "--no-judgment-cache", "--query", QUERY], cwd=source, env=env,
                            capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if result.returncode:
        raise RuntimeError(f"{source}: rerank failed: {result.stderr[-2000:]}")
    described = re.search(r"reranking \d+ documents with (.*)", result.stderr)
    return seconds, described.group(1) if described else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="05f5383", help="the older commit (default: 05f5383)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--budget", type=int, default=64)
    arguments = parser.parse_args()
    model = build_shape("rank1-0.5b")
    with tempfile.TemporaryDirectory(prefix="space-install-") as temporary:
        root = Path(temporary)
        sources = {"this checkout": root / "now" / "src", arguments.before: root / "before" / "src"}
        shutil.copytree(REPO_ROOT, sources["this checkout"], ignore=IGNORED)
        sources[arguments.before].mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", arguments.before], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(sources[arguments.before])], input=archive, check=True)
        pythons, times, engines = {}, {name: [] for name in sources}, {}
        for name, source in sources.items():
            began = time.perf_counter()
            pythons[name] = install(source, source.parent)
            print(f"{name}: installed in {time.perf_counter() - began:.0f} s", flush=True)
            rerank(pythons[name], source, model, source.parent, arguments.candidates, arguments.budget)  # indexes
        for _ in range(arguments.runs):
            for name, source in sources.items():
                seconds, engines[name] = rerank(pythons[name], source, model, source.parent, arguments.candidates,
                                                arguments.budget)
                times[name].append(seconds)
                print(f"{name}: {seconds:.1f} s", flush=True)
    now, before = statistics.median(times["this checkout"]), statistics.median(times[arguments.before])
    print(f"\nrank1-0.5b shape, {arguments.candidates} candidates, budget {arguments.budget}, whole processes "
          f"(median of {arguments.runs}):")
    for name in sources:
        print(f"  {name:<14} {statistics.median(times[name]):7.1f} s   {engines[name]}")
    print(f"  {before / now:.2f}x faster")


if __name__ == "__main__":
    main()
