"""Shared fixtures: the sample corpus opened once per session, with indexes in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.retrieval.first_stage import FirstStage, open_first_stage
from search.settings import SAMPLE_CORPUS, Settings


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("indexes")


@pytest.fixture(scope="session")
def settings(index_dir: Path) -> Settings:
    return Settings().replace(corpus=SAMPLE_CORPUS, index_dir=index_dir)


@pytest.fixture(scope="session")
def first_stage(settings: Settings) -> FirstStage:
    return open_first_stage(settings, ("hybrid", "bm25", "dense"))


def write(path: Path, text: str | bytes) -> Path:
    """Create ``path`` (and its folders) holding ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path
